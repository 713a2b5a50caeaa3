"""The station over SocketCAN on a real vcan0, in two processes: the simulated station
(its packs' BMS on vcan0, its PLC over Modbus TCP on loopback) in this process, swapd in
its own (`ProcessRig`), configured as on a bench (`[can] interface = "socketcan"`,
`channel = "vcan0"`). A whole swap completes; the interlocks that come from CAN (a pack's
over-temperature, a silent pack) trip.

Speeds and timing are chosen for the VM, where Python runs 10-20x slower than on a host
and the one emulated CPU is shared by both processes (and by a host that may be busy):
the PLC is polled every 100 ms (not 10; stale after 0.5 s, which the PLC contract caps),
and the limits that judge a process too slow rather than the CAN path under test get
slack: the sim PLC's heartbeat timeout 3 s (not 1), a pack silent after 2 s (not 1). The
interlock cases run at 5x so that the steps where the car's pack must talk outlast 2 s."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from station.rig import ProcessRig
from tests.vcan.support import needs_vcan1

pytestmark = [pytest.mark.vcan, pytest.mark.timeout(240)]

CAN = {"interface": "socketcan", "channel": "vcan0", "udp_port": None}
SWAP_SPEED = 10.0  # a swap (144 simulated s) in ~15 s of real time
INTERLOCK_SPEED = 5.0  # pack_silent_s is 1 s real: a step must last longer
POLL_S = 0.1
# 3 rack slots (2 packs, one free), not 13: each pack sends ~23 frames/s, and 14 of them
# keep the VM's one CPU too busy to read the PLC within its 0.5 s staleness limit
SLOTS = 3
START_S = 120.0  # swapd's start in the VM (imports over 9p): bounds a failure only
WAIT_S = 90.0


SLACK_CONFIG = {"interlocks": {"pack_silent_s": 2.0}}
SLACK_SIM = {"ctrl_heartbeat_timeout_s": 3.0, "station": {"slots": SLOTS}}


def vcan_rig(tmp_path: Path, speed: float, name: str, *, can: dict[str, Any] | None = None,
             sim_can: dict[str, Any] | None = None) -> ProcessRig:
    return ProcessRig(speed=speed, vehicles=1, poll_period_s=POLL_S, workdir=tmp_path,
                      name=name, plc="modbus", sim={**SLACK_SIM, "can": sim_can or CAN},
                      config={**SLACK_CONFIG, "can": can or CAN})


def starved(st: dict[str, Any]) -> str:
    """A hint when the VM, not the code, was too slow: the PLC staleness limit (0.5 s, the
    contract's cap) is the first to trip when the host gives the VM less than a core."""
    if "plc_inputs_stale" in (st.get("reason") or ""):
        return (" [plc_inputs_stale: the VM could not keep up with the PLC poll; the tier "
                "needs a host core to itself (is the host busy?)]")
    return ""


async def wait_status(rig: ProcessRig, pred: Callable[[dict[str, Any]], bool], what: str,
                      timeout: float = WAIT_S) -> dict[str, Any]:
    """Poll swapd's status over its socket until pred(status); fail with the last one."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    st = await rig.daemon.status(timeout=START_S)
    while not pred(st):
        assert st["packml_state"] != "Aborted", (f"aborted waiting for {what}{starved(st)}: "
                                                 f"{st}; swapd's log ends:\n"
                                                 f"{rig.daemon.log_tail(2000)}")
        assert loop.time() < end, (f"timed out waiting for {what}; status {st}; swapd's "
                                   f"log ends:\n{rig.daemon.log_tail(2000)}")
        await asyncio.sleep(0.1)
        st = await rig.daemon.status(timeout=START_S)
    return st


def completed_visits(rig: ProcessRig) -> int:
    return sum(1 for v in rig.sim.truth()["history"] if v.get("pack_in"))


def journal_rows(rig: ProcessRig, sql: str) -> list[sqlite3.Row]:
    db = sqlite3.connect(f"file:{rig.journal_path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


async def swap_outcomes(rig: ProcessRig, what: str) -> list[str]:
    """The journal's swap outcomes once every swap in it has ended (the simulator sees the
    new pack in before swapd has lowered the car and journaled the end)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + WAIT_S
    while True:
        outcomes = [r["outcome"] for r in journal_rows(rig, "SELECT outcome FROM swaps")]
        if outcomes and None not in outcomes:
            return outcomes
        st = await rig.daemon.status()
        assert st["packml_state"] not in ("Aborted", "Held", "Stopped"), \
            f"{starved(st)} {st}; swapd's log ends:\n{rig.daemon.log_tail(2000)}"
        assert loop.time() < end, f"timed out waiting for {what}; status {st}"
        await asyncio.sleep(0.2)


async def one_swap_completed(rig: ProcessRig) -> None:
    outcomes = await swap_outcomes(rig, "the swap to end")
    if outcomes != ["completed"]:
        st = await rig.daemon.status()
        pytest.fail(f"swaps {outcomes}{starved(st)}: {st}; swapd's log ends:\n"
                    f"{rig.daemon.log_tail(2000)}", pytrace=False)
    assert completed_visits(rig) == 1  # the simulator's car drove off with a new pack


async def swapctl_status(socket: Path) -> dict[str, Any]:
    """`swapctl --socket S status --json`, as an operator would run it. Niced: in the VM
    its start (imports) would otherwise take the one CPU from swapd for seconds, long
    enough for the PLC inputs to go stale."""
    proc = await asyncio.create_subprocess_exec(
        "nice", "-n", "19", sys.executable, "-m", "station.swapctl",
        "--socket", str(socket), "status", "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), START_S)
    assert proc.returncode == 0, err.decode()
    return dict(json.loads(out))


def check_can_counters(status: dict[str, Any]) -> None:
    """swapd read the packs over socketcan on vcan0 (per-bus counters, where reported)."""
    buses = status.get("can")
    if not buses:
        return
    bus = next(iter(buses.values()))
    assert bus.get("interface", "socketcan") == "socketcan", buses
    assert bus.get("channel", "vcan0") == "vcan0", buses
    assert bus.get("decoded", 1) > 0, buses


async def test_whole_swap_two_processes_on_vcan0(tmp_path: Path) -> None:
    async with vcan_rig(tmp_path, SWAP_SPEED, "vcan-swap") as rig:
        await wait_status(rig, lambda st: st["packml_state"] == "Execute", "a swap to start")
        await one_swap_completed(rig)
        assert (await rig.daemon.status())["active_interlocks"] == []
        status = await swapctl_status(rig.daemon.socket)
        assert status["packml_state"] in ("Idle", "Complete", "Resetting"), status
        check_can_counters(status)
        assert rig.sim.observer.violations == []


def two_buses(sim: bool) -> dict[str, Any]:
    """The bay's car on vcan0, the rack on vcan1 (`deploy/vcan0.sh vcan0 vcan1`): `[can]`
    (or `[sim.can]`) as a `buses` list, its single-bus keys left unset."""
    buses = [{"name": "bay", "interface": "socketcan", "channel": "vcan0",
              "locations": ["bay"]},
             {"name": "rack", "interface": "socketcan", "channel": "vcan1",
              "locations": [f"slot:1-{SLOTS}"]}]
    if sim:  # the simulator's single-bus keys at their defaults
        return {"buses": buses, "interface": "virtual", "channel": "swapstation",
                "udp_port": None, "bitrate": None}
    return {"buses": buses, "interface": None, "channel": None, "udp_port": None,
            "bitrate": None}


@needs_vcan1
async def test_whole_swap_on_two_buses_vcan0_vcan1(tmp_path: Path) -> None:
    """The car's pack on one bus, the rack's on another: the swap moves a pack from the
    rack bus into the car on the bay bus, and swapd counts both buses' frames."""
    async with vcan_rig(tmp_path, SWAP_SPEED, "vcan-two", can=two_buses(False),
                        sim_can=two_buses(True)) as rig:
        await wait_status(rig, lambda st: st["packml_state"] == "Execute", "a swap to start")
        await one_swap_completed(rig)
        st = await rig.daemon.status()
        assert set(st["can"]) == {"bay", "rack"}, st["can"]
        assert {b["channel"] for b in st["can"].values()} == {"vcan0", "vcan1"}
        assert all(b["decoded"] > 0 for b in st["can"].values()), st["can"]
        assert rig.sim.observer.violations == []


async def _trip(tmp_path: Path, fault: str, value: Any, interlock: str,
                target: str = "vehicle") -> dict[str, Any]:
    """Inject `fault` (on the car's pack) while the car's pack is in use (position, lift,
    unlock); the swap aborts with `interlock`, journaled. Returns swapd's status then."""
    async with vcan_rig(tmp_path, INTERLOCK_SPEED, f"vcan-{interlock}") as rig:
        await wait_status(rig, lambda st: st["step"] in ("position", "lift"),
                          "the car to be positioned")
        rig.sim.faults.set(fault, value=value, target=target)
        st = await wait_status(rig, lambda st: st["packml_state"] == "Aborted",
                               f"{interlock} to abort the swap")
        assert (st["reason"] or "").startswith(f"interlock {interlock}"), f"{starved(st)} {st}"
        codes = [r["code"] for r in journal_rows(rig, "SELECT code FROM faults ORDER BY rowid")]
        assert next(c for c in codes if not c.startswith("alarm_")) == interlock, codes
        assert rig.sim.observer.violations == []
        return st


async def test_pack_over_temperature_on_vcan0_aborts(tmp_path: Path) -> None:
    await _trip(tmp_path, "pack_over_temp", 75, "pack_event_near_swap")


async def test_silent_pack_on_vcan0_aborts(tmp_path: Path) -> None:
    await _trip(tmp_path, "can_silent", None, "pack_silent")


async def test_bus_off_on_vcan0_stales_the_packs_and_aborts(tmp_path: Path) -> None:
    """The simulator's bus goes bus-off: its BUSOFF error frames come through the kernel
    to swapd's socket, which closes the bus; the packs on it are stale at once, so the car's
    pack trips pack_silent as a silent pack would (issue 11, bus faults)."""
    st = await _trip(tmp_path, "can_bus_off", None, "pack_silent", target="pack")
    bus = st["can"]["pack"]
    assert bus["bus_off"] >= 1 and bus["error_frames"] >= 1, bus
