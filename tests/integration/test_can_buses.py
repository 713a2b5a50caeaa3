"""Several CAN buses end to end (issue 11): the simulator and swapd on two buses (the bay's
and the rack's), real frames over python-can `virtual` (and udp_multicast for the swapd
process); a pack on the wrong bus, error-passive, bus-off and a babbling node injected by
the simulator; the per-bus counters in `swapctl status --json`."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from station.image import BAY, Location, PackData
from station.packml import Cmd, State
from station.rig import ProcessRig, Rig, bay_and_rack

pytestmark = pytest.mark.timeout(120)

WAIT_S = 30.0
RACK = Location.rack(1)


def fresh(rig: Rig, loc: Location) -> bool:
    d = rig.daemon
    rep = d.image.packs.get(loc)
    return rep is not None and d.image.fresh(rep, PackData.STATUS, d.clock())


def alarms(rig: Rig, name: str) -> list[dict[str, Any]]:
    return [e.data for e in rig.events if e.kind == "alarm" and e.data["alarm"] == name]


def two_bus_rig(tmp_path: Path, **kw: Any) -> Rig:
    kw.setdefault("speed", 50.0)
    kw.setdefault("vehicles", 1)
    return Rig(workdir=tmp_path, name="buses", plc="modbus", can_buses=bay_and_rack(), **kw)


async def test_a_swap_over_two_buses_each_pack_on_its_own(tmp_path: Path) -> None:
    async with two_bus_rig(tmp_path) as rig:
        await rig.wait_for(lambda: rig.ended(), 60, what="the swap")
        assert rig.ended()[0]["outcome"] == "completed", rig.ended()
        can = rig.daemon.status()["can"]
        assert set(can) == {"bay", "rack"}
        for name, bus in can.items():
            assert bus["state"] == "active", (name, bus)
            assert bus["received"] > 0 and bus["decoded"] > 0, (name, bus)
            assert bus["rejected"] == {}, (name, bus)  # every pack on its own bus
            assert bus["sent"] > 0, (name, bus)  # Requests, PackControl
        sim = rig.sim.can
        assert sim.bus_sent["bay"] > 0 and sim.bus_sent["rack"] > 0
        # the rack packs are charged: PackControl reached them on the rack's bus only
        assert sim.controls > 0
        assert rig.sim.observer.violations == []


async def test_a_pack_on_the_wrong_bus_is_rejected_and_counted(tmp_path: Path) -> None:
    async with two_bus_rig(tmp_path, vehicles=0) as rig:
        d = rig.daemon
        await rig.wait_for(lambda: fresh(rig, RACK) and fresh(rig, Location.rack(2)), WAIT_S,
                           what="the rack packs heard")
        rig.sim.faults.set("can_wrong_bus", target=1)  # slot 1's pack wired to the bay bus
        await rig.wait_for(lambda: d.buses["bay"].stats["wrong_bus"] >= 5, WAIT_S,
                           what="wrong_bus rejections on the bay bus")
        await rig.wait_for(lambda: not fresh(rig, RACK), WAIT_S, what="slot 1 stale")
        assert fresh(rig, Location.rack(2))  # its neighbours on the right bus are not
        can = d.status()["can"]
        assert can["bay"]["rejected"]["wrong_bus"] >= 5 and "wrong_bus" not in \
            can["rack"]["rejected"]
        assert d.buses["rack"].stats["wrong_bus"] == 0
        rig.sim.faults.clear("can_wrong_bus")
        await rig.wait_for(lambda: fresh(rig, RACK), WAIT_S, what="slot 1 heard again")


async def test_error_passive_raises_an_alarm_and_recovers(tmp_path: Path) -> None:
    async with two_bus_rig(tmp_path, vehicles=0) as rig:
        d = rig.daemon
        await rig.wait_for(lambda: fresh(rig, RACK), WAIT_S, what="the rack packs heard")
        rig.sim.faults.set("can_error_passive", target="rack")
        await rig.wait_for(lambda: alarms(rig, "can_error_passive"), WAIT_S,
                           what="the can_error_passive alarm")
        alarm = alarms(rig, "can_error_passive")[0]
        assert alarm["location"] == "can:rack" and "error passive" in alarm["reason"]
        rack = d.status()["can"]["rack"]
        assert rack["state"] == "passive" and rack["error_passive"] == 1
        assert rack["errors"]["crtl"] >= 1
        assert d.status()["can"]["bay"]["state"] == "active"
        assert fresh(rig, RACK)  # an error-passive bus still carries frames
        await asyncio.sleep(0.3)  # more error frames: still one alarm
        assert len(alarms(rig, "can_error_passive")) == 1
        rig.sim.faults.clear("can_error_passive")
        await rig.wait_for(lambda: d.buses["rack"].state == "active", WAIT_S,
                           what="error active again")


async def test_a_bus_that_goes_down_makes_its_packs_stale_at_once(tmp_path: Path) -> None:
    """The daemon's own reaction, without waiting for any timeout: the moment the rack bus
    reports bus-off, every rack pack is stale and the bay's is not."""
    async with two_bus_rig(tmp_path, vehicles=0) as rig:
        d = rig.daemon
        rack_slots = [Location.rack(s) for s in range(1, 13)]  # slot 13 is empty
        await rig.wait_for(lambda: all(fresh(rig, loc) for loc in rack_slots), WAIT_S,
                           what="the rack packs heard")
        d.buses["rack"]._set_state("bus_off", "test")  # as an error frame would
        # no await since: no frame, no timeout could have made them stale meanwhile
        assert not any(fresh(rig, loc) for loc in rack_slots)


async def test_bus_off_alarms_reopens_and_trips_the_silent_pack_interlock(
        tmp_path: Path) -> None:
    # a pack is judged silent after 1 s real: the steps must last longer than that
    async with two_bus_rig(tmp_path, speed=5.0,
                           config={"operation": {"auto_start": False}}) as rig:
        d, core = rig.daemon, rig.core
        await rig.wait_for(lambda: core.ready_to_start, WAIT_S, what="a vehicle")
        await rig.daemon.command(Cmd.START, origin="test")
        await rig.wait_for(lambda: core.step is not None and core.step.name == "position",
                           WAIT_S, what="position")
        rig.sim.faults.set("can_bus_off", target="bay")
        await rig.wait_for(lambda: core.state == State.ABORTED, WAIT_S, what="Aborted")
        await rig.wait_for(lambda: any(e.kind == "fault" for e in rig.events), WAIT_S,
                           what="the fault event")
        fault = next(e.data for e in rig.events if e.kind == "fault")
        assert fault["code"] == "pack_silent", fault
        await rig.wait_for(lambda: alarms(rig, "can_bus_off"), WAIT_S, what="the alarm")
        assert alarms(rig, "can_bus_off")[0]["location"] == "can:bay"
        bay = d.buses["bay"]
        # bus-off again after every reopen while the fault lasts: closed and reopened
        await rig.wait_for(lambda: bay.stats["bus_off"] >= 2 and bay.stats["opens"] >= 2,
                           WAIT_S, what="a reopen after bus-off")
        assert len(alarms(rig, "can_bus_off")) == 1  # once, until the bus is back
        assert not fresh(rig, BAY)
        assert fresh(rig, RACK)  # the rack's bus is fine
        assert d.status()["can"]["bay"]["bus_off"] >= 2
        rig.sim.faults.clear("can_bus_off")
        await rig.wait_for(lambda: bay.state == "active" and fresh(rig, BAY), WAIT_S,
                           what="the bay heard again")
        assert rig.sim.observer.violations == []


@pytest.mark.parametrize("interface", ["virtual", "udp_multicast"])
async def test_a_babbling_node_starves_neither_the_scan_nor_the_other_bus(
        tmp_path: Path, interface: str) -> None:
    """virtual: a reader thread hands each frame to the loop; udp_multicast: the loop reads
    the socket itself, at most DRAIN_LIMIT frames per wake-up."""
    async with two_bus_rig(tmp_path, config={"operation": {"auto_start": False}},
                           can=interface) as rig:
        d, core = rig.daemon, rig.core
        await rig.wait_for(lambda: core.ready_to_start, WAIT_S, what="a vehicle")
        rig.sim.faults.set("can_babble", value=3000, target="rack")
        await rig.wait_for(lambda: d.buses["rack"].stats["unknown_id"] > 500, WAIT_S,
                           what="the babble reaching swapd")
        await rig.daemon.command(Cmd.START, origin="test")
        stale_bay: list[float] = []

        limit = d.image.pack_timeouts.of(PackData.STATUS)

        async def watch() -> None:  # the bay pack, once the simulator says it talks
            since: float | None = None
            while True:
                now = d.clock()
                talking = 0xF4 in rig.sim.model.can_packs()
                since = (since or now) if talking else None
                rep = d.image.packs.get(BAY)
                if since is not None and now - since > limit and rep is not None and \
                        not d.image.fresh(rep, PackData.STATUS, now):
                    stale_bay.append(now - since)
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        try:
            await rig.wait_for(lambda: rig.ended(), 60, what="the swap")
        finally:
            watcher.cancel()
        assert rig.ended()[0]["outcome"] == "completed", rig.ended()
        assert not [e for e in rig.events if e.kind == "fault"]
        assert stale_bay == []
        rack, bay = d.status()["can"]["rack"], d.status()["can"]["bay"]
        assert rack["rejected"]["unknown_id"] > 1000 and rack["rejected"]["not_extended"] > 0
        assert bay["rejected"] == {}
        assert rig.sim.can.babble_sent["rack"] > 1000
        rig.sim.faults.clear("can_babble")


async def test_swapctl_status_json_shows_the_counters_per_bus(tmp_path: Path) -> None:
    async with ProcessRig(speed=50.0, vehicles=0, workdir=tmp_path, name="ctl", plc="modbus",
                          can_buses=bay_and_rack()) as rig:
        st = await rig.daemon.status()
        await asyncio.sleep(0)

        async def swapctl(*args: str) -> str:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "station.swapctl", "--socket", str(rig.daemon.socket),
                *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 20)
            assert proc.returncode == 0, err.decode()
            return out.decode()

        loop = asyncio.get_running_loop()
        end = loop.time() + WAIT_S
        while True:
            st = json.loads(await swapctl("status", "--json"))
            can = st["can"]
            if all(can[b]["decoded"] > 0 for b in ("bay", "rack")) or loop.time() > end:
                break
            await asyncio.sleep(0.1)
        assert set(can) == {"bay", "rack"}
        for bus in can.values():
            assert bus["state"] == "active" and bus["interface"] == "udp_multicast"
            assert {"received", "decoded", "rejected", "sent", "errors", "error_frames",
                    "bus_errors", "send_errors"} <= set(bus)
        assert can["rack"]["decoded"] > 0 and can["rack"]["sent"] > 0
        text = await swapctl("status")
        assert "can bay:" in text and "can rack:" in text and "decoded" in text


async def test_a_bus_that_goes_bus_off_at_every_reopen_backs_off_further() -> None:
    """Bus-off closes the bus; it is reopened after the back-off, which doubles while the
    bus goes bus-off again soon after each reopen (the clock stands still here: every
    session is short) and never passes backoff_max."""
    import uuid

    import can

    from drivers.bms.canbus import PackBus
    from drivers.bms.protocol import PackProtocol

    channel = f"busoff-{uuid.uuid4().hex}"
    peer = can.Bus(interface="virtual", channel=channel)
    bus = PackBus("virtual", channel, PackProtocol(), name="rack", clock=lambda: 100.0,
                  backoff_min=0.01, backoff_max=0.04)
    waits: list[float] = []
    states: list[str] = []

    def on_state(state: str, detail: str) -> None:
        states.append(state)
        if state == "active":  # opened: the controller goes bus-off at once
            waits.append(bus.retry_s)
            peer.send(can.Message(arbitration_id=0x40, data=bytes(8), is_error_frame=True))

    bus.on_state = on_state
    task = asyncio.create_task(bus.run())
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + WAIT_S
        while len(waits) < 6 and loop.time() < end:
            await asyncio.sleep(0.01)
    finally:
        await bus.close()
        await asyncio.wait_for(task, 5)
        peer.shutdown()
    assert waits[:6] == [0.0, 0.01, 0.02, 0.04, 0.04, 0.04], waits
    assert states[:4] == ["active", "bus_off", "active", "bus_off"]
    assert bus.stats["bus_off"] >= 5 and bus.stats["opens"] >= 6


async def test_a_bus_that_cannot_be_opened_is_down_with_an_alarm(tmp_path: Path) -> None:
    """The rack's bus on a SocketCAN interface that does not exist (here: no SocketCAN at
    all): can_bus_down once, the bus closed in the status, its packs never counted; the
    bay's bus works."""
    from station.config import StationConfig

    def rack_on_nothing(cfg: StationConfig) -> StationConfig:
        assert cfg.can.buses is not None
        buses = [b.model_copy(update={"interface": "socketcan", "channel": "nocan9",
                                      "udp_port": None}) if b.name == "rack" else b
                 for b in cfg.can.buses]
        return cfg.model_copy(update={"can": cfg.can.model_copy(update={"buses": buses})})

    async with two_bus_rig(tmp_path, vehicles=0, config=rack_on_nothing) as rig:
        d = rig.daemon
        await rig.wait_for(lambda: alarms(rig, "can_bus_down"), WAIT_S, what="the alarm")
        alarm = alarms(rig, "can_bus_down")[0]
        assert alarm["location"] == "can:rack" and "nocan9" in alarm["reason"]
        await rig.wait_for(lambda: d.buses["rack"].stats["bus_errors"] >= 3, WAIT_S,
                           what="reopen attempts")
        assert len(alarms(rig, "can_bus_down")) == 1
        can = d.status()["can"]
        assert can["rack"]["state"] == "closed" and can["bay"]["state"] == "active"
        assert not fresh(rig, RACK)
        assert can["bay"]["received"] > 0
