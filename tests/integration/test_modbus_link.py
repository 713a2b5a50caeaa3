"""Modbus-only extras of the link suite (test_plc_links.py): the register layout of the
writes, write-on-change, exception codes by name, a PLC serving a short block, raw codes
outside the contract."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymodbus.constants import ExcCodes

from drivers.plc.contract import load_contract
from drivers.plc.modbus_link import ModbusPlcLink
from drivers.plc.regmap import load_register_map
from station.config import CanSection, PlcSection
from tests.integration.test_plc_links import (
    ModbusDouble,
    Recorder,
    free_port,
    start,
    stop,
    wait_until,
)

pytestmark = pytest.mark.timeout(20)

RMAP = load_register_map()
OUT = RMAP.output_start


def reg(name: str) -> int:
    """Offset of a signal in the output block."""
    return RMAP.signals[name].address - OUT


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
async def plc() -> AsyncIterator[ModbusDouble]:
    server = ModbusDouble(free_port(), RMAP)
    await server.start()
    yield server
    await server.stop()


def test_from_config_needs_a_modbus_section() -> None:
    with pytest.raises(TypeError, match="ModbusSection"):
        ModbusPlcLink.from_config(PlcSection(), CanSection(), load_contract(), lambda: 0.0)


async def test_outputs_written_on_change_only_as_one_block(plc: ModbusDouble) -> None:
    # A heartbeat period far beyond the test leaves only the writes caused by changes.
    link = make_link(plc.port, heartbeat_period=1000.0)
    link.set_outputs({"cmd_code": "LIFT", "cmd_param1": 0, "cmd_seq": 1})
    task = await start(link)
    await wait_until(lambda: len(plc.raw_writes) >= 1)
    first = plc.raw_writes[0]
    assert len(first) == RMAP.output_length  # the whole output block, one FC16
    assert first[reg("cmd_code")] == RMAP.contract.command_code("LIFT") == 2
    assert first[reg("cmd_seq")] == 1
    assert first[reg("ctrl_heartbeat")] == 1

    # Many polls without a change: no further write.
    reads = plc.reads
    await wait_until(lambda: plc.reads >= reads + 10)
    link.set_outputs({"cmd_code": "LIFT"})  # same value: still no change
    reads = plc.reads
    await wait_until(lambda: plc.reads >= reads + 5)
    assert len(plc.raw_writes) == 1

    link.set_outputs({"stop_request": "cat2"})
    await wait_until(lambda: len(plc.raw_writes) >= 2)
    assert plc.raw_writes[1][reg("stop_request")] == 2
    assert plc.raw_writes[1][reg("cmd_seq")] == 1  # whole block each time
    assert link.stats.writes == 2
    await stop(link, task)


async def test_heartbeat_increments_by_one(plc: ModbusDouble) -> None:
    link = make_link(plc.port, heartbeat_period=0.01)
    task = await start(link)
    await wait_until(lambda: len(plc.raw_writes) >= 5)
    beats = plc.heartbeats()
    assert beats[:5] == list(range(1, 6))  # nothing else changes: every write is a beat
    await stop(link, task)


async def test_out_of_range_for_the_register_rejected(plc: ModbusDouble) -> None:
    link = make_link(plc.port)
    with pytest.raises(ValueError, match="cmd_seq"):
        link.set_outputs({"cmd_seq": 70000})  # u16
    with pytest.raises(ValueError, match="cmd_param1"):
        link.set_outputs({"cmd_param1": -1})


async def test_unknown_raw_codes_decode_to_unknown_names(plc: ModbusDouble) -> None:
    plc.raw_inputs = {RMAP.signals["cmd_status"].address: 9,
                      RMAP.signals["cmd_error_code"].address: 250}
    rec = Recorder()
    link = make_link(plc.port)
    rec.attach(link)
    task = await start(link)
    await wait_until(lambda: len(rec.inputs) >= 1)
    values = rec.inputs[-1][0]
    assert (values["cmd_status"], values["cmd_error_code"]) == ("unknown_9", "unknown_250")
    await stop(link, task)


async def test_write_exception_counted_by_name_and_retried(plc: ModbusDouble) -> None:
    link = make_link(plc.port, heartbeat_period=1000.0)
    task = await start(link)
    await wait_until(lambda: len(plc.raw_writes) >= 1)
    plc.write_error = ExcCodes.DEVICE_BUSY
    link.set_outputs({"cmd_code": "STORE", "cmd_param1": 4, "cmd_seq": 2})
    assert await link.write_now() is None
    assert link.stats.write_errors >= 1
    assert link.stats.exceptions["DEVICE_BUSY"] >= 1
    assert link.stats.last_error == "write: exception DEVICE_BUSY"
    plc.write_error = None
    await wait_until(lambda: len(plc.raw_writes) >= 2)  # retried by the cycle
    assert plc.raw_writes[-1][reg("cmd_param1")] == 4
    await stop(link, task)


async def test_read_exception_counted_by_name(plc: ModbusDouble) -> None:
    rec = Recorder()
    link = make_link(plc.port)
    rec.attach(link)
    task = await start(link)
    await wait_until(lambda: len(rec.inputs) >= 1)
    plc.read_error = ExcCodes.DEVICE_FAILURE
    await wait_until(lambda: link.stats.exceptions.get("DEVICE_FAILURE", 0) >= 3)
    assert link.stats.last_error == "read: exception DEVICE_FAILURE"
    plc.read_error = None
    n = len(rec.inputs)
    await wait_until(lambda: len(rec.inputs) > n)
    await stop(link, task)


async def test_short_input_block_then_server_fixed() -> None:
    port = free_port()
    short = ModbusDouble(port, RMAP, input_length=50)  # the map reads 100 registers
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
        full = ModbusDouble(port, RMAP)
        await full.start()
        try:
            await wait_until(lambda: len(rec.inputs) >= 1)
        finally:
            await full.stop()
    finally:
        await short.stop()
        await stop(link, task)
