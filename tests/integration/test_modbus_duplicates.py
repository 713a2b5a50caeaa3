"""Duplicated Modbus TCP replies between the link and the PLC (a gateway or a PLC stack
that answers twice): the link must stay in step with its requests, never hand the core a
reply that belongs to another request, and keep delivering fresh inputs.

A proxy sits between the link and a real pymodbus server (the test double of the link
suite) and sends some replies twice: back to back, or the copy a little later (so that it
arrives after the next request went out), or the copy cut in two."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from drivers.plc.modbus_link import ModbusPlcLink
from drivers.plc.regmap import load_register_map
from tests.integration.test_plc_links import ModbusDouble, Recorder, free_port, wait_until

pytestmark = pytest.mark.timeout(60)

RMAP = load_register_map()
MARK = 4242  # vehicle_token: the same in every block the PLC serves


class DuplicatingProxy:
    """TCP proxy: requests pass unchanged; every `every`-th reply is sent twice.

    mode "burst": the copy in the same write; "late": the copy `delay_s` later; "split":
    the copy `delay_s` later in two halves, `delay_s` apart (TCP segments: the next reply
    waits for the copy's second half, nothing is interleaved inside a frame)."""

    def __init__(self, upstream_port: int, *, every: int = 3, mode: str = "late",
                 delay_s: float = 0.004) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.every = every
        self.mode = mode
        self.delay_s = delay_s
        self.replies = 0
        self.duplicated = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._write = asyncio.Lock()  # one frame (or half-copy pair) at a time

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await t
        if self._server is not None:
            await self._server.wait_closed()

    def _spawn(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _client(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._spawn(self._pipe(reader, up_w))
        self._spawn(self._replies(up_r, writer))

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(4096):
                w.write(data)
        finally:
            w.close()

    async def _replies(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await r.readexactly(6)
                body = await r.readexactly(int.from_bytes(header[4:6], "big"))
                frame = header + body
                self.replies += 1
                async with self._write:
                    if self.replies % self.every:
                        w.write(frame)
                        continue
                    self.duplicated += 1
                    if self.mode == "burst":
                        w.write(frame + frame)
                        continue
                    if self.mode == "garbage":  # once: bytes that are no Modbus frame
                        w.write(frame + b"\xde\xad\xbe\xef\x00\x01\x02\x03")
                        self.every = 10**9
                        continue
                    w.write(frame)
                self._spawn(self._late_copy(w, frame))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    async def _late_copy(self, w: asyncio.StreamWriter, frame: bytes) -> None:
        await asyncio.sleep(self.delay_s)
        async with self._write:
            if self.mode == "split":
                half = len(frame) // 2
                w.write(frame[:half])
                await w.drain()
                await asyncio.sleep(self.delay_s)
                w.write(frame[half:])
            else:
                w.write(frame)


class CountingPlc:
    """The PLC double serving a counter (plc_heartbeat) every few ms, with cmd_ack_seq
    tied to it and a fixed mark, so that a block from another moment or another request
    shows."""

    def __init__(self, plc: ModbusDouble) -> None:
        self.plc = plc
        self.n = 0
        self._task: asyncio.Task[None] | None = None

    def _set(self) -> None:
        self.plc.set_inputs({"plc_heartbeat": self.n, "cmd_ack_seq": (self.n * 7) % 65536,
                             "vehicle_token": MARK})

    async def _run(self) -> None:
        while True:
            self.n = (self.n + 1) % 65536
            self._set()
            await asyncio.sleep(0.003)

    def start(self) -> None:
        self._set()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@pytest.fixture
async def plc() -> AsyncIterator[ModbusDouble]:
    server = ModbusDouble(free_port(), RMAP)
    await server.start()
    counting = CountingPlc(server)
    counting.start()
    yield server
    await counting.stop()
    await server.stop()


def make_link(port: int) -> ModbusPlcLink:
    return ModbusPlcLink("127.0.0.1", port, RMAP, poll_period=0.01, heartbeat_period=0.02,
                         timeout=0.3, backoff_min=0.01, backoff_max=0.1)


@asynccontextmanager
async def linked(plc: ModbusDouble, **proxy_kw: Any
                 ) -> AsyncIterator[tuple[ModbusPlcLink, Recorder, DuplicatingProxy]]:
    """The link running against the PLC double through a DuplicatingProxy."""
    proxy = DuplicatingProxy(plc.port, **proxy_kw)
    await proxy.start()
    rec = Recorder()
    link = make_link(proxy.port)
    rec.attach(link)
    task = asyncio.create_task(link.run())
    try:
        yield link, rec, proxy
    finally:
        await link.close()
        await asyncio.wait_for(task, 2)
        await proxy.stop()


def check_inputs(rec: Recorder) -> None:
    """Every delivered block is one the PLC served, in order: never another request's."""
    last = -1
    for values, _t in rec.inputs:
        hb = int(values["plc_heartbeat"])
        assert values["vehicle_token"] == MARK, values
        assert int(values["cmd_ack_seq"]) == (hb * 7) % 65536, values
        assert hb >= last, f"an older block ({hb}) delivered after {last}"
        last = hb


def longest_gap(rec: Recorder, since: float) -> float:
    times = [since] + [t for _, t in rec.inputs if t >= since] + [time.monotonic()]
    return max(b - a for a, b in itertools.pairwise(times))


@pytest.mark.parametrize("mode", ["burst", "late", "split"])
async def test_duplicated_replies_detected_and_inputs_stay_fresh(
    plc: ModbusDouble, mode: str,
) -> None:
    async with linked(plc, every=3, mode=mode) as (link, rec, proxy):
        await wait_until(lambda: len(rec.inputs) >= 1)
        t0 = time.monotonic()
        polls0, writes0 = link.stats.polls, link.stats.writes
        await asyncio.sleep(2.0)  # duplicates keep coming all along
        assert proxy.duplicated >= 20
        check_inputs(rec)
        # Fresh all along: never a gap near the staleness limits (plc.stale_after_s is
        # far above this), and most polls of the 2 s answered.
        assert longest_gap(rec, t0) < 0.15, longest_gap(rec, t0)
        assert link.stats.polls - polls0 >= 100, link.stats
        assert link.stats.writes - writes0 >= 40, link.stats
        assert link.stats.mismatched_replies >= 1, link.stats


async def test_a_stream_out_of_step_is_reset_and_the_link_recovers(
    plc: ModbusDouble,
) -> None:
    async with linked(plc, every=20, mode="garbage") as (link, rec, _proxy):
        await wait_until(lambda: link.stats.resyncs == 1)
        n = len(rec.inputs)
        await wait_until(lambda: len(rec.inputs) >= n + 20)
        check_inputs(rec)
        assert link.stats.resyncs == 1 and link.stats.mismatched_replies == 0
        assert link.stats.reconnects == 1


async def test_no_duplicates_no_mismatch(plc: ModbusDouble) -> None:
    async with linked(plc, every=10**9) as (link, rec, _proxy):
        await wait_until(lambda: len(rec.inputs) >= 50)
        check_inputs(rec)
        assert link.stats.mismatched_replies == 0 and link.stats.resyncs == 0
        assert link.stats.poll_errors == 0
