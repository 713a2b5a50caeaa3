"""PackCommander: PackControl and J1939 Request frames on a python-can virtual bus."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import can
import pytest

from drivers.bms.adapter import BmsAdapter
from drivers.bms.canbus import PackBus
from drivers.bms.commander import REQUEST_REPEAT_S, PackCommander
from drivers.bms.protocol import STATION_SA, VEHICLE_PACK_SA, Decoded, PackProtocol, rack_sa
from station.image import BAY, Location, PackData
from station.pack_commands import PackCommand, PackCommandKind, PackRequest

pytestmark = pytest.mark.timeout(20)

P = PackProtocol()
COMMANDS = P.codes("PackControl", "ControlCommand")


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Rig:
    def __init__(self, commander: PackCommander, peer: can.BusABC, clock: FakeClock) -> None:
        self.commander = commander
        self.peer = peer
        self.clock = clock

    async def frames(self, n: int) -> list[Decoded]:
        out: list[Decoded] = []
        for _ in range(n):
            msg = await asyncio.to_thread(self.peer.recv, 2.0)
            assert msg is not None, f"only {len(out)} of {n} frames"
            assert msg.is_extended_id
            out.append(P.decode(msg.arbitration_id, msg.data))
        return out

    async def nothing_more(self) -> None:
        assert await asyncio.to_thread(self.peer.recv, 0.1) is None


async def wait_until_open(bus: PackBus) -> None:
    deadline = time.monotonic() + 5.0
    while not bus.is_open:
        assert time.monotonic() < deadline, "bus not opened"
        await asyncio.sleep(0.002)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    channel = f"commander-{uuid.uuid4().hex}"
    peer = can.Bus(interface="virtual", channel=channel)
    clock = FakeClock()
    bus = PackBus("virtual", channel, P, clock=clock)
    task = asyncio.create_task(bus.run())
    await wait_until_open(bus)
    yield Rig(PackCommander(bus, BmsAdapter(P), clock=clock), peer, clock)
    await bus.close()
    await asyncio.wait_for(task, 2)
    peer.shutdown()


async def test_send_encodes_pack_control_to_the_location(rig: Rig) -> None:
    rig.commander.send(PackCommand(Location.rack(2), PackCommandKind.CHARGE_ENABLE,
                                   current_limit_a=120.5, voltage_limit_v=453.6))
    rig.commander.send(PackCommand(BAY, PackCommandKind.ISOLATE))
    enable, isolate = await rig.frames(2)
    assert enable.name == "PackControl"
    assert enable.source == STATION_SA and enable.destination == rack_sa(2)
    assert enable.signals == pytest.approx({
        "ControlCommand": COMMANDS["charge_enable"], "ChargeCurrentLimit": 120.5,
        "ChargeVoltageLimit": 453.6, "ControlCounter": 0})
    assert isolate.destination == VEHICLE_PACK_SA
    assert isolate.signals == pytest.approx({
        "ControlCommand": COMMANDS["isolate"], "ChargeCurrentLimit": 0.0,
        "ChargeVoltageLimit": 0.0, "ControlCounter": 0})


@pytest.mark.parametrize("kind", list(PackCommandKind))
async def test_every_command_kind_is_sent_with_its_dbc_code(
    rig: Rig, kind: PackCommandKind
) -> None:
    rig.commander.send(PackCommand(Location.rack(1), kind))
    (frame,) = await rig.frames(1)
    assert P.choices("PackControl", "ControlCommand")[frame.signals["ControlCommand"]] == \
        kind.value


async def test_control_counter_counts_per_destination_and_wraps_after_250(rig: Rig) -> None:
    slot1 = PackCommand(Location.rack(1), PackCommandKind.CHARGE_DISABLE)
    for _ in range(252):
        rig.commander.send(slot1)
    rig.commander.send(PackCommand(BAY, PackCommandKind.CHARGE_DISABLE))
    rig.commander.send(slot1)
    frames = await rig.frames(254)
    to_slot1 = [int(f.signals["ControlCounter"]) for f in frames
                if f.destination == rack_sa(1)]
    assert to_slot1 == [*range(251), 0, 1]  # 253 frames: 0..250, then 0 again
    to_bay = [int(f.signals["ControlCounter"]) for f in frames
              if f.destination == VEHICLE_PACK_SA]
    assert to_bay == [0]  # its own counter
    assert rig.commander.counter_max == 250  # from the DBC's range


async def test_a_limit_outside_the_dbc_range_raises(rig: Rig) -> None:
    with pytest.raises(Exception, match="ChargeVoltageLimit"):
        rig.commander.send(PackCommand(BAY, PackCommandKind.CHARGE_ENABLE, 10.0, 9999.0))
    await rig.nothing_more()


async def test_request_each_kind_to_one_pack_or_all(rig: Rig) -> None:
    sent = rig.commander.request(PackRequest(None, (PackData.IDENTITY, PackData.HEALTH)))
    assert sent == 2
    sent = rig.commander.request(PackRequest(Location.rack(4), (PackData.LIMITS,)))
    assert sent == 1
    frames = await rig.frames(3)
    assert [f.name for f in frames] == ["Request"] * 3
    assert [(f.destination, f.signals["RequestedPgn"]) for f in frames] == [
        (0xFF, 0xFF10), (0xFF, 0xFF11), (rack_sa(4), 0xFF14)]
    assert all(f.source == STATION_SA for f in frames)


async def test_requests_are_rate_limited_per_destination_and_pgn(rig: Rig) -> None:
    c = rig.commander
    bay_identity = PackRequest(BAY, (PackData.IDENTITY,))
    assert c.request(bay_identity) == 1
    rig.clock.t += 0.1
    assert c.request(bay_identity) == 0  # the same again too soon
    # another PGN to the same pack, and the same PGN to another pack or to all, are not
    assert c.request(PackRequest(BAY, (PackData.IDENTITY, PackData.LIMITS))) == 1
    assert c.request(PackRequest(Location.rack(1), (PackData.IDENTITY,))) == 1
    assert c.request(PackRequest(None, (PackData.IDENTITY,))) == 1
    rig.clock.t += REQUEST_REPEAT_S - 0.1 - 1e-6
    assert c.request(bay_identity) == 0
    rig.clock.t += 2e-6
    assert c.request(bay_identity) == 1  # 0.5 s after the first
    assert c.request(bay_identity, now=rig.clock.t + 0.6) == 1  # an explicit time counts
    frames = await rig.frames(6)
    assert [(f.destination, f.signals["RequestedPgn"]) for f in frames] == [
        (VEHICLE_PACK_SA, 0xFF10), (VEHICLE_PACK_SA, 0xFF14), (rack_sa(1), 0xFF10),
        (0xFF, 0xFF10), (VEHICLE_PACK_SA, 0xFF10), (VEHICLE_PACK_SA, 0xFF10)]
    await rig.nothing_more()


async def test_a_kind_named_twice_is_requested_once(rig: Rig) -> None:
    assert rig.commander.request(PackRequest(BAY, (PackData.CELLS, PackData.CELLS))) == 1
    (frame,) = await rig.frames(1)
    assert frame.signals["RequestedPgn"] == P.pgn_of("PackCells")
    await rig.nothing_more()
