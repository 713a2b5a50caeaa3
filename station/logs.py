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
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog
from structlog.typing import Processor

# Added to every event: structlog's own and the standard library's ("foreign") records.
_SHARED: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
]

_configured = False
_console: logging.Handler | None = None  # the handler configure_logging installed


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
    return structlog.stdlib.ProcessorFormatter(foreign_pre_chain=_SHARED, processors=final)


def configure_logging(level: str = "info", fmt: str = "auto", stream: Any = None, *,
                      console: bool = True) -> None:
    """Route structlog and the standard library's logging to one handler on `stream`
    (default: the current stderr) in `fmt` (`json`, `console`, or `auto`: console on a
    terminal). Calling it again replaces the previous set-up. `console=False` installs no
    handler (records reach the root logger's other handlers: a file, pytest's capture)."""
    global _console, _configured
    root = logging.getLogger()
    if _console is not None:
        root.removeHandler(_console)
        _console = None
    if console:
        tty = (stream or sys.stderr).isatty()
        if fmt == "auto":
            fmt = "console" if tty else "json"
        handler: logging.Handler = (
            _StderrHandler() if stream is None else logging.StreamHandler(stream))
        handler.setFormatter(formatter(fmt, colors=tty))
        # On the root, so that no record is left to print bare on stderr (lastResort).
        root.addHandler(handler)
        _console = handler
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    _configured = True
    logging.captureWarnings(True)  # warnings.warn() -> logger "py.warnings"
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
    global _console, _configured
    if _console is not None:
        logging.getLogger().removeHandler(_console)
        _console = None
    _configured = False
    logging.getLogger().setLevel(logging.WARNING)
    logging.captureWarnings(False)
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

