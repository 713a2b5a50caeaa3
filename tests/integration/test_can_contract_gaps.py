"""Issue 10, items 16-18, on the wire: the station's side (PackBus, BmsAdapter,
PackCommander) and the simulated packs (CanPacks) exchanging real python-can frames on a
`virtual` channel (and over udp_multicast for the NACKs); then whole swaps with packs that
send no start-up burst."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import can
import pytest

from drivers.bms.adapter import BmsAdapter
from drivers.bms.canbus import PackBus
from drivers.bms.commander import PackCommander
from drivers.bms.protocol import STATION_SA, Decoded, PackProtocol, rack_sa
from sim_hw.can_packs import CanPacks
from sim_hw.config import CanConfig, SimConfig
from sim_hw.mechanics import StationModel
from station.image import BAY, Location, PackData, ProcessImage
from station.pack_commands import PackCommand, PackCommandKind, PackRequest
from tests.integration.conftest import Station
from tests.integration.polling import wait_until

pytestmark = pytest.mark.timeout(60)

P = PackProtocol()
IDENTIFY = (PackData.IDENTITY, PackData.HEALTH, PackData.LIMITS)



class FrozenClock:
    """The packs' real clock, held still: a pack's cyclic frames never fall due, so what
    reaches the station is what it asked for."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Wire:
    model: StationModel
    packs: CanPacks
    image: ProcessImage
    bus: PackBus
    commander: PackCommander
    clock: FrozenClock


def show_plc(image: ProcessImage, model: StationModel) -> None:
    """The PLC's view: the adapter takes pack frames only where it shows a pack."""
    slots = max(model.rack)
    v = model.vehicle
    image.plc = {"rack_slot_count": slots,
                 "rack_slot_occupied": [model.rack.get(n) is not None
                                        for n in range(1, slots + 1)],
                 "vehicle_present": v is not None, "vehicle_token": v.token if v else 0,
                 "vehicle_pack_present": v is not None and v.pack is not None}
    image.plc_read_at = 0.0


async def open_wire(cfg: CanConfig, model: StationModel, **bus_kwargs: Any) -> Wire:
    clock = FrozenClock()
    packs = CanPacks(model, cfg, P, real_clock=clock)
    adapter = BmsAdapter(P)
    image = ProcessImage(pack_timeouts=adapter.timeouts())
    show_plc(image, model)
    bus = PackBus(cfg.interface, cfg.channel, P, bus_kwargs=bus_kwargs or None)

    def on_message(decoded: Decoded, t: float) -> None:
        adapter.apply(image, decoded, t)

    bus.on_message = on_message
    commander = PackCommander(bus, adapter)
    return Wire(model, packs, image, bus, commander, clock)


@pytest.fixture
async def wire() -> AsyncIterator[Wire]:
    model = StationModel(SimConfig())
    model.advance(2.0)  # the first car drives on 1 s after start, its pack's BMS awake
    assert model.vehicle is not None and model.vehicle.pack is not None
    w = await open_wire(CanConfig(interface="virtual", channel=f"gaps-{uuid.uuid4().hex}"),
                        model)
    task = asyncio.create_task(w.bus.run())
    await wait_until(lambda: w.bus.is_open)
    try:
        yield w
    finally:
        await w.packs.stop()
        await w.bus.close()
        await asyncio.wait_for(task, 2)


# ------------------------------------------------------------- 16: no start-up burst


async def test_the_station_identifies_a_bay_pack_that_sent_no_start_up_burst(
    wire: Wire,
) -> None:
    """The car's new pack wakes after LOCK and says nothing of its own: the station's
    Request brings its identity and limits, on the wire, from the moment it wakes."""
    v = wire.model.vehicle
    assert v is not None and v.pack is not None
    v.pack.startup_burst = False
    v.bay_awake_from = None  # asleep (REMOVE .. LOCK)
    await wire.packs.start()
    await asyncio.sleep(0.2)  # the packs' cycle runs: nothing from the bay
    assert BAY not in wire.image.packs
    v.bay_awake_from = wire.model.now  # the car powers its electronics: the BMS wakes
    await asyncio.sleep(0.2)
    assert BAY not in wire.image.packs  # no burst, and its clock never reaches a period
    assert wire.commander.request(PackRequest(BAY, IDENTIFY)) == 3
    await wait_until(lambda: BAY in wire.image.packs and wire.image.packs[BAY].identified
                     and wire.image.packs[BAY].cell_count is not None)
    rep = wire.image.packs[BAY]
    assert rep.serial == v.pack.serial and rep.cell_count == v.pack.series_cells
    assert wire.packs.requests_answered == 3


# --------------------------------------------------------------------- 17: NACK


async def test_a_pack_nacks_what_it_does_not_send_and_the_station_counts_it(
    wire: Wire,
) -> None:
    await wire.packs.start()
    wire.bus.send("Request", {"RequestedPgn": P.pgn_of("VehicleIdentification")},
                  da=rack_sa(2))  # a rack pack sends no VIN
    await wait_until(lambda: wire.bus.stats["nacks_received"] == 1)
    assert wire.commander.refusals == {(rack_sa(2), P.pgn_of("VehicleIdentification")): 1}
    assert wire.packs.nacks_sent == 1
    wire.bus.send("Request", {"RequestedPgn": 0x1234}, da=0xFF)  # global: nobody NACKs
    wire.bus.send("Request", {"RequestedPgn": P.pgn_of("PackHealth")}, da=rack_sa(2))
    await wait_until(lambda: wire.packs.requests_answered == 1)
    await asyncio.sleep(0.1)
    assert wire.bus.stats["nacks_received"] == 1 and wire.packs.nacks_sent == 1


async def test_the_station_nacks_a_packs_request_on_the_wire(wire: Wire) -> None:
    channel = wire.packs.cfg.channel
    node = can.Bus(interface="virtual", channel=channel)  # a pack (or a tool) asking
    try:
        can_id, data = P.encode("Request", {"RequestedPgn": P.pgn_of("PackControl")},
                                sa=rack_sa(4), da=STATION_SA)
        node.send(can.Message(arbitration_id=can_id, data=data, is_extended_id=True))
        msg = await asyncio.to_thread(node.recv, 2.0)
        assert msg is not None
        nack = P.decode(msg.arbitration_id, msg.data)
        assert (nack.name, nack.source, (msg.arbitration_id >> 8) & 0xFF) == \
            ("Acknowledgement", STATION_SA, 0xFF)
        assert nack.signals["AckAddress"] == rack_sa(4)
        assert nack.signals["AckPgn"] == P.pgn_of("PackControl")
    finally:
        node.shutdown()


async def test_nacks_both_ways_over_udp_multicast(can_port: int) -> None:
    model = StationModel(SimConfig(vehicles=0))
    cfg = CanConfig(interface="udp_multicast", channel="239.74.163.2", udp_port=can_port)
    w = await open_wire(cfg, model, port=can_port)
    task = asyncio.create_task(w.bus.run())
    try:
        await wait_until(lambda: w.bus.is_open)
        await w.packs.start()
        w.bus.send("Request", {"RequestedPgn": 0x1234}, da=rack_sa(1))
        await wait_until(lambda: w.bus.stats["nacks_received"] == 1)
        assert w.commander.refusals == {(rack_sa(1), 0x1234): 1}
        assert w.bus.stats["nacks_sent"] == 0  # its own Request's echo is no Request to it
    finally:
        await w.packs.stop()
        await w.bus.close()
        await asyncio.wait_for(task, 2)


# ------------------------------------------------- 18: the station's PackControl


async def test_the_commanders_frames_are_never_a_gap_or_a_duplicate_to_a_pack(
    wire: Wire,
) -> None:
    """What the station sends is what the packs' side expects: every frame acted on, in
    order, the limits of each the grant in force."""
    await wire.packs.start()
    loc = Location.rack(1)
    pack = wire.model.rack[1]
    assert pack is not None
    kinds = [PackCommandKind.CHARGE_ENABLE, PackCommandKind.CHARGE_DISABLE,
             PackCommandKind.ISOLATE, PackCommandKind.CLEAR_ISOLATION]
    sent = 0
    for i in range(300):  # through the wrap after 250
        kind = kinds[i % 4] if i < 8 else PackCommandKind.CHARGE_ENABLE
        wire.commander.send(PackCommand(loc, kind, 10.0 + i % 7, 400.0))
        sent += 1
        if i % 50 == 0:  # let the packs' side keep up (the virtual bus queues)
            await wait_until(lambda n=sent: wire.packs.controls == n)  # type: ignore[misc]
    await wait_until(lambda: wire.packs.controls == sent)
    assert (pack.control_gaps, pack.control_duplicates, pack.control_ignored) == (0, 0, 0)
    assert pack.charge_enabled and pack.charge_current_limit_a == pytest.approx(10.0 + 299 % 7)
    assert pack.control_counter == 299 % 251


# ------------------------------------------------- whole swaps, no start-up burst


@pytest.mark.parametrize("plc", ["modbus"])
@pytest.mark.parametrize("station", [{"vehicles": 2, "speed": 50}], indirect=True)
async def test_swaps_complete_with_packs_that_send_no_start_up_burst(
    station: Station,
) -> None:
    """Every rack pack (each one goes into a car, whose electronics wake it after LOCK)
    sends nothing as it wakes: the station identifies each by Request, and the swaps
    complete."""
    for pack in station.sim.model.rack.values():
        if pack is not None:
            pack.startup_burst = False
    await station.wait_for(lambda: len(station.ended()) == 2 or any(
        e["outcome"] != "completed" for e in station.ended()), timeout=90)
    assert [e["outcome"] for e in station.ended()] == ["completed", "completed"], \
        station.daemon.core.reason
