"""PLC link over Modbus TCP (pymodbus asyncio client).

One cycle per poll period: read the whole input block (one FC3 request), hand the decoded
values to the core with the time the reply arrived, then write the whole output block (one
FC16 request) if the desired outputs changed or the controller heartbeat is due. The link
owns `ctrl_heartbeat`; the PLC stops when it stops changing, so the heartbeat runs only
while this cycle runs: a hung controller is a silent controller.

Reconnection is done here with exponential back-off rather than by pymodbus, so the link
knows and reports every loss (on_connection) and never sends into a half-made connection.

Values cross the link in the contract's vocabulary: the register map (regmap.py) decodes
the input block to contract values, enumerated signals by value name ("busy"), and encodes
the outputs from them ("LIFT", "cat1").

Replies are matched to requests by transaction id here, not by pymodbus alone: the TCP
stream is cut into frames by their MBAP length, whatever pymodbus does to its receive
buffer, and a frame that answers no outstanding request (a duplicated reply, a late one)
is dropped and counted. Left to pymodbus 3.16, a duplicate coming in the same segment as
a reply overflowed its buffer and lost both, and a duplicate cut across two segments left
a half frame that its next request's buffer reset turned into garbage: the link fell out
of step with its requests until the inputs went stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Self

import structlog
from pydantic import BaseModel
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerSocket
from pymodbus.pdu import DecodePDU, ModbusPDU
from pymodbus.transaction import TransactionManager

from drivers.plc.contract import PlcContract
from drivers.plc.link import HEARTBEAT, Clock, LinkStats, OutputBlock, PlcLink
from drivers.plc.regmap import RegisterMap, load_register_map
from drivers.ratelimit import RateLimitedWarnings
from station.config import ModbusSection, PlcSection

LOG_INTERVAL = 1.0  # at most one log line per error kind per second: a dead PLC polled at 20 Hz
# Reconnection back-off: first retry after BACKOFF_MIN_S, doubling up to BACKOFF_MAX_S.
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
MBAP_HEADER = 7  # transaction id (2), protocol id (2, always 0), length (2), unit id (1)
MBAP_MAX_LENGTH = 254  # unit id + the longest PDU (253)


@dataclass
class ModbusLinkStats(LinkStats):
    mismatched_replies: int = 0  # frames answering no outstanding request: dropped
    resyncs: int = 0  # a stream that was no longer Modbus TCP: the connection was reset


StrayReply = Callable[[str, int, int], None]  # (why, the frame's tid, the expected tid)
LostStep = Callable[[str], None]  # (what the stream held instead of an MBAP header)


class _MatchingTransactionManager(TransactionManager):
    """pymodbus's transaction manager with its own framing of the TCP stream.

    The stream is kept across requests (pymodbus empties its buffer on every send, which
    cuts a frame that arrives in two segments around a request) and cut into frames by
    the MBAP length. A frame goes to pymodbus only if it answers the outstanding request
    (its transaction id, and a reply still awaited); any other is dropped and reported to
    `stray`. A header that cannot be Modbus TCP means the frames' boundaries are lost:
    `lost_step` is told and the connection is reset, as pymodbus does for a silent server
    (the link reconnects; a new connection starts a new stream)."""

    stray: StrayReply | None = None
    lost_step: LostStep | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stream = b""

    def callback_connected(self) -> None:
        self._stream = b""
        super().callback_connected()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...] | None) -> None:
        self._stream += data
        while len(self._stream) >= MBAP_HEADER:
            head = self._stream
            length = int.from_bytes(head[4:6], "big")
            if head[2:4] != b"\x00\x00" or not 2 <= length <= MBAP_MAX_LENGTH:
                self._stream = b""
                if self.lost_step is not None:
                    self.lost_step(f"not an MBAP header: {head[:MBAP_HEADER].hex(' ')}")
                self.connection_lost(ConnectionError("Modbus TCP stream out of step"))
                return
            size = 6 + length
            if len(head) < size:
                return  # the rest of the frame is still on its way
            frame, self._stream = head[:size], head[size:]
            tid = int.from_bytes(frame[0:2], "big")
            expected = self.request_transaction_id
            if self.response_future.done():
                self._stray("duplicate" if tid == expected else "unrequested", tid, expected)
            elif tid != expected and tid != 0:  # 0: a server that never echoes the id
                self._stray("other_transaction", tid, expected)
            else:
                self.recv_buffer = b""
                self.callback_data(frame, addr)

    def _stray(self, why: str, tid: int, expected: int) -> None:
        if self.stray is not None:
            self.stray(why, tid, expected)


class _MatchingTcpClient(AsyncModbusTcpClient):
    """AsyncModbusTcpClient whose replies are matched by _MatchingTransactionManager."""

    def __init__(self, host: str, *, stray: StrayReply, lost_step: LostStep,
                 **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        old = self.ctx
        ctx = _MatchingTransactionManager(
            self.comm_params, FramerSocket(DecodePDU(False)), old.retries, False,
            kwargs.get("trace_packet"), kwargs.get("trace_pdu"), kwargs.get("trace_connect"),
        )
        ctx.stray, ctx.lost_step = stray, lost_step
        self.ctx = ctx


class ModbusPlcLink(PlcLink):
    """PlcLink over Modbus TCP, driven by a register map (the contract's Modbus addressing).

    Stats: `polls` / `writes` count good reads / acknowledged writes, `poll_errors` /
    `write_errors` failed ones (exception replies, timeouts, lost connection), `exceptions`
    Modbus exception replies by code name, `reconnects` connection attempts after a failure,
    `mismatched_replies` replies to no outstanding request (duplicated, late: dropped, the
    request's own reply still taken), `resyncs` connections reset because the stream no
    longer held Modbus TCP frames.

    An exception raised by on_inputs or on_connection ends run(): a broken core must not
    keep the heartbeat alive.
    """

    def __init__(
        self,
        host: str,
        port: int,
        rmap: RegisterMap,
        *,
        poll_period: float,
        heartbeat_period: float,
        timeout: float,
        backoff_min: float = BACKOFF_MIN_S,
        backoff_max: float = BACKOFF_MAX_S,
        clock: Clock = time.monotonic,
        logger: Any = None,
    ) -> None:
        super().__init__()
        self.stats: ModbusLinkStats = ModbusLinkStats()
        hb = rmap.signals.get(HEARTBEAT)
        if hb is None or hb.direction != "out" or hb.enum is not None or hb.type == "bool":
            raise ValueError(f"the contract has no numeric output signal {HEARTBEAT}")
        self.host = host
        self.port = port
        self.rmap = rmap
        self.poll_period = poll_period
        self.heartbeat_period = heartbeat_period
        self.timeout = timeout
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self._clock = clock
        self._log = (logger or structlog.get_logger(__name__)).bind(plc=f"{host}:{port}")
        self._limited = RateLimitedWarnings(self._log, LOG_INTERVAL)

        self._client: AsyncModbusTcpClient | None = None
        self._out = OutputBlock(
            lambda name: name in rmap.signals and rmap.signals[name].direction == "out",
            rmap.encode_outputs, heartbeat_period)
        self._write_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._lost = asyncio.Event()
        self._stop = asyncio.Event()
        self._closing = False
        self._reported: bool | None = None
        self._poll_failing = False

    @classmethod
    def from_config(
        cls, plc: PlcSection, section: BaseModel, contract: PlcContract, clock: Clock
    ) -> Self:
        """`[plc]` gives the heartbeat period, `[plc.modbus]` the address, the register map
        (None: the one shipped with the package) and the poll period and timeout."""
        if not isinstance(section, ModbusSection):
            raise TypeError(f"ModbusPlcLink needs a ModbusSection, not {type(section).__name__}")
        rmap = load_register_map(section.register_map, contract=contract)
        return cls(
            section.host, section.port, rmap,
            poll_period=section.poll_period_s,
            heartbeat_period=plc.heartbeat_period_s,
            timeout=section.timeout_s,
            clock=clock,
        )

    # ------------------------------------------------------------------ interface

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected and not self._lost.is_set()

    def set_outputs(self, values: dict[str, Any]) -> None:
        """Merge desired outputs (contract vocabulary); raises ValueError for unknown, input,
        out-of-range or heartbeat signals (the link owns ctrl_heartbeat) and for an unknown
        value name of an enumerated signal."""
        if self._out.merge(values):
            self._wake.set()

    async def write_now(self) -> float | None:
        if not self.connected:
            return None
        return await self._write(force=True)

    async def run(self) -> None:
        self._closing = False
        self._stop.clear()
        backoff = self.backoff_min
        try:
            while not self._closing:
                if await self._connect():
                    self._report(True)
                    self._log.info("plc.connected")
                    if await self._cycle():
                        # Reset only after a good read, so a PLC that accepts and drops backs off.
                        backoff = self.backoff_min
                    if self._closing:
                        break
                    self._drop()
                    self._log.warning("plc.disconnected", last_error=self.stats.last_error)
                self._report(False)
                self.stats.reconnects += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), backoff)  # close() cuts it short
                backoff = min(backoff * 2, self.backoff_max)
        finally:
            self._drop()
            if self._reported:
                self._report(False)

    async def probe(self) -> list[str]:
        """Read the input block and the output block once (FC3): an exception reply or a
        short answer is a problem naming the block's addresses."""
        if not await self._connect():
            raise ConnectionError(f"{self.host}:{self.port}: {self.stats.last_error}")
        client = self._client
        assert client is not None
        rmap = self.rmap
        problems: list[str] = []
        try:
            for what, start, length in (("input block", rmap.input_start, rmap.input_length),
                                        ("output block", rmap.output_start,
                                         rmap.output_length)):
                where = f"{what} {start}-{start + length - 1} (unit {rmap.unit_id})"
                try:
                    rr = await self._request(client.read_holding_registers(
                        start, count=length, device_id=rmap.unit_id))
                except (ModbusException, OSError, TimeoutError) as exc:
                    problems.append(f"{where}: no answer: {exc or type(exc).__name__}")
                    continue
                if rr.isError():
                    problems.append(f"{where}: exception {self._count_exception(rr)}")
                elif len(rr.registers) != length:
                    problems.append(f"{where}: {len(rr.registers)} registers, expected {length}")
                elif what == "input block":
                    # kept for check-config --probe's set-point comparison
                    self.probed_inputs = rmap.decode_inputs(list(rr.registers))
        finally:
            self._drop()
            self._client = None
        return problems

    async def close(self) -> None:
        self._closing = True
        self._stop.set()
        self._wake.set()
        self._drop()

    # ------------------------------------------------------------------ connection

    async def _connect(self) -> bool:
        if self._client is None:
            # reconnect_delay=0 turns pymodbus's own reconnect off; retries=0 so a missed
            # reply is reported now and the next poll is a fresh request.
            self._client = _MatchingTcpClient(
                self.host,
                port=self.port,
                timeout=self.timeout,
                retries=0,
                reconnect_delay=0,
                name="plc",
                trace_connect=self._on_trace_connect,
                stray=self._on_stray_reply,
                lost_step=self._on_lost_step,
            )
        self._lost.clear()
        error = "connect: refused or timed out"
        try:
            ok = await self._client.connect()
        except (ModbusException, OSError) as exc:
            ok, error = False, f"connect: {exc}"
        if not ok:
            self.stats.last_error = error
            self._limited.warning("plc.connect_failed", error=error,
                                  reconnects=self.stats.reconnects)
            return False
        # Re-send the whole output block on every new connection: the PLC may have restarted.
        self._out.resend()
        return True

    def _on_trace_connect(self, up: bool) -> None:
        if not up:
            self.stats.last_error = "connection lost"
            self._lost.set()
            self._wake.set()

    def _on_stray_reply(self, why: str, tid: int, expected: int) -> None:
        self.stats.mismatched_replies += 1
        self._limited.warning("plc.reply_mismatch", why=why, transaction_id=tid,
                              expected=expected, mismatched=self.stats.mismatched_replies)

    def _on_lost_step(self, what: str) -> None:
        self.stats.resyncs += 1
        self.stats.last_error = f"stream out of step: {what}"
        self._limited.warning("plc.resync", error=what, resyncs=self.stats.resyncs)

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()

    def _report(self, up: bool) -> None:
        if self._reported is not up:
            self._reported = up
            if self.on_connection is not None:
                self.on_connection(up)

    # ------------------------------------------------------------------ cycle

    async def _cycle(self) -> bool:
        """Poll and write until the connection is lost or the link closes.
        Returns True if at least one read succeeded."""
        loop = asyncio.get_running_loop()
        good = False
        while self.connected and not self._closing:
            # Scheduling runs on the loop's own monotonic time, the same base as its sleeps;
            # the injected clock only stamps what is reported.
            next_poll = loop.time() + self.poll_period
            good = await self._poll() or good
            # Until the next poll, write whenever outputs change or the heartbeat falls due.
            # A cycle slower than poll_period polls again at once, without catching up.
            while self.connected and not self._closing:
                self._wake.clear()
                await self._write(force=False)
                now = loop.time()
                if now >= next_poll:
                    break
                wait = min(next_poll, self._out.heartbeat_due) - now
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), wait)
        return good

    async def _poll(self) -> bool:
        client = self._client
        assert client is not None
        rmap = self.rmap
        sent = self._clock()
        try:
            rr = await self._request(
                client.read_holding_registers(
                    rmap.input_start, count=rmap.input_length, device_id=rmap.unit_id
                )
            )
        except (ModbusException, OSError, TimeoutError) as exc:
            self._poll_failed(f"read: {exc}")
            return False
        t = self._clock()
        if rr.isError():
            name = self._count_exception(rr)
            # Inputs stay as they were: the core sees them go stale and reacts.
            self._poll_failed(f"read: exception {name}")
            return False
        regs = list(rr.registers)
        if len(regs) != rmap.input_length:
            msg = f"read: {len(regs)} registers, expected {rmap.input_length}"
            self._poll_failed(msg)
            return False
        self.stats.polls += 1
        self.stats.round_trip_s = t - sent
        if self._poll_failing:
            self._poll_failing = False
            self._log.info("plc.poll_recovered", poll_errors=self.stats.poll_errors)
        if self.on_inputs is not None:
            self.on_inputs(rmap.decode_inputs(regs), t)
        return True

    def _poll_failed(self, error: str) -> None:
        self.stats.poll_errors += 1
        self.stats.last_error = error
        self._poll_failing = True
        self._limited.warning("plc.poll_error", error=error, poll_errors=self.stats.poll_errors)

    async def _write(self, *, force: bool) -> float | None:
        async with self._write_lock:
            client = self._client
            if client is None or not self.connected:
                return None
            now = asyncio.get_running_loop().time()
            if not force and not self._out.due(now):
                return None
            version, values = self._out.take(now)
            rmap = self.rmap
            block = rmap.encode_outputs(values)
            try:
                rr = await self._request(
                    client.write_registers(rmap.output_start, block, device_id=rmap.unit_id)
                )
            except (ModbusException, OSError, TimeoutError) as exc:
                self.stats.write_errors += 1
                self.stats.last_error = f"write: {exc}"
                self._limited.warning("plc.write_error", error=str(exc))
                return None
            t = self._clock()
            if rr.isError():
                name = self._count_exception(rr)
                self.stats.write_errors += 1
                self.stats.last_error = f"write: exception {name}"
                self._limited.warning("plc.write_error", exception=name)
                return None  # not acknowledged: the next cycle writes again
            self.stats.writes += 1
            self._out.acked(version)
            return t

    async def _request(self, request: Awaitable[ModbusPDU]) -> ModbusPDU:
        """Await one request, giving up at once if the connection drops meanwhile (pymodbus
        would otherwise wait out its timeout while holding its request lock)."""
        task = asyncio.ensure_future(request)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ModbusException):
                    await task
        if task.cancelled():
            raise ConnectionError("connection lost")
        return task.result()

    # ------------------------------------------------------------------ helpers

    def _count_exception(self, rr: ModbusPDU) -> str:
        code = getattr(rr, "exception_code", 0)
        try:
            name = ExcCodes(code).name
        except ValueError:
            name = f"CODE_{code}"
        self.stats.exceptions[name] = self.stats.exceptions.get(name, 0) + 1
        return name

