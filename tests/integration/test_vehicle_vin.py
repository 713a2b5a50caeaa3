"""The car's VIN end to end: the simulated car's BMS sends J1939-71 Vehicle Identification as
a J1939-21 BAM, swapd's pack bus reassembles it and the adapter puts it in the image."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import can
import pytest

from drivers.bms import j1939_tp
from drivers.bms.canbus import PackBus
from drivers.bms.protocol import VEHICLE_PACK_SA, Decoded, PackProtocol, rack_sa
from station.rig import Rig
from tests.integration.polling import wait_until

pytestmark = pytest.mark.timeout(90)

PROTO = PackProtocol()
VIN = "LSJA24U61NG123456"
NO_AUTO_START = {"operation": {"auto_start": False}}


class FrameTimes:
    """Wraps the daemon's BAM receiver to note when each TP frame arrived (monotonic)."""

    def __init__(self, bus: PackBus) -> None:
        self.seen: list[tuple[int, int, float]] = []  # (tp pgn, source, t)
        feed = bus.tp.feed

        def noting(pgn: int, sa: int, da: int | None, data: bytes, t: float) -> Any:
            self.seen.append((pgn, sa, t))
            return feed(pgn, sa, da, data, t)

        bus.tp.feed = noting  # type: ignore[method-assign]

    def bams(self) -> list[list[float]]:
        """Arrival times of each BAM's frames, TP.CM first."""
        out: list[list[float]] = []
        for pgn, _, t in self.seen:
            if pgn == j1939_tp.TP_CM_PGN:
                out.append([t])
            elif out:
                out[-1].append(t)
        return [b for b in out if len(b) == 4]


def tp_drops(stats: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in stats.items()
            if k.startswith("tp_") and k not in ("tp_frames", "tp_completed") and v}


async def test_the_cars_vin_reaches_the_image_over_udp_multicast(tmp_path: Path) -> None:
    async with Rig(speed=20.0, vehicles=1, can="udp_multicast", workdir=tmp_path,
                   sim={"vins": [VIN]}, config=NO_AUTO_START, name="vin") as rig:
        daemon = rig.daemon
        times = FrameTimes(daemon.bus)
        before = time.monotonic()
        await rig.wait_for(lambda: daemon.image.vehicle_vin is not None, timeout=20,
                           what="the VIN in the image")
        assert daemon.image.vehicle_vin == VIN == rig.sim.model.vehicle.vin
        assert before - 5 < daemon.image.vehicle_vin_at <= time.monotonic()
        assert daemon.adapter.stats["vin_applied"] >= 1
        assert daemon.bus.stats["tp_completed"] >= 1
        # A BAM under way when swapd opened the bus is dropped (its packets without their
        # announcement); from the first whole one on, none may be.
        dropped_at_start = tp_drops(daemon.bus.stats)
        assert set(dropped_at_start) <= {"tp_no_session"}, dropped_at_start
        # heard again every 5 s / 20 = 250 ms while the car is there
        first = daemon.image.vehicle_vin_at
        await rig.wait_for(lambda: daemon.image.vehicle_vin_at > first + 0.2, timeout=5,
                           what="the VIN heard again")
        await rig.wait_for(lambda: len(times.bams()) >= 3, timeout=5, what="three BAMs")
        assert tp_drops(daemon.bus.stats) == dropped_at_start
        for key in ("vin_invalid", "vin_wrong_address", "vin_no_vehicle"):
            assert daemon.adapter.stats[key] == 0, key
        # the timing as swapd received it: packets sent 10 ms apart (speed 20), BAMs 250 ms;
        # arrival times jitter (a packet read late shortens the next gap), so only what the
        # receiver needs is checked: every packet within T1 of the one before
        bams = times.bams()
        gaps = [b - a for bam in bams for a, b in itertools.pairwise(bam)]
        assert max(gaps) < j1939_tp.T1_S, gaps
        starts = [bam[0] for bam in bams]
        periods = [b - a for a, b in itertools.pairwise(starts)]
        assert all(0.2 < p < 0.5 for p in periods), periods
        print(f"\nBAM as received, speed 20: packet gaps {min(gaps) * 1000:.1f}-"
              f"{max(gaps) * 1000:.1f} ms, BAM {min(b[-1] - b[0] for b in bams) * 1000:.1f}-"
              f"{max(b[-1] - b[0] for b in bams) * 1000:.1f} ms, period "
              f"{min(periods) * 1000:.0f}-{max(periods) * 1000:.0f} ms")


async def test_a_vin_from_another_address_is_dropped(tmp_path: Path) -> None:
    """The same BAM from a rack slot's address reaches swapd whole and is not believed."""
    async with Rig(speed=20.0, vehicles=1, can="udp_multicast", workdir=tmp_path,
                   sim={"vins": [VIN], "vin_broadcast": False}, config=NO_AUTO_START,
                   name="vin-foreign") as rig:
        daemon, sim = rig.daemon, rig.sim
        await rig.wait_for(lambda: bool(daemon.image.plc.get("vehicle_token")), timeout=20,
                           what="the car on the platform, as the PLC shows it")
        sim.vehicle_vin(send=True, source_address=rack_sa(1))
        await rig.wait_for(lambda: daemon.adapter.stats["vin_wrong_address"] >= 2, timeout=10,
                           what="the foreign VI dropped")
        assert daemon.image.vehicle_vin is None and daemon.image.vehicle_vin_at is None
        assert daemon.bus.stats["tp_completed"] >= 2 and tp_drops(daemon.bus.stats) == {}
        assert daemon.adapter.stats["vin_applied"] == 0
        # the same car from the bay's address: believed (the drop was the address)
        sim.vehicle_vin(source_address=None)
        await rig.wait_for(lambda: daemon.image.vehicle_vin == VIN, timeout=10,
                           what="the VIN from the bay")


async def test_a_car_that_sends_no_vin(tmp_path: Path) -> None:
    async with Rig(speed=20.0, vehicles=1, can="virtual", workdir=tmp_path,
                   sim={"vin_broadcast": False}, config=NO_AUTO_START,
                   name="no-vin") as rig:
        daemon, sim = rig.daemon, rig.sim
        await rig.wait_for(lambda: sim.model.vehicle is not None and sim.model.vehicle.ready
                           and daemon.image.packs, timeout=20, what="the car identified")
        await asyncio.sleep(0.5)  # two VI periods at speed 20
        assert daemon.image.vehicle_vin is None
        assert sim.can.vin_sent == 0  # no BAM; and asked by address (swapd does), no VI:
        assert sim.can.transport.stats["completed:VehicleIdentification"] == 0
        assert daemon.details.sent >= 1 and sim.can.nacks_sent >= 1  # it NACKs the Request


# ---- the pack bus itself, with BAMs made by hand (virtual bus) -------------------------

class BusRig:
    def __init__(self, bus: PackBus, peer: can.BusABC) -> None:
        self.bus, self.peer = bus, peer
        self.messages: list[Decoded] = []
        self.rejects: list[str] = []
        bus.on_message = lambda d, t: self.messages.append(d)
        bus.on_reject = lambda kind, i, data: self.rejects.append(kind)

    def send(self, frames: list[tuple[int, bytes]]) -> None:
        for can_id, data in frames:
            self.peer.send(can.Message(arbitration_id=can_id, data=data, is_extended_id=True))



@pytest.fixture
async def bus_rig() -> AsyncIterator[BusRig]:
    channel = f"vin-{uuid.uuid4().hex}"
    peer = can.Bus(interface="virtual", channel=channel)
    bus = PackBus("virtual", channel, PROTO)
    task = asyncio.create_task(bus.run())
    await wait_until(lambda: bus.is_open)
    yield BusRig(bus, peer)
    await bus.close()
    await asyncio.wait_for(task, 2)
    peer.shutdown()


def vi_frames(vin: str = VIN, sa: int = VEHICLE_PACK_SA) -> list[tuple[int, bytes]]:
    return PROTO.encode_frames("VehicleIdentification", {"Vin": vin, "VinDelimiter": 42}, sa)


async def test_the_pack_bus_reassembles_a_bam(bus_rig: BusRig) -> None:
    bus_rig.send(vi_frames())
    await wait_until(lambda: len(bus_rig.messages) == 1)
    msg = bus_rig.messages[0]
    assert (msg.name, msg.source, msg.signals["Vin"]) == \
        ("VehicleIdentification", VEHICLE_PACK_SA, VIN)
    st = bus_rig.bus.stats
    assert st["tp_frames"] == 4 and st["tp_completed"] == 1 and st["decoded"] == 1


async def test_the_pack_bus_drops_and_counts_a_broken_bam(bus_rig: BusRig) -> None:
    frames = vi_frames()
    bus_rig.send([frames[0], frames[1], frames[3]])  # packet 2 lost
    bus_rig.send(frames[2:3])  # late, and after the transfer was dropped
    cm = frames[0]
    one_frame_vi = (0x18FEECF4, VIN.encode()[:8])  # a VI that is no BAM
    bus_rig.send([one_frame_vi])
    await wait_until(lambda: bus_rig.bus.stats["bad_length"] == 1)
    st = bus_rig.bus.stats
    assert st["tp_bad_sequence"] == 1 and st["tp_no_session"] == 1
    assert bus_rig.messages == [] and bus_rig.rejects == ["bad_length"]
    # T1: a TP.CM, then silence for longer than 750 ms
    bus_rig.send([cm])
    await asyncio.sleep(j1939_tp.T1_S + 0.1)
    bus_rig.send(vi_frames(sa=rack_sa(1)))  # any frame: the stale transfer is dropped
    await wait_until(lambda: len(bus_rig.messages) == 1)
    assert bus_rig.bus.stats["tp_timeout"] == 1
    assert bus_rig.messages[0].source == rack_sa(1)  # the bus delivers; the adapter judges
