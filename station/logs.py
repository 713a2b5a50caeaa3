"""structlog set-up: JSON lines for journald and files, a readable console on a terminal.

Everything goes through the standard library's root logger and one handler whose
formatter is `structlog.stdlib.ProcessorFormatter`: swapd's own structlog events and the
records of libraries that use `logging` (pymodbus, python-can, asyncio, the simulator)
come out in the same format. With `json`, every line on stderr is one JSON object with
`level`, `logger`, `timestamp` and `event`.

Swap id and step are bound as context variables, so every line logged during a swap
carries them without each call site passing them.

The level is set once, on the root logger; `capture_to_file` adds a JSON file of the run
(at least at info) without changing what the console shows.

Nothing else reaches stderr: the libraries' loggers (pymodbus, asyncio and its loop's
exception handler, python-can, asyncua) sit at WARNING unless configured otherwise (at
DEBUG pymodbus dumps every frame), `warnings`, exceptions escaping a thread or the main
thread and exceptions Python can only ignore ("Exception ignored in ...") are logged as
records, and a record whose arguments do not fit its message is logged as it came, not
as a "--- Logging error ---" traceback. A library's record of many lines (asyncio's
context, pymodbus's frame dumps) keeps its first line as `event` and the rest in `detail`
or `frames`. Library records are rate-limited: the same kind from the same logger (digits
aside) at most once a second, the next one let through saying how many were held back
(`suppressed`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog
from structlog.typing import Processor

from drivers.ratelimit import RateLimiter

# Added to every event: structlog's own and the standard library's ("foreign") records.
_SHARED: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
]

# The libraries' loggers: at WARNING unless configure_logging is told otherwise.
LIBRARY_LOGGERS = ("pymodbus", "asyncio", "can", "asyncua", "cantools")
LIBRARY_INTERVAL_S = 1.0  # the same library record at most once per interval
FRAME_PREFIX = ">>>>> "  # pymodbus appends its last frames to an error, one per line

_configured = False
_console: logging.Handler | None = None  # the handler configure_logging installed
_saved_hooks: tuple[Any, Any, Any, Any] | None = None  # the hooks before ours


def _foreign_fields(logger: Any, method: str, event_dict: MutableMapping[str, Any]
                    ) -> MutableMapping[str, Any]:
    """A library record (foreign_pre_chain): held-back count, and one line per record:
    the rest of a message of many lines goes to `frames` (pymodbus) or `detail`."""
    record = event_dict.get("_record")
    suppressed = getattr(record, "swapd_suppressed", 0)
    if suppressed:
        event_dict["suppressed"] = suppressed
    event = event_dict.get("event")
    if isinstance(event, str) and "\n" in event:
        first, *rest = [ln for ln in event.splitlines() if ln.strip()] or [""]
        event_dict["event"] = first
        frames = [ln[len(FRAME_PREFIX):] for ln in rest if ln.startswith(FRAME_PREFIX)]
        detail = [ln for ln in rest if not ln.startswith(FRAME_PREFIX)]
        if frames:
            event_dict["frames"] = frames
        if detail:
            event_dict["detail"] = detail
    return event_dict


_DIGITS = re.compile(r"0x[0-9a-fA-F]+|\d+")


class LibraryRateLimit(logging.Filter):
    """A handler filter: library records (not swapd's structlog events, whose rate is the
    caller's business) of one kind at most once per interval. The kind is the logger, the
    level and the message with its numbers blanked (pymodbus formats transaction ids into
    its text). The decision is kept on the record, so that every handler agrees."""

    def __init__(self, interval_s: float = LIBRARY_INTERVAL_S) -> None:
        super().__init__()
        self.limiter = RateLimiter(interval_s)

    def filter(self, record: logging.LogRecord) -> bool:
        decided = getattr(record, "swapd_pass", None)
        if decided is not None:
            return bool(decided)
        if isinstance(record.msg, dict):  # structlog's own event (wrap_for_formatter)
            record.swapd_pass = True
            return True
        text = str(record.msg)
        if record.args:
            text += " " + " ".join(type(a).__name__ for a in _args(record))
        suppressed = self.limiter.allow((record.name, record.levelno, _DIGITS.sub("#", text)))
        record.swapd_pass = suppressed is not None
        if suppressed:
            record.swapd_suppressed = suppressed
        return suppressed is not None


def _args(record: logging.LogRecord) -> tuple[Any, ...]:
    args = record.args
    if isinstance(args, tuple):
        return args
    return (args,) if args else ()


def _safe_message(record: logging.LogRecord) -> None:
    """A record whose arguments do not fit its message (a library's bug) is logged with
    both as they came, instead of `--- Logging error ---` and a traceback on stderr."""
    try:
        record.getMessage()
    except Exception as exc:
        record.msg = f"{record.msg!r} % {record.args!r} ({type(exc).__name__}: {exc})"
        record.args = None


def _make_record_factory(base: Callable[..., logging.LogRecord]
                         ) -> Callable[..., logging.LogRecord]:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        if record.args:  # checked where it is made, before any handler formats it
            _safe_message(record)
        return record

    return factory


def _excepthook(exc_type: type[BaseException], exc: BaseException,
                tb: TracebackType | None) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        logging.getLogger("python").warning("interrupted")  # Ctrl-C: no traceback
        return
    logging.getLogger("python").critical("uncaught exception", exc_info=(exc_type, exc, tb))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    exc_info = ((args.exc_type, args.exc_value, args.exc_traceback)
                if args.exc_value is not None else None)
    logging.getLogger("python").error("uncaught exception in thread %s", name,
                                      exc_info=exc_info)


def _unraisablehook(u: Any) -> None:
    try:
        what = u.err_msg or "Exception ignored in"
        exc_info = ((u.exc_type, u.exc_value, u.exc_traceback)
                    if u.exc_value is not None else None)
        logging.getLogger("python").error("%s: %s", what, _short_repr(u.object),
                                          exc_info=exc_info)
    except Exception:  # logging half torn down (interpreter exit): Python's own way
        sys.__unraisablehook__(u)


def _short_repr(obj: Any) -> str:
    try:
        return repr(obj)[:300]
    except Exception:
        return f"<{type(obj).__name__}>"


def _install_hooks() -> None:
    global _saved_hooks
    if _saved_hooks is None:
        _saved_hooks = (sys.excepthook, threading.excepthook, sys.unraisablehook,
                        logging.getLogRecordFactory())
        logging.setLogRecordFactory(_make_record_factory(_saved_hooks[3]))
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook
    sys.unraisablehook = _unraisablehook


def _restore_hooks() -> None:
    global _saved_hooks
    if _saved_hooks is not None:
        (sys.excepthook, threading.excepthook, sys.unraisablehook,
         factory) = _saved_hooks
        logging.setLogRecordFactory(factory)
        _saved_hooks = None


_library_limit = LibraryRateLimit()  # replaced by each configure_logging: a fresh start


def _set_library_level(level: str | None) -> None:
    lvl = logging.NOTSET if level is None else getattr(logging, level.upper(), logging.WARNING)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(lvl)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the moment of the record (pytest swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def formatter(fmt: str, colors: bool = False) -> structlog.stdlib.ProcessorFormatter:
    """The formatter of one handler: `json` (one object per line) or `console`."""
    if fmt == "json":
        final: list[Processor] = [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ]
    elif fmt == "console":
        final = [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.dev.ConsoleRenderer(colors=colors),
        ]
    else:
        raise ValueError(f"log format {fmt!r}: expected json or console")
    return structlog.stdlib.ProcessorFormatter(foreign_pre_chain=[*_SHARED, _foreign_fields],
                                               processors=final)


def configure_logging(level: str = "info", fmt: str = "auto", stream: Any = None, *,
                      console: bool = True, library_level: str | None = "warning") -> None:
    """Route structlog and the standard library's logging to one handler on `stream`
    (default: the current stderr) in `fmt` (`json`, `console`, or `auto`: console on a
    terminal). Calling it again replaces the previous set-up. `console=False` installs no
    handler (records reach the root logger's other handlers: a file, pytest's capture).
    `library_level` is the level of LIBRARY_LOGGERS (None: the root's, `level`)."""
    global _console, _configured, _library_limit
    root = logging.getLogger()
    if _console is not None:
        root.removeHandler(_console)
        _console = None
    _library_limit = LibraryRateLimit()
    if console:
        tty = (stream or sys.stderr).isatty()
        if fmt == "auto":
            fmt = "console" if tty else "json"
        handler: logging.Handler = (
            _StderrHandler() if stream is None else logging.StreamHandler(stream))
        handler.setFormatter(formatter(fmt, colors=tty))
        handler.addFilter(_library_limit)
        # On the root, so that no record is left to print bare on stderr (lastResort).
        root.addHandler(handler)
        _console = handler
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    _set_library_level(library_level)
    _configured = True
    logging.captureWarnings(True)  # warnings.warn() -> logger "py.warnings"
    _install_hooks()  # uncaught and unraisable exceptions -> logger "python"
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,  # the root logger's level decides
            *_SHARED,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )


def is_configured() -> bool:
    return _configured


def reset_logging() -> None:
    """Undo configure_logging: structlog's defaults, no handler of ours on the root."""
    global _console, _configured, _library_limit
    _library_limit = LibraryRateLimit()
    if _console is not None:
        logging.getLogger().removeHandler(_console)
        _console = None
    _configured = False
    logging.getLogger().setLevel(logging.WARNING)
    _set_library_level(None)
    logging.captureWarnings(False)
    _restore_hooks()
    structlog.reset_defaults()


@contextlib.contextmanager
def capture_to_file(path: Path, level: str = "info") -> Iterator[logging.Handler]:
    """Also write every log line of the block as JSON to `path`, at `level` or below the
    configured level, whichever lets more through; the console keeps its level.
    If logging is not configured, it is for the block only, without a console handler
    (under pytest the records still reach its log capture)."""
    configured_here = not _configured
    before = logging.getLogger().level
    if configured_here:
        configure_logging(level, console=False)
    console = _console
    root = logging.getLogger()
    old_root = root.level
    old_console = console.level if console is not None else logging.NOTSET
    want = getattr(logging, level.upper(), logging.INFO)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(formatter("json"))
    handler.addFilter(_library_limit)
    handler.setLevel(min(want, old_root) if old_root else want)
    if old_root > want:
        if console is not None:
            console.setLevel(max(old_root, old_console))
        root.setLevel(want)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        handler.close()
        if configured_here:
            reset_logging()
            root.setLevel(before)
        else:
            root.setLevel(old_root)
            if console is not None:
                console.setLevel(old_console)


def bind_swap(swap_id: str | None, step: str | None) -> None:
    structlog.contextvars.bind_contextvars(swap_id=swap_id, step=step)

