"""J1939-21 transport on the wire: the station's PackBus (responder) and the simulated
packs and car (originators, sim_hw/pack_transport.py) exchanging real python-can frames on
a `virtual` channel: the nameplate text, 108-120 cell voltages and temperatures and the
VIN, by RTS/CTS when asked by address and by BAM when asked globally; an aborted transfer
is counted and leaves the pack's data as it was."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.bms import j1939_tp
from drivers.bms.adapter import TEMPS_MESSAGE, TEXT_MESSAGE, VOLTAGES_MESSAGE, pack_summary
from drivers.bms.protocol import VEHICLE_PACK_SA, rack_sa
from sim_hw.config import CanConfig, SimConfig
from sim_hw.mechanics import StationModel
from sim_hw.pack_transport import MANUFACTURER, pack_details
from station.image import BAY, Location
from station.rig import Rig
from tests.integration.polling import wait_until
from tests.integration.test_can_contract_gaps import P, Wire, open_wire

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def wire() -> AsyncIterator[Wire]:
    model = StationModel(SimConfig())
    model.advance(2.0)  # the first car on the platform, its pack's BMS awake
    slot1 = model.rack[1]
    assert slot1 is not None
    slot1.chemistry = "lfp"  # 120 cells in series
    w = await open_wire(CanConfig(interface="virtual", channel=f"tp-{uuid.uuid4().hex}"),
                        model)
    w.packs.real_clock = w.packs.transport.clock = time.monotonic  # BAMs are paced on it
    task = asyncio.create_task(w.bus.run())
    await wait_until(lambda: w.bus.is_open)
    await w.packs.start()
    try:
        yield w
    finally:
        await w.packs.stop()
        await w.bus.close()
        await asyncio.wait_for(task, 2)


def request(w: Wire, name: str, da: int) -> None:
    w.bus.send("Request", {"RequestedPgn": P.pgn_of(name)}, da=da)


def identify(w: Wire, loc: Location) -> None:
    """What the station heard of the pack first: its identity and limits."""
    da = w.commander.adapter.address_of(loc)
    for name in ("PackIdentity", "PackLimits", "PackStatus", "PackCells"):
        request(w, name, da)


async def test_nameplate_and_120_cells_by_rts_cts(wire: Wire) -> None:
    w, loc = wire, Location.rack(1)
    identify(w, loc)
    await wait_until(lambda: (r := w.image.packs.get(loc)) is not None and
                     r.cell_count is not None and r.max_cell_temp_c is not None)
    for name in (TEXT_MESSAGE, VOLTAGES_MESSAGE, TEMPS_MESSAGE):
        request(w, name, rack_sa(1))
    await wait_until(lambda: w.bus.stats["cm_completed"] == 3)
    rep = w.image.packs[loc]
    pack = w.model.rack[1]
    assert pack is not None
    want = pack_details(pack)
    assert rep.nameplate is not None and rep.nameplate.manufacturer == MANUFACTURER
    assert rep.nameplate.serial == want[TEXT_MESSAGE]["SerialText"]
    assert rep.cell_voltages is not None and len(rep.cell_voltages.values) == 120
    assert rep.cell_voltages.values == tuple(want[VOLTAGES_MESSAGE]["CellVoltages"])
    assert rep.cell_voltages.high == pytest.approx(rep.max_cell_v, abs=0.001)
    assert rep.cell_temps is not None and rep.cell_temps.high == rep.max_cell_temp_c
    st = w.bus.stats
    # 35 + 18 + 8 packets, CTS windows of 16: 3 + 2 + 1 CTS, one EndOfMsgAck each
    assert (st["cm_cts_sent"], st["cm_eoma_sent"], st["cm_completed"]) == (6, 3, 3)
    assert {k: v for k, v in st.items() if k.startswith("tp_abort") and v} == {}
    await wait_until(lambda: w.packs.transport.stats["completed"] == 3)  # its EOMA taken
    assert w.commander.adapter.stats["detail_applied"] == 3
    assert w.commander.adapter.stats["cells_count_mismatch"] == 0
    assert w.commander.adapter.stats["cells_temp_mismatch"] == 0
    summary = pack_summary(rep, 0.0)
    assert summary["cells"] == 120 and summary["manufacturer"] == MANUFACTURER


async def test_a_global_request_is_answered_with_bams(wire: Wire) -> None:
    w = wire
    for loc in (Location.rack(1), Location.rack(2)):
        identify(w, loc)
    await wait_until(lambda: all((r := w.image.packs.get(Location.rack(n))) is not None
                                 and r.serial is not None for n in (1, 2)))
    request(w, TEMPS_MESSAGE, 0xFF)
    await wait_until(lambda: all(w.image.packs[Location.rack(n)].cell_temps is not None
                                 for n in (1, 2)))
    assert w.bus.stats["cm_completed"] == 0 and w.bus.stats["tp_completed"] >= 2
    assert w.packs.transport.stats["bams_sent"] >= 2


async def test_the_vin_by_rts_cts_when_the_car_is_asked(wire: Wire) -> None:
    w = wire
    # the BAM on arrival (the next is 5 s later)
    await wait_until(lambda: w.image.vehicle_vin is not None and w.packs.vin_sent == 1)
    w.image.vehicle_vin = None
    request(w, "VehicleIdentification", VEHICLE_PACK_SA)
    await wait_until(lambda: w.image.vehicle_vin is not None)
    assert w.model.vehicle is not None and w.image.vehicle_vin == w.model.vehicle.vin
    assert w.bus.stats["cm_completed"] == 1
    await wait_until(lambda: w.packs.transport.stats["completed:VehicleIdentification"] == 1)


async def test_a_pack_that_stops_mid_transfer_is_aborted_and_its_data_stays(
        wire: Wire) -> None:
    w, loc = wire, Location.rack(1)
    identify(w, loc)
    await wait_until(lambda: (r := w.image.packs.get(loc)) is not None and r.serial)
    request(w, VOLTAGES_MESSAGE, rack_sa(1))
    await wait_until(lambda: w.image.packs[loc].cell_voltages is not None)
    # the pack has taken the EndOfMsgAck: a Request before that, on a loaded machine, finds
    # its connection still open and is refused (an abort of another reason than timeout)
    await wait_until(lambda: w.packs.transport.stats["completed"] >= 1)
    before = w.image.packs[loc].cell_voltages
    w.bus.tp_cm.t1_s = 0.2  # short T1: the test does not wait J1939-21's 750 ms
    w.packs.transport.stall_after[rack_sa(1)] = 20  # it goes quiet after packet 20
    pack = w.model.rack[1]
    assert pack is not None
    pack.soc_pct = 90.0  # other cell voltages now, never to be heard
    request(w, VOLTAGES_MESSAGE, rack_sa(1))
    await wait_until(lambda: w.bus.stats["tp_abort_sent_timeout"] == 1)
    assert w.image.packs[loc].cell_voltages is before
    assert w.bus.tp_cm.open_connections == 0 and w.packs.transport.stats["stalled"] == 1
    assert w.bus.stats["cm_completed"] == 1
    # the pack comes back: the next Request is answered whole
    w.packs.transport.stall_after.clear()
    w.bus.tp_cm.t1_s = j1939_tp.T1_S
    request(w, VOLTAGES_MESSAGE, rack_sa(1))
    await wait_until(lambda: w.bus.stats["cm_completed"] == 2)
    assert w.image.packs[loc].cell_voltages is not before


async def test_connection_frames_for_another_node_are_not_answered(wire: Wire) -> None:
    w = wire
    other = 0x33
    can_id, data = j1939_tp.rts_frame(P.pgn_of(VOLTAGES_MESSAGE), 241, rack_sa(1), other)
    w.packs._send_frame(can_id, data, "RTS", rack_sa(1))
    await wait_until(lambda: w.bus.stats["other_destination"] >= 1)
    await asyncio.sleep(0.05)
    assert w.bus.stats["cm_cts_sent"] == 0 and w.bus.tp_cm.open_connections == 0


def test_bay_location_constant_is_the_vehicle_address() -> None:
    assert BAY.is_bay


# ---- swapd and the simulator (station/rig.py), on a virtual bus ------------------------

VIN = "LSJA24U61NG123456"


async def test_nameplates_cells_and_the_vin_reach_swapds_status(tmp_path: Path) -> None:
    """swapd asks every identified pack for its nameplate and cells (by address: RTS/CTS)
    and the car for its VIN; the status shows them. Slot 2's pack (LFP) has 120 cells."""
    async with Rig(speed=10.0, vehicles=1, can="virtual", workdir=tmp_path,
                   sim={"vins": [VIN], "vin_broadcast": True},
                   config={"operation": {"auto_start": False}}, name="tp-status") as rig:
        daemon, sim = rig.daemon, rig.sim

        def details() -> dict[str, dict[str, object]]:
            return {d["location"]: d for d in daemon.status()["pack_details"]}

        await rig.wait_for(lambda: (d := details().get("rack slot 2")) is not None
                           and d["cells"] is not None and d["temp_sensors"] is not None
                           and d["manufacturer"] is not None, timeout=30,
                           what="slot 2's nameplate and cells in the status")
        d = details()["rack slot 2"]
        pack = sim.model.rack[2]
        assert pack is not None and pack.chemistry == "lfp"
        assert d["cells"] == d["temp_sensors"] == 120 and d["serial"] == pack.serial
        assert (d["manufacturer"], d["serial_text"]) == (MANUFACTURER,
                                                         f"SIM-{pack.serial:012d}")
        rep = daemon.image.packs[Location.rack(2)]
        assert rep.cell_voltages is not None and d["cell_v_max"] == rep.cell_voltages.high
        assert daemon.bus.stats["cm_completed"] >= 3
        # every rack pack the PLC shows, asked and answered; none mismatched
        await rig.wait_for(lambda: all(d["cells"] for d in details().values()
                                       if d["location"] != "vehicle bay"), timeout=30,
                           what="every pack's cells")
        for key in ("cells_invalid", "text_invalid", "cells_count_mismatch",
                    "cells_temp_mismatch"):
            assert daemon.adapter.stats[key] == 0, key
        # the VIN by RTS/CTS: swapd asks the car by address while it has none (the car's
        # BAMs held back meanwhile) ...
        send_vin = sim.can.send_vin
        bams = 0

        async def no_bam(vin: str) -> None:
            nonlocal bams
            bams += 1

        sim.can.send_vin = no_bam  # type: ignore[method-assign]
        daemon.details.retry_s = 0.3
        await asyncio.sleep(0.2)  # a BAM under way ends
        asked = sim.can.transport.stats["completed:VehicleIdentification"]
        daemon.image.vehicle_vin = daemon.image.vehicle_vin_at = None
        await rig.wait_for(lambda: daemon.status()["vehicle_vin"]["vin"] == VIN, timeout=20,
                           what="the VIN asked by address")
        await rig.wait_for(
            lambda: sim.can.transport.stats["completed:VehicleIdentification"] > asked,
            timeout=5, what="the car's connection ended")
        # ... and by the car's BAM, when swapd asks no more
        sim.can.send_vin = send_vin  # type: ignore[method-assign]
        daemon.details.retry_s = 3600.0
        daemon.details._vin_asked = daemon.clock()
        daemon.image.vehicle_vin = daemon.image.vehicle_vin_at = None
        sent = sim.can.vin_sent
        await rig.wait_for(lambda: daemon.status()["vehicle_vin"]["vin"] == VIN, timeout=20,
                           what="the VIN by BAM")
        assert sim.can.vin_sent > sent and daemon.adapter.stats["vin_invalid"] == 0


async def test_lost_packets_are_asked_for_again_on_the_wire(wire: Wire) -> None:
    w, loc = wire, Location.rack(1)
    identify(w, loc)
    await wait_until(lambda: (r := w.image.packs.get(loc)) is not None and r.serial)
    w.packs.transport.skip_packets[rack_sa(1)] = {3, 20}
    request(w, VOLTAGES_MESSAGE, rack_sa(1))
    await wait_until(lambda: w.bus.stats["cm_completed"] == 1)
    pack = w.model.rack[1]
    assert pack is not None
    rep = w.image.packs[loc]
    assert rep.cell_voltages is not None
    assert rep.cell_voltages.values == tuple(pack_details(pack)[VOLTAGES_MESSAGE]["CellVoltages"])
    assert w.bus.stats["tp_retransmit_request"] == 2 and w.packs.transport.stats["skipped"] == 2


async def test_a_connection_beyond_the_active_limit_is_held_then_resumed(wire: Wire) -> None:
    w = wire
    w.bus.tp_cm.max_active = 1
    for n in (1, 2):
        identify(w, Location.rack(n))
    await wait_until(lambda: all((r := w.image.packs.get(Location.rack(n))) is not None
                                 and r.serial for n in (1, 2)))
    request(w, VOLTAGES_MESSAGE, rack_sa(1))
    request(w, VOLTAGES_MESSAGE, rack_sa(2))
    await wait_until(lambda: w.bus.stats["cm_completed"] == 2)
    assert w.bus.stats["cm_holds_sent"] >= 1
    assert all(w.image.packs[Location.rack(n)].cell_voltages is not None for n in (1, 2))
    assert {k: v for k, v in w.bus.stats.items() if k.startswith("tp_abort") and v} == {}
