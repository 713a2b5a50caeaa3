"""ModbusPlcLink against a real pymodbus TCP server on a free loopback port."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.plc.modbus_link import ModbusPlcLink
from drivers.plc.regmap import RegisterMap, load_register_map

pytestmark = pytest.mark.timeout(20)

RMAP = load_register_map()
OUT = RMAP.output_start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PlcServer:
    """A real Modbus TCP server laid out like the register map.

    Inputs are read-only registers, as a real PLC must refuse writes to them. The action
    callback sees every request: it sets input values, records writes and injects
    exception replies.
    """

    def __init__(self, port: int, rmap: RegisterMap, *, input_length: int | None = None):
        self.port = port
        self.rmap = rmap
        self.input_length = rmap.input_length if input_length is None else input_length
        self.inputs: dict[int, int] = {}  # address -> raw value served on the next read
        self.read_error: ExcCodes | None = None
        self.write_error: ExcCodes | None = None
        self.reads = 0
        self.writes: list[list[int]] = []
        self.server: ModbusTcpServer | None = None

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if set_values is None:
            if self.read_error is not None:
                return self.read_error
            self.reads += 1
            for a, v in self.inputs.items():
                registers[a - start_address] = v
            return None
        if self.write_error is not None:
            return self.write_error
        self.writes.append([int(v) for v in set_values])
        return None

    async def start(self) -> None:
        rmap = self.rmap
        device = SimDevice(
            rmap.unit_id,
            [
                SimData(
                    rmap.input_start,
                    count=self.input_length,
                    datatype=DataType.REGISTERS,
                    readonly=True,
                ),
                SimData(rmap.output_start, count=rmap.output_length, datatype=DataType.REGISTERS),
            ],
            action=self._action,
        )
        self.server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
        await self.server.serve_forever(background=True)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None

    def heartbeats(self) -> list[int]:
        off = self.rmap.signals["ctrl_heartbeat"].address - OUT
        return [w[off] for w in self.writes]


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a condition; the timeout only bounds a failing test, it is not asserted."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


class Recorder:
    def __init__(self) -> None:
        self.inputs: list[tuple[dict[str, Any], float]] = []
        self.connection: list[bool] = []

    def attach(self, link: ModbusPlcLink) -> None:
        link.on_inputs = lambda values, t: self.inputs.append((values, t))
        link.on_connection = self.connection.append


def make_link(port: int, **kw: Any) -> ModbusPlcLink:
    opts: dict[str, Any] = {
        "poll_period": 0.01,
        "heartbeat_period": 0.02,
        "timeout": 0.5,
        "backoff_min": 0.01,
        "backoff_max": 0.1,
    }
    opts.update(kw)
    return ModbusPlcLink("127.0.0.1", port, RMAP, **opts)


@pytest.fixture
async def plc() -> AsyncIterator[PlcServer]:
    server = PlcServer(free_port(), RMAP)
    await server.start()
    yield server
    await server.stop()


async def start(link: ModbusPlcLink) -> asyncio.Task[None]:
    return asyncio.create_task(link.run())


async def stop(link: ModbusPlcLink, task: asyncio.Task[None]) -> None:
    await link.close()
    await asyncio.wait_for(task, 2)


async def test_inputs_decoded_with_read_time(plc: PlcServer) -> None:
    plc.inputs = {
        RMAP.signals["estop_ok"].address: 1,
        RMAP.signals["position_offset_x"].address: (-123) & 0xFFFF,
        RMAP.signals["lift_height"].address: 480,
        RMAP.signals["bolt_torque"].address + 1: 455,
    }
    rec = Recorder()
    link = make_link(plc.port)
    rec.attach(link)
    before = time.monotonic()
    task = await start(link)
    await wait_until(lambda: len(rec.inputs) >= 2)
    after = time.monotonic()
    values, t = rec.inputs[-1]
    assert values["estop_ok"] is True
    assert values["position_offset_x"] == pytest.approx(-12.3)
    assert values["lift_height"] == 480
    assert values["bolt_torque"][1] == pytest.approx(45.5)
    assert len(values["rack_slot_occupied"]) == 30
    assert set(values) == {s.name for s in RMAP.inputs()}
    assert before <= t <= after
    assert rec.connection == [True]
    assert link.connected
    await stop(link, task)
    assert rec.connection == [True, False]


async def test_outputs_written_on_change_only(plc: PlcServer) -> None:
    # A heartbeat period far beyond the test leaves only the writes caused by changes.
    link = make_link(plc.port, heartbeat_period=1000.0)
    link.set_outputs({"cmd_code": 2, "cmd_param1": 0, "cmd_seq": 1})
    task = await start(link)
    await wait_until(lambda: len(plc.writes) >= 1)
    first = plc.writes[0]
    assert first[RMAP.signals["cmd_code"].address - OUT] == 2
    assert first[RMAP.signals["cmd_seq"].address - OUT] == 1
    assert first[RMAP.signals["ctrl_heartbeat"].address - OUT] == 1

    # Many polls without a change: no further write.
    reads = plc.reads
    await wait_until(lambda: plc.reads >= reads + 10)
    link.set_outputs({"cmd_code": 2})  # same value: still no change
    reads = plc.reads
    await wait_until(lambda: plc.reads >= reads + 5)
    assert len(plc.writes) == 1

    link.set_outputs({"stop_request": 2})
    await wait_until(lambda: len(plc.writes) >= 2)
    assert plc.writes[1][RMAP.signals["stop_request"].address - OUT] == 2
    assert plc.writes[1][RMAP.signals["cmd_seq"].address - OUT] == 1  # whole block each time
    assert link.stats.writes == 2
    await stop(link, task)


async def test_heartbeat_increments(plc: PlcServer) -> None:
    link = make_link(plc.port, heartbeat_period=0.01)
    task = await start(link)
    await wait_until(lambda: len(plc.writes) >= 5)
    beats = plc.heartbeats()
    assert beats[:5] == list(range(1, 6))  # nothing else changes: every write is a beat
    await stop(link, task)


async def test_set_outputs_rejects_bad_names_and_values(plc: PlcServer) -> None:
    link = make_link(plc.port)
    with pytest.raises(ValueError):
        link.set_outputs({"ctrl_heartbeat": 5})  # owned by the link
    with pytest.raises(ValueError):
        link.set_outputs({"estop_ok": True})  # an input
    with pytest.raises(ValueError):
        link.set_outputs({"no_such_signal": 1})
    with pytest.raises(ValueError):
        link.set_outputs({"cmd_seq": 70000})


async def test_write_now_returns_ack_time(plc: PlcServer) -> None:
    link = make_link(plc.port, heartbeat_period=1000.0)
    assert await link.write_now() is None  # not connected yet
    task = await start(link)
    await wait_until(lambda: link.connected and len(plc.writes) >= 1)
    link.set_outputs({"cmd_code": 3, "cmd_seq": 7})
    before = time.monotonic()
    t = await link.write_now()
    assert t is not None and before <= t <= time.monotonic()
    assert plc.writes[-1][RMAP.signals["cmd_code"].address - OUT] == 3
    # The cycle sees the change already acknowledged and does not write it again.
    n, reads = len(plc.writes), plc.reads
    await wait_until(lambda: plc.reads >= reads + 5)
    assert len(plc.writes) == n
    await stop(link, task)


async def test_write_exception_counted_and_retried(plc: PlcServer) -> None:
    link = make_link(plc.port, heartbeat_period=1000.0)
    task = await start(link)
    await wait_until(lambda: len(plc.writes) >= 1)
    plc.write_error = ExcCodes.DEVICE_BUSY
    link.set_outputs({"cmd_code": 5, "cmd_param1": 4, "cmd_seq": 2})
    assert await link.write_now() is None
    assert link.stats.write_errors >= 1
    assert link.stats.exceptions["DEVICE_BUSY"] >= 1
    plc.write_error = None
    await wait_until(lambda: len(plc.writes) >= 2)  # retried by the cycle
    assert plc.writes[-1][RMAP.signals["cmd_param1"].address - OUT] == 4
    await stop(link, task)


async def test_read_exception_counted_inputs_stale_then_recover(plc: PlcServer) -> None:
    rec = Recorder()
    link = make_link(plc.port)
    rec.attach(link)
    task = await start(link)
    await wait_until(lambda: len(rec.inputs) >= 1)

    plc.read_error = ExcCodes.DEVICE_FAILURE
    await wait_until(lambda: link.stats.exceptions.get("DEVICE_FAILURE", 0) >= 1)
    delivered = len(rec.inputs)
    await wait_until(lambda: link.stats.exceptions["DEVICE_FAILURE"] >= 5)
    assert len(rec.inputs) == delivered  # nothing delivered: the core sees the inputs age
    assert link.stats.poll_errors >= 5
    assert link.connected and not task.done()
    assert plc.heartbeats()[-1] > 1  # outputs and heartbeat keep going meanwhile

    plc.read_error = None
    await wait_until(lambda: len(rec.inputs) > delivered)
    assert rec.connection == [True]
    await stop(link, task)


async def test_short_input_block_then_server_fixed() -> None:
    port = free_port()
    short = PlcServer(port, RMAP, input_length=50)  # the map reads 100 registers
    await short.start()
    rec = Recorder()
    link = make_link(port)
    rec.attach(link)
    task = await start(link)
    try:
        await wait_until(lambda: link.stats.exceptions.get("ILLEGAL_ADDRESS", 0) >= 3)
        assert rec.inputs == []
        assert not task.done()
        await short.stop()
        full = PlcServer(port, RMAP)
        await full.start()
        try:
            await wait_until(lambda: len(rec.inputs) >= 1)
        finally:
            await full.stop()
    finally:
        await short.stop()
        await stop(link, task)


async def test_reconnect_after_server_restart(plc: PlcServer) -> None:
    rec = Recorder()
    link = make_link(plc.port)
    rec.attach(link)
    task = await start(link)
    await wait_until(lambda: len(rec.inputs) >= 1)

    await plc.stop()
    await wait_until(lambda: rec.connection == [True, False])
    assert not link.connected
    failed = link.stats.reconnects
    await wait_until(lambda: link.stats.reconnects >= failed + 2)  # backing off, retrying
    n = len(rec.inputs)

    plc.writes.clear()
    await plc.start()
    await wait_until(lambda: len(rec.inputs) > n)
    assert rec.connection == [True, False, True]
    await wait_until(lambda: len(plc.writes) >= 1)  # outputs re-sent to the restarted PLC
    await stop(link, task)


async def test_no_server_at_start_then_connects() -> None:
    port = free_port()
    rec = Recorder()
    link = make_link(port)
    rec.attach(link)
    task = await start(link)
    await wait_until(lambda: link.stats.reconnects >= 2)
    assert rec.connection == [False]
    server = PlcServer(port, RMAP)
    await server.start()
    try:
        await wait_until(lambda: len(rec.inputs) >= 1)
        assert rec.connection == [False, True]
    finally:
        await stop(link, task)
        await server.stop()


async def test_callback_error_ends_run(plc: PlcServer) -> None:
    # A broken core must not keep the heartbeat alive.
    link = make_link(plc.port)

    def boom(values: dict[str, Any], t: float) -> None:
        raise RuntimeError("core bug")

    link.on_inputs = boom
    task = await start(link)
    with pytest.raises(RuntimeError, match="core bug"):
        await asyncio.wait_for(task, 5)
    assert not link.connected
