"""A TCP relay that can black-hole its traffic: a cut cable or a hung device, on demand.

The relay listens on one port and connects each client to a target (host, port), copying
bytes both ways. While it is silent (`black_hole` set, or the `silent` callable given
true) every chunk read from either side is dropped (counted in `dropped`) and the
connections stay open: no RST, no FIN, nothing arrives,
as with a cable pulled out or a device that hangs with its TCP stack still up. A side
that closes while the relay is silent is not passed on either; the other side is closed
once the silence ends. Bytes dropped mid-stream leave the protocol above out of step, so
a client usually has to reconnect afterwards, as it would after a real outage.

`cut()` closes every relayed connection at once (a FIN to both sides); the listener stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

CHUNK = 65536
SILENCE_POLL_S = 0.05  # how often a connection whose peer left checks for the end of silence


class _Pair:
    """One client connection and its connection to the target."""

    def __init__(self, client: asyncio.StreamWriter, target: asyncio.StreamWriter) -> None:
        self.client = client
        self.target = target
        self.closed = asyncio.Event()

    def close(self) -> None:
        for w in (self.client, self.target):
            with contextlib.suppress(Exception):
                w.close()
        self.closed.set()


class TcpRelay:
    """Listen on host:port, relay to `target`. Silence is decided chunk by chunk: by hand
    (`black_hole = True`) or by the `silent` callable. `target` may be given at start or
    set (changed) later: a client connecting while it is None, or while the target
    refuses, is closed at once."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        target: tuple[str, int] | None = None,
        silent: Callable[[], bool] | None = None,
    ) -> None:
        self.host = host
        self.port = port  # the bound port once started (0 = any free port)
        self.target = target
        self.black_hole = False
        self._silent = silent
        self.dropped = 0  # chunks dropped while silent, both directions
        self.relayed = 0  # chunks passed on
        self.accepted = 0  # client connections accepted
        self._server: asyncio.Server | None = None
        self._pairs: set[_Pair] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def connections(self) -> int:
        """Relayed connections open now."""
        return len(self._pairs)

    @property
    def silent(self) -> bool:
        """Dropping everything now: `black_hole`, or the `silent` callable says so."""
        return self.black_hole or (self._silent is not None and self._silent())

    async def start(self, target: tuple[str, int] | None = None) -> None:
        if target is not None:
            self.target = target
        self._server = await asyncio.start_server(self._client, self.host, self.port,
                                                  limit=CHUNK)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.debug("TCP relay %s:%d -> %s", self.host, self.port, self.target)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self.cut()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    def cut(self) -> None:
        """Close every relayed connection (both sides); new ones are still accepted."""
        for pair in list(self._pairs):
            pair.close()
        self._pairs.clear()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        target = self.target
        try:
            if target is None:
                raise OSError("no target yet")
            t_reader, t_writer = await asyncio.open_connection(*target, limit=CHUNK)
        except OSError as exc:
            log.debug("relay: target %s not reachable: %s", target, exc)
            writer.close()
            self._tasks.discard(task)
            return
        pair = _Pair(writer, t_writer)
        self._pairs.add(pair)
        try:
            pumps = [asyncio.create_task(self._pump(reader, t_writer, pair)),
                     asyncio.create_task(self._pump(t_reader, writer, pair))]
            try:
                await pair.closed.wait()
            finally:
                for p in pumps:
                    p.cancel()
                for p in pumps:
                    with contextlib.suppress(BaseException):
                        await p
        finally:
            pair.close()
            self._pairs.discard(pair)
            self._tasks.discard(task)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    pair: _Pair) -> None:
        try:
            while True:
                data = await src.read(CHUNK)
                if not data:
                    break
                if self.silent:
                    self.dropped += 1
                    continue
                self.relayed += 1
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        # One side left. While silent that must not show on the other side (no FIN
        # through a cut cable): hold it open, dropping what it sends, until the silence
        # ends or it leaves too.
        while self.silent and not pair.closed.is_set():
            await asyncio.sleep(SILENCE_POLL_S)
        pair.close()
