"""SimStation over the real wire protocols: a pymodbus client and a python-can bus.

Timings are never asserted against the wall clock: everything polls with generous limits.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import can
import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers.bms.protocol import (
    STATION_SA,
    VEHICLE_PACK_SA,
    Decoded,
    PackProtocol,
    rack_sa,
)
from drivers.plc.regmap import RegisterMap, load_register_map
from sim_hw.config import CanConfig, ModbusConfig, SimConfig
from sim_hw.station_sim import SimStation

pytestmark = pytest.mark.timeout(60)

RMAP: RegisterMap = load_register_map()
PROTO = PackProtocol()
UNIT = RMAP.unit_id
LIMIT_S = 15.0


@pytest.fixture
async def sim() -> AsyncIterator[SimStation]:
    cfg = SimConfig(
        speed=50.0,
        vehicles=1,
        modbus=ModbusConfig(host="127.0.0.1", port=0),
        can=CanConfig(interface="virtual", channel=f"sim-it-{uuid.uuid4().hex[:8]}"),
    )
    async with SimStation(cfg) as station:
        yield station


@pytest.fixture
async def client(sim: SimStation) -> AsyncIterator[AsyncModbusTcpClient]:
    c = AsyncModbusTcpClient("127.0.0.1", port=sim.modbus_port, timeout=2, retries=1)
    assert await c.connect()
    yield c
    c.close()


class Plc:
    """A minimal controller: heartbeat and reads through a real Modbus client."""

    def __init__(self, client: AsyncModbusTcpClient) -> None:
        self.c = client
        self.hb = 0
        self.seq = 0

    async def read(self) -> dict[str, Any]:
        rr = await self.c.read_holding_registers(
            RMAP.input_start, count=RMAP.input_length, device_id=UNIT
        )
        assert not rr.isError(), rr
        return RMAP.decode_block(RMAP.input_start, list(rr.registers), "in")

    async def beat(self) -> None:
        self.hb = (self.hb + 1) & 0xFFFF
        wr = await self.c.write_register(RMAP.signals["ctrl_heartbeat"].address, self.hb,
                                         device_id=UNIT)
        assert not wr.isError(), wr

    async def until(self, cond: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        end = loop.time() + LIMIT_S
        while True:
            await self.beat()
            inp = await self.read()
            if cond(inp):
                return inp
            assert loop.time() < end, f"not reached; last inputs {inp}"
            await asyncio.sleep(0.01)

    async def command(self, name: str, p1: int = 0) -> int:
        self.seq += 1
        self.hb = (self.hb + 1) & 0xFFFF
        values = {"ctrl_heartbeat": self.hb, "cmd_code": RMAP.command_code(name),
                  "cmd_param1": p1, "cmd_param2": 0, "cmd_seq": self.seq, "stop_request": 0}
        regs = RMAP.encode_block(RMAP.output_start, RMAP.output_length, values)
        wr = await self.c.write_registers(RMAP.output_start, regs, device_id=UNIT)
        assert not wr.isError(), wr
        return self.seq


async def test_modbus_inputs_and_a_position_command(
    sim: SimStation, client: AsyncModbusTcpClient
) -> None:
    plc = Plc(client)
    first = await plc.read()
    assert first["bolt_count"] == 10 and first["rack_slot_count"] == 13
    assert first["rack_slot_occupied"][:13] == [True] * 12 + [False]
    assert first["estop_ok"] and first["smoke_clear"]
    inp = await plc.until(lambda i: i["plc_heartbeat"] != first["plc_heartbeat"])
    inp = await plc.until(lambda i: i["vehicle_ready"])
    assert inp["vehicle_present"] and inp["vehicle_token"] == 1
    assert abs(inp["position_offset_x"]) >= 20.0

    seq = await plc.command("POSITION")
    busy = await plc.read()
    assert busy["cmd_ack_seq"] == seq and busy["cmd_status"] == 1
    done = await plc.until(lambda i: i["cmd_status"] != 1)
    assert done["cmd_ack_seq"] == seq
    assert (done["cmd_status"], done["cmd_error_code"]) == (2, 0)
    assert abs(done["position_offset_x"]) <= 2.0 and abs(done["position_offset_y"]) <= 2.0

    rec = sim.command_log[-1]
    assert rec.name == "POSITION" and rec.status == 2 and rec.ended_real is not None
    assert rec.ended_real >= rec.taken_real

    # the PLC's own interlock: LOWER with nothing to lower is fine, UNLOCK before LIFT is not
    seq = await plc.command("UNLOCK")
    refused = await plc.until(lambda i: i["cmd_ack_seq"] == seq and i["cmd_status"] != 1)
    assert (refused["cmd_status"], refused["cmd_error_code"]) == (3, 2)


async def test_writes_to_inputs_and_addresses_outside_the_map_get_exceptions(
    sim: SimStation, client: AsyncModbusTcpClient
) -> None:
    wr = await client.write_register(RMAP.signals["estop_ok"].address, 0, device_id=UNIT)
    assert wr.isError() and wr.exception_code == 2  # ILLEGAL DATA ADDRESS
    wr = await client.write_registers(98, [0, 0, 0], device_id=UNIT)  # straddles into inputs
    assert wr.isError() and wr.exception_code == 2
    rr = await client.read_holding_registers(
        RMAP.output_start + RMAP.output_length, count=1, device_id=UNIT
    )
    assert rr.isError() and rr.exception_code == 2
    rr = await client.read_holding_registers(1000, count=4, device_id=UNIT)
    assert rr.isError()
    # the outputs read back as written, the inputs unharmed
    ok = await client.write_register(RMAP.signals["stop_request"].address, 2, device_id=UNIT)
    assert not ok.isError()
    rr = await client.read_holding_registers(RMAP.output_start, count=RMAP.output_length,
                                             device_id=UNIT)
    assert rr.registers[5] == 2 and sim.model.stop_request == 2
    assert (await Plc(client).read())["estop_ok"]


async def test_pause_drops_requests_and_resume_answers_again(sim: SimStation) -> None:
    sim.plc.pause()
    c = AsyncModbusTcpClient("127.0.0.1", port=sim.modbus_port, timeout=0.3, retries=0)
    assert await c.connect()  # the socket still accepts; nothing answers
    with pytest.raises(ModbusException):
        await c.read_holding_registers(0, count=10, device_id=UNIT)
    c.close()
    assert sim.plc.dropped >= 1
    sim.plc.resume()
    c = AsyncModbusTcpClient("127.0.0.1", port=sim.modbus_port, timeout=2, retries=1)
    assert await c.connect()
    rr = await c.read_holding_registers(0, count=10, device_id=UNIT)
    assert not rr.isError()
    c.close()


async def _frames(bus: can.BusABC, until: Callable[[list[Decoded]], bool]) -> list[Decoded]:
    got: list[Decoded] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + LIMIT_S
    while not until(got):
        assert loop.time() < end, f"frames not seen; got {len(got)}"
        msg = await asyncio.to_thread(bus.recv, 0.05)
        if msg is not None:
            got.append(PROTO.decode(msg.arbitration_id, msg.data))
    return got


async def test_packs_talk_on_can_and_obey_packcontrol(sim: SimStation) -> None:
    bus = can.Bus(interface="virtual", channel=sim.config.can.channel)
    try:
        rack_ids = {rack_sa(s) for s in range(1, 13)}

        def seen(name: str, frames: list[Decoded]) -> set[int]:
            return {f.source for f in frames if f.name == name}

        frames = await _frames(
            bus,
            lambda fs: rack_ids | {VEHICLE_PACK_SA} <= seen("PackIdentity", fs)
            and rack_ids | {VEHICLE_PACK_SA} <= seen("PackStatus", fs),
        )
        truth = sim.truth()
        ident = {f.source: f.signals for f in frames if f.name == "PackIdentity"}
        for slot in range(1, 13):
            assert ident[rack_sa(slot)]["PackSerial"] == truth["rack"][slot]
        nmc = PackProtocol().codes("PackIdentity", "Chemistry")["nmc"]
        assert ident[rack_sa(1)]["Chemistry"] == nmc
        assert ident[rack_sa(2)]["PackFamily"] == 25
        assert ident[VEHICLE_PACK_SA]["PackSerial"] == truth["vehicle_bay"]
        status = [f.signals for f in frames if f.name == "PackStatus" and f.source == rack_sa(2)]
        assert status and 85.0 <= status[0]["SOC"] <= 100.0

        # PackControl to slot 2 (with a rack pack that has room to charge) -> it charges
        pack = sim.model.rack[2]
        assert pack is not None
        pack.soc_pct = 60.0
        control = {"ControlCommand": 1, "ChargeCurrentLimit": 150.0,
                   "ChargeVoltageLimit": 500.0, "ControlCounter": 1}
        can_id, data = PROTO.encode("PackControl", control, sa=STATION_SA, da=rack_sa(2))
        bus.send(can.Message(arbitration_id=can_id, data=data, is_extended_id=True))

        def charging(fs: list[Decoded]) -> bool:
            return any(f.name == "PackCells" and f.source == rack_sa(2)
                       and f.signals["PackState"] == 1 for f in fs)

        frames = await _frames(bus, charging)
        cur = [f.signals["PackCurrent"] for f in frames
               if f.name == "PackStatus" and f.source == rack_sa(2)]
        assert cur and cur[-1] > 0
        assert sim.can.controls >= 1 and sim.can.send_errors == 0
    finally:
        bus.shutdown()
