"""The daemon's local API: newline-delimited JSON over a Unix-domain stream socket.

One request per line, one response per line, several requests per connection. Every line
the client sends gets exactly one answer, in order. A request is a JSON object with a
``"cmd"`` from `COMMANDS`; an answer is a JSON object with ``"ok"`` (bool) and either the
handler's fields or ``"error"`` (text).

Access control is the socket file's permissions: the server creates it with `mode`
(0o660 by default) and, when given, hands it to `group`, so root and the members of that
group may command the station. The peer's pid, uid and gid (SO_PEERCRED) go to the
handler so that the daemon can journal who sent each command.

`handle_request` is the daemon-side handler (status and the PackML commands): transport
only, it hands every command to the daemon's one command entry (station/commands.py).
`request` is the client side, used by ``swapctl``.

This module imports nothing heavy at import time: ``swapctl`` loads it on every call.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import socket
import stat
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from drivers.ratelimit import RateLimitedWarnings

if TYPE_CHECKING:
    from station.commands import CommandRequest, CommandResult

log = structlog.get_logger("local_api")

COMMANDS = ("status", "reset", "clear", "start", "stop", "hold", "unhold", "suspend",
            "unsuspend", "abort", "pack_release", "slot_maintenance", "unit_mode", "recover",
            "maintenance_command", "recovery_plan", "events")
# requests that only read (answered with the status, never journaled)
QUERIES = frozenset({"status", "recovery_plan", "events"})
EVENTS_MAX = 1000  # journal events in one "events" answer
# a command's arguments, taken from the request
ARGS = {"pack_release": ("slot", "reason"), "slot_maintenance": ("slot", "action", "reason"),
        "unit_mode": ("mode",), "maintenance_command": ("command", "param")}
DEFAULT_SOCKET_PATH = "/run/swapd/swapd.sock"
SOCKET_ENV = "SWAPD_SOCKET"
MAX_LINE = 64 * 1024  # bytes in one request line, without the newline
MAX_RESPONSE = 16 * 1024 * 1024  # what the client accepts in one answer line
_READ_CHUNK = 64 * 1024
CLOSE_GRACE_S = 2.0  # close() waits this long for handlers still running
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class DuplicateKey(ValueError):
    """A JSON object that names a key twice: which value was meant is not known."""


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads' object_pairs_hook for everything the station is sent (a request here, a
    cloud command): a key twice is refused, never the last one winning."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            key = repr(k) if len(k) <= 40 else repr(k[:37]) + "..."
            raise DuplicateKey(f"duplicate key {key}")
        out[k] = v
    return out


class LocalApiError(Exception):
    """The server cannot start (bad path, missing group, address in use) or an answer
    from the server cannot be read."""


@dataclass(frozen=True)
class PeerCred:
    """Who is at the other end of a connection, as the kernel reports it (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int


Handler = Callable[[dict[str, Any], PeerCred], Awaitable[dict[str, Any]]]


def default_socket_path() -> str:
    """$SWAPD_SOCKET if set and not empty, else /run/swapd/swapd.sock."""
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET_PATH


def _error(text: str) -> dict[str, Any]:
    return {"ok": False, "error": text}


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def _peer_cred(writer: asyncio.StreamWriter) -> PeerCred:
    sock = writer.get_extra_info("socket")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
    pid, uid, gid = _CRED.unpack(raw)
    return PeerCred(pid=pid, uid=uid, gid=gid)


def _resolve_group(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        raise LocalApiError(f"local API: group {group!r} does not exist "
                            f"(set [api] group to an existing group, or leave it out)") from None


class _TooLong:
    """Marks an over-long line in the stream of lines."""


_TOO_LONG = _TooLong()


async def _lines(reader: asyncio.StreamReader) -> AsyncIterator[bytes | _TooLong]:
    """The request lines of one connection; `_TOO_LONG` once for each line over MAX_LINE,
    whose bytes are dropped up to and including its newline. A last line without a newline
    before end of stream still counts."""
    buf = bytearray()
    discarding = False  # inside an over-long line already answered
    while True:
        chunk = await reader.read(_READ_CHUNK)
        if not chunk:
            if buf and not discarding:
                yield bytes(buf)
            return
        buf += chunk
        while True:
            i = buf.find(b"\n")
            if i < 0:
                if len(buf) > MAX_LINE:
                    if not discarding:
                        discarding = True
                        yield _TOO_LONG
                    buf.clear()
                break
            line = bytes(buf[:i])
            del buf[: i + 1]
            if discarding:
                discarding = False  # that was the tail of the over-long line
            elif len(line) > MAX_LINE:
                yield _TOO_LONG
            else:
                yield line


class LocalApiServer:
    """A Unix-domain stream server speaking newline-delimited JSON (see the module doc)."""

    def __init__(
        self,
        path: str | Path,
        handler: Handler,
        *,
        mode: int = 0o660,
        group: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.handler = handler
        self.mode = mode
        self.group = group
        self._server: asyncio.Server | None = None
        self._inode: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket we made
        self._clients: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._busy: set[asyncio.Task[Any]] = set()  # inside the handler: not to be cancelled
        self._warn = RateLimitedWarnings(log)  # garbage on the socket must not flood the log

    # ---- life cycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Create the socket file with its mode (and group) and start accepting.

        Raises LocalApiError when the group does not exist, the path is taken by something
        that is not a socket, or another process is serving on it."""
        if self._server is not None:
            raise LocalApiError("local API: already started")
        gid = _resolve_group(self.group) if self.group is not None else None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bound = False
        try:
            sock.bind(str(self.path))
            bound = True
            # Bound but not listening: a connect is refused until listen(), so nobody gets
            # in before the mode and group below are in force.
            os.chmod(self.path, self.mode)
            if gid is not None:
                try:
                    os.chown(self.path, -1, gid)
                except PermissionError as exc:
                    raise LocalApiError(f"local API: cannot give {self.path} to group "
                                        f"{self.group!r}: {exc.strerror}") from exc
            st = os.stat(self.path)
            self._inode = (st.st_dev, st.st_ino)
            self._server = await asyncio.start_unix_server(self._serve, sock=sock)
        except BaseException:
            sock.close()
            if bound:
                with contextlib.suppress(OSError):
                    self.path.unlink()
            self._inode = None
            raise
        log.info("local_api.listening", path=str(self.path), mode=oct(self.mode),
                 group=self.group)

    async def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise LocalApiError(f"local API: {self.path} exists and is not a socket; "
                                "not removing it")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(self.path)),
                                               1.0)
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # left behind by a process that died: ours to replace
        except (OSError, TimeoutError) as exc:
            raise LocalApiError(f"local API: cannot tell whether {self.path} is in use: "
                                f"{exc}") from exc
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            raise LocalApiError(f"local API: another process is serving on {self.path}")
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        log.info("local_api.stale_socket_removed", path=str(self.path))

    async def close(self) -> None:
        """Stop accepting, drop the open connections, remove the socket file (if it is
        still the one this server created).

        A handler still running (a command half carried out) gets CLOSE_GRACE_S to finish.
        (On Python 3.11 a connection the kernel had queued but asyncio not yet handed to
        us when close() runs stays open until garbage collection or process exit; its
        client sees no answer and times out.)"""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task, writer in list(self._clients.items()):
            writer.close()
            if task not in self._busy:  # a command half carried out is let finish...
                task.cancel()
        if self._clients:
            _, late = await asyncio.wait(list(self._clients), timeout=CLOSE_GRACE_S)
            for task in late:  # ...for a while
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await server.wait_closed()
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass
        self._inode = None
        log.info("local_api.closed", path=str(self.path))

    async def __aenter__(self) -> LocalApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- one connection -----------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._server is None:  # accepted just before close(): not served
            writer.close()
            return
        self._clients[task] = writer
        try:
            peer = _peer_cred(writer)
            async for line in _lines(reader):
                if isinstance(line, _TooLong):
                    log.warning("local_api.line_too_long", uid=peer.uid, pid=peer.pid)
                    answer = _encode(_error(f"request line longer than {MAX_LINE} bytes"))
                else:
                    self._busy.add(task)
                    try:
                        answer = await self._answer(line, peer)
                    finally:
                        self._busy.discard(task)
                writer.write(answer)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client went away, or we are closing
        except Exception:  # never let one connection take the server down
            log.exception("local_api.connection_failed")
        finally:
            self._clients.pop(task, None)
            self._busy.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, line: bytes, peer: PeerCred) -> bytes:
        try:
            req = json.loads(line, object_pairs_hook=no_duplicate_keys)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
            why = ("nested too deeply" if isinstance(exc, RecursionError)
                   else f"{exc} in a request" if isinstance(exc, DuplicateKey)
                   else f"malformed JSON: {exc}")
            self._warn.warning("local_api.bad_request", uid=peer.uid, pid=peer.pid, error=why)
            return _encode(_error(why))
        if not isinstance(req, dict):
            return _encode(_error("a request must be a JSON object"))
        if "cmd" not in req:
            return _encode(_error('missing "cmd"'))
        cmd = req["cmd"]
        if not isinstance(cmd, str) or cmd not in COMMANDS:
            return _encode(_error(f"unknown cmd {cmd!r}; expected one of: "
                                  + ", ".join(COMMANDS)))
        try:
            resp = await self.handler(req, peer)
            if not isinstance(resp, dict):
                raise TypeError(f"handler returned {type(resp).__name__}, not a dict")
            return _encode(resp)
        except Exception as exc:
            log.exception("local_api.handler_failed", cmd=cmd, uid=peer.uid, pid=peer.pid)
            return _encode(_error(f"internal error: {type(exc).__name__}: {exc}"))


# ---- the daemon-side handler ---------------------------------------------------------------
async def handle_request(
    req: dict[str, Any],
    peer: PeerCred,
    *,
    status: Callable[[], dict[str, Any]],
    submit: Callable[[CommandRequest], Awaitable[CommandResult]],
    recovery_plan: Callable[[], dict[str, Any]] | None = None,
    events: Callable[[int, int], list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Answer one request: "status", "events" (the journal's events after the id
    "after", at most "limit" of EVENTS_MAX, oldest first: what a bench tool follows), or a
    PackML command handed to the daemon's one
    command entry (`submit`, station.commands), which decides and journals it. Transport
    only: this function decides nothing. An optional "request_id" makes a retry safe: the
    same id gets the same answer and nothing is done twice.

    Wire it as ``functools.partial(handle_request, status=core.status, submit=...)``."""
    # Imported here, not at the top: station.commands pulls in the core, pydantic and more,
    # which would slow every swapctl call down.
    from station.commands import CommandRequest, Origin

    word = req.get("cmd")
    if word == "status":
        return {"ok": True, "status": status()}
    if word == "recovery_plan":
        if recovery_plan is None:
            return _error("this daemon offers no recovery plan")
        return {"ok": True, "plan": recovery_plan(), "status": status()}
    if word == "events":
        if events is None:
            return _error("this daemon offers no events")
        after, limit = req.get("after", 0), req.get("limit", EVENTS_MAX)
        if (not isinstance(after, int) or isinstance(after, bool) or not 0 <= after < 2**63
                or not isinstance(limit, int) or isinstance(limit, bool)
                or not 1 <= limit <= EVENTS_MAX):
            return _error(f'"after" must be an event id >= 0 and "limit" 1..{EVENTS_MAX}')
        return {"ok": True, "events": events(after, limit)}
    if not isinstance(word, str) or word not in COMMANDS:
        return _error(f"unknown cmd {word!r}")
    sender = f"swapctl uid {peer.uid} pid {peer.pid}"
    rid = req.get("request_id")
    args = {k: req[k] for k in ARGS.get(word, ()) if k in req}
    creq = (CommandRequest(word, Origin.LOCAL, sender, args=args) if rid is None else
            CommandRequest(word, Origin.LOCAL, sender, request_id=rid, args=args))
    result = await submit(creq)
    if not result.accepted:
        return {"ok": False, "error": result.reason, "status": status(),
                "request_id": result.request_id, "repeated": result.repeated,
                "code": result.code}
    return {"ok": True, "status": status(), "request_id": result.request_id,
            "repeated": result.repeated, "result": result.result}


# ---- the client ----------------------------------------------------------------------------
async def request(path: str | Path, payload: dict[str, Any],
                  timeout: float = 5.0) -> dict[str, Any]:
    """Send one request and return the answer.

    Raises OSError when the socket cannot be reached (FileNotFoundError: no socket;
    ConnectionRefusedError: nobody listening; PermissionError: not allowed), TimeoutError
    when no answer comes within `timeout` seconds, LocalApiError on an unreadable answer."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_RESPONSE)
        try:
            writer.write(_encode(payload))
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    if not line:
        raise LocalApiError("the daemon closed the connection without answering")
    try:
        resp = json.loads(line)
    except ValueError as exc:
        raise LocalApiError(f"unreadable answer: {exc}") from exc
    if not isinstance(resp, dict):
        raise LocalApiError("unreadable answer: not a JSON object")
    return resp
