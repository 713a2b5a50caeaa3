"""Issue 10, the PLC contract's gaps, end to end: the simulated station and swapd over real
Modbus TCP (and OPC UA where the behaviour is the contract's, not Modbus's)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from drivers.plc.regmap import load_register_map
from sim_hw.config import SimConfig
from sim_hw.mechanics import StationModel
from sim_hw.plc_server import PlcServer
from sim_hw.station_sim import SimStation
from station.core import CommandRefused
from station.packml import Cmd, State
from station.rig import PlcProtocol, Rig

WAIT_S = 20.0


async def start_swap(rig: Rig, step: str) -> None:
    core = rig.core
    await rig.wait_for(lambda: core.ready_to_start, WAIT_S, what="a vehicle to swap")
    await rig.daemon.command(Cmd.START, origin="test")
    await rig.wait_for(lambda: core.step is not None and core.step.name == step
                       and core.state == State.EXECUTE, WAIT_S, what=f"step {step}")


def fault_codes(rig: Rig) -> list[str]:
    return [e.data["code"] for e in rig.events if e.kind == "fault"]


# ---------------------------------------------------------------- item 6
async def test_a_light_curtain_reported_after_the_stop_still_holds(
        tmp_path: Path, plc: PlcProtocol) -> None:
    """The PLC stops the lift at once and reports the light curtain 60 ms later: swapd
    waits for the cause (stop_cause_grace_s) and holds the swap, which then completes."""
    async with Rig(speed=20.0, vehicles=1, workdir=tmp_path, name="cause", plc=plc,
                   config={"operation": {"auto_start": False}}) as rig:
        core = rig.core
        rig.sim.faults.set("safety_report_delay", 60)
        await start_swap(rig, "lift")
        await rig.wait_for(lambda: rig.daemon.image.plc.get("cmd_ack_seq") == core.seq
                           and rig.daemon.image.plc.get("cmd_status") == "busy", WAIT_S,
                           what="LIFT under way")
        rig.sim.faults.set("light_curtain")
        await rig.wait_for(lambda: core.state == State.HELD, WAIT_S, what="Held")
        # the observer hears of a decision after the journal has it: wait for the event
        await rig.wait_for(lambda: bool(fault_codes(rig)), WAIT_S, what="the fault event")
        assert fault_codes(rig) == ["light_curtain_breached"], rig.events
        stopped = [c for c in rig.sim.command_log if c.name == "LIFT"]
        assert stopped[-1].error_code == 6  # the PLC did stop it, before the report
        rig.sim.faults.clear("light_curtain")
        await rig.wait_for(lambda: not core.active_interlocks, WAIT_S, what="clear")
        await rig.daemon.command(Cmd.UNHOLD)
        await rig.wait_for(lambda: bool(rig.ended()), 60.0, what="the swap to end")
        assert rig.ended()[0]["outcome"] == "completed", rig.ended()


# ---------------------------------------------------------------- item 7
async def test_a_plc_working_to_other_setpoints_is_refused(tmp_path: Path) -> None:
    async with Rig(speed=20.0, vehicles=1, workdir=tmp_path, name="sp", plc="modbus",
                   config={"operation": {"auto_start": False}}) as rig:
        core = rig.core
        await rig.wait_for(lambda: core.state == State.IDLE, WAIT_S, what="Idle")
        rig.sim.faults.set("setpoint_mismatch", 20)
        await rig.wait_for(lambda: "plc_setpoint_mismatch" in core.active_interlocks,
                           WAIT_S, what="the interlock")
        await rig.daemon.command(Cmd.STOP)
        await rig.wait_for(lambda: core.state == State.STOPPED, WAIT_S, what="Stopped")
        with pytest.raises(CommandRefused) as refused:
            await rig.daemon.command(Cmd.RESET)
        assert "plc_setpoint_mismatch (setpoint_swap_height 520 mm (PLC) != " \
            "sequence.swap_height_mm 500 mm)" in str(refused.value)
        rig.sim.faults.clear("setpoint_mismatch")
        await rig.wait_for(lambda: not core.active_interlocks, WAIT_S, what="clear")
        await rig.daemon.command(Cmd.RESET)
        await rig.wait_for(lambda: core.state == State.IDLE, WAIT_S, what="Idle")


# ---------------------------------------------------------------- item 11
async def test_a_plc_restart_mid_step_is_named(tmp_path: Path, plc: PlcProtocol) -> None:
    async with Rig(speed=5.0, vehicles=1, workdir=tmp_path, name="rs", plc=plc,
                   config={"operation": {"auto_start": False}}) as rig:
        core = rig.core
        await start_swap(rig, "position")
        await rig.wait_for(lambda: rig.daemon.image.plc.get("cmd_ack_seq") == core.seq,
                           WAIT_S, what="POSITION taken")
        seq = core.seq
        rig.sim.sync()
        rig.sim.model.restart_program()
        rig.sim.sync()  # an OPC UA PLC's nodes at once
        await rig.wait_for(lambda: core.state == State.ABORTED, WAIT_S, what="Aborted")
        assert core.reason == (f"position: PLC restarted: cmd_ack_seq 0, cmd_status idle; "
                               f"POSITION (seq {seq}) lost"), core.reason
        await rig.wait_for(lambda: bool(fault_codes(rig)), WAIT_S, what="the fault event")
        assert fault_codes(rig) == ["plc_restarted"]


# ---------------------------------------------------------------- item 12: Modbus
@pytest.fixture
async def modbus_plc() -> AsyncIterator[tuple[PlcServer, AsyncModbusTcpClient]]:
    model = StationModel(SimConfig())
    t0 = time.monotonic()
    server = PlcServer(model, load_register_map(),
                       lambda: (time.monotonic() - t0, time.monotonic()), port=0)
    await server.start()
    client = AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=0.5, retries=0)
    await client.connect()
    try:
        yield server, client
    finally:
        client.close()
        await server.stop()


async def outputs(client: AsyncModbusTcpClient) -> list[int]:
    rr = await client.read_holding_registers(100, count=8, device_id=1)
    assert not rr.isError()
    return list(rr.registers)


async def test_modbus_fc4_and_other_function_codes_get_illegal_function(
        modbus_plc: tuple[PlcServer, AsyncModbusTcpClient]) -> None:
    _, c = modbus_plc
    for request in (c.read_input_registers(0, count=10, device_id=1),
                    c.read_input_registers(5000, count=2, device_id=1),
                    c.read_coils(0, count=8, device_id=1),
                    c.write_coil(101, True, device_id=1),
                    c.mask_write_register(address=101, and_mask=0, or_mask=7, device_id=1),
                    c.readwrite_registers(read_address=0, read_count=2, write_address=100,
                                          values=[5, 5], device_id=1)):
        rr = await request
        assert rr.isError() and rr.exception_code == 1, rr
    assert await outputs(c) == [0] * 8  # nothing written


async def test_modbus_another_unit_id_gets_no_answer(
        modbus_plc: tuple[PlcServer, AsyncModbusTcpClient]) -> None:
    server, c = modbus_plc
    for unit in (0, 2, 255):
        with pytest.raises(ModbusIOException):
            await c.read_holding_registers(0, count=10, device_id=unit)
    assert server.other_unit == 3
    await asyncio.sleep(0)


async def test_modbus_writes_are_all_or_nothing_and_reserved_registers_answer(
        modbus_plc: tuple[PlcServer, AsyncModbusTcpClient]) -> None:
    server, c = modbus_plc
    # reserved inputs read 0; the whole input block answers
    rr = await c.read_holding_registers(0, count=100, device_id=1)
    assert not rr.isError()
    rmap = load_register_map()
    used = {a for s in rmap.signals.values() for a in range(s.address, s.address + s.count)}
    assert all(v == 0 for a, v in enumerate(rr.registers) if a not in used)
    # a write into the inputs, reserved or not: exception 02, nothing written
    for address in (5, max(a for a in range(100) if a not in used)):
        rr = await c.write_registers(address, [1, 1], device_id=1)
        assert rr.isError() and rr.exception_code == 2, rr
    # a write reaching one register past the output block: exception 02, none of it taken
    rr = await c.write_registers(104, [9, 9, 9, 9, 9], device_id=1)
    assert rr.isError() and rr.exception_code == 2
    rr = await c.write_registers(99, [7, 7], device_id=1)
    assert rr.isError() and rr.exception_code == 2
    assert await outputs(c) == [0] * 8
    assert server.model.last_seq is None  # the model never saw a write
    # a reserved output register takes a write and the PLC ignores it
    rr = await c.write_registers(100, [1, 12, 0, 0, 5, 0, 0, 3], device_id=1)
    assert not rr.isError()
    assert (await outputs(c))[7] == 3 and server.model.last_seq == 5


# ---------------------------------------------------------------- item 7: the probe
async def test_check_config_probe_compares_the_setpoints(tmp_path: Path,
                                                         plc: PlcProtocol) -> None:
    from station.config import ModbusSection, PlcSection
    from tests.integration.test_check_config_probe import (
        opcua_section,
        sim_config,
        station_config,
        swapd,
    )

    async with SimStation(sim_config(plc)) as sim:
        section = PlcSection(protocol="opcua", opcua=opcua_section(tmp_path, sim)) \
            if plc == "opcua" else PlcSection(modbus=ModbusSection(port=sim.modbus_port))
        cfg = station_config(tmp_path, section)
        rc, out, err = await swapd("check-config", "--probe", str(cfg))
        assert rc == 0, (out, err)
        sim.faults.set("setpoint_mismatch", 20)
        sim.sync()
        rc, out, err = await swapd("check-config", "--probe", str(cfg))
        assert rc == 2, (out, err)
        assert "set-point setpoint_swap_height 520 mm (PLC) != sequence.swap_height_mm " \
            "500 mm" in err, err
