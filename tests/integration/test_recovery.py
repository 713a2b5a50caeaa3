"""Issue 10, back to service: for an abort at every step of the swap sequence, early in the
step and late in it, maintenance mode's guided recovery (`recover --next` until the machine
is home) returns the station to Idle, and the car is then swapped normally, with every pack
where swapd's ledger says (the simulator's truth) and no observer violation.

Over real Modbus TCP and CAN (the in-process Rig), driven through the one command entry
the operator's swapctl uses (station/commands.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from station.commands import CommandRequest, CommandResult, Origin
from station.packml import State
from station.rig import Rig
from station.sequence import SEQUENCE

SPEED = 100.0
WAIT_S = 20.0
pytestmark = pytest.mark.timeout(120)


async def submit(rig: Rig, word: str, **args: Any) -> CommandResult:
    return await rig.daemon.submit(CommandRequest(word, Origin.LOCAL, "test", args=args))


async def ok(rig: Rig, word: str, **args: Any) -> CommandResult:
    r = await submit(rig, word, **args)
    assert r.accepted, (word, r.reason)
    return r


def truth_ledger(truth: dict[str, Any]) -> dict[str, int | None]:
    """Where the simulator says every pack is, in the ledger's words."""
    out: dict[str, int | None] = {}
    for name in ("vehicle_bay", "shuttle", "stacker"):
        if truth[name] is not None:
            out[name.replace("_", " ")] = truth[name]
    for slot, serial in sorted(truth["rack"].items()):
        if serial is not None:
            out[f"slot {slot}"] = serial
    return out


async def ledger_matches(rig: Rig) -> None:
    await rig.wait_for(lambda: rig.core.maintenance.ledger() == truth_ledger(rig.sim.truth()),
                       WAIT_S, what=f"swapd's ledger {rig.core.maintenance.ledger()} to show "
                       f"the truth {truth_ledger(rig.sim.truth())}")


NOT_AT_REST = "not at rest yet"


async def recover(rig: Rig) -> CommandResult:
    """`recover`, asked again while it is refused because the PLC's read-back does not yet
    show the machine at rest after the stop (as an operator would)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        r = await submit(rig, "recover")
        if r.accepted or NOT_AT_REST not in (r.reason or "") or time.monotonic() > deadline:
            return r
        await asyncio.sleep(0.01)


async def recover_until_home(rig: Rig, max_steps: int = 10) -> list[str]:
    """`swapctl recover --next` until it says the machine is home; the commands run."""
    core = rig.core
    ran: list[str] = []
    for _ in range(max_steps):
        r = await recover(rig)
        if r.code == "nothing_to_do":
            return ran
        assert r.accepted, (r.reason, core.recovery_view())
        assert r.result is not None
        seq = r.result["seq"]
        ran.append(f"{r.result['command']} {r.result['param']}")
        await rig.wait_for(lambda seq=seq: core.maintenance.run.seq == seq
                           and core.maintenance.run.state != "running", WAIT_S,
                           what=f"{ran[-1]} to end")
        run = core.maintenance.run
        assert run.state == "done", (ran, run.as_dict())
    raise AssertionError(f"not home after {ran}: {core.recovery_view()}")


async def back_to_service(rig: Rig) -> None:
    core = rig.core
    await ok(rig, "unit_mode", mode="produce")
    if core.state == State.ABORTED:
        await ok(rig, "clear")
        await rig.wait_for(lambda: core.state == State.STOPPED, WAIT_S, what="Stopped")
    await rig.wait_for(lambda: core.state in (State.STOPPED, State.IDLE, State.COMPLETE)
                       and not str(core.status()["start_inhibited"] or "").startswith(
                           "machine away"), WAIT_S, what="home")
    if core.state in (State.STOPPED, State.COMPLETE):
        await ok(rig, "reset")
    await rig.wait_for(lambda: core.state in (State.IDLE, State.STARTING, State.EXECUTE),
                       WAIT_S, what="Idle")


# late in a step: a physical state part way, as the simulator's truth shows it
LATE = {
    "unlock": lambda t: 0 < t["bolts_tight"] < 10,  # some bolts loose
    "remove": lambda t: t["shuttle"] is not None and t["shuttle_mm"] > 50,  # pack on the
    # shuttle away from home
    "store": lambda t: t["stacker"] is not None,  # the car's pack on the stacker
    "fetch": lambda t: t["stacker"] is not None,  # the charged pack on the stacker
    "install": lambda t: t["shuttle"] is not None and t["shuttle_mm"] > 50,
    "lock": lambda t: 0 < t["bolts_tight"] < 10,  # some bolts tight
}
CASES = [(s.name, when) for s in SEQUENCE for when in ("early", "late")]


@pytest.mark.parametrize(("step", "when"), CASES, ids=[f"{s}-{w}" for s, w in CASES])
async def test_recovery_after_an_abort_then_a_normal_swap(step: str, when: str,
                                                          tmp_path: Path) -> None:
    async with Rig(speed=SPEED, vehicles=2, workdir=tmp_path, name="recovery") as rig:
        core, sim = rig.core, rig.sim
        duration = float(getattr(sim.config.timing, step)) / SPEED
        await rig.wait_for(lambda: core.step is not None and core.step.name == step, WAIT_S,
                           what=f"the swap's {step}")
        if when == "late" and step in LATE:
            await rig.wait_for(lambda: LATE[step](sim.truth()), WAIT_S, poll=0.001,
                               what=f"{step} part done in the simulator's truth")
        elif when == "late":
            await asyncio.sleep(0.7 * duration)
        await ok(rig, "abort")
        await rig.wait_for(lambda: core.state == State.ABORTED, WAIT_S, what="Aborted")
        await rig.wait_for(lambda: rig.ended(), WAIT_S, what="the swap's end, journaled")
        swaps_before = len(rig.ended())
        assert rig.ended()[-1]["outcome"] == "aborted", rig.ended()

        refused = await submit(rig, "recover")  # production: no recovery
        assert not refused.accepted and "production mode" in (refused.reason or "")
        await ok(rig, "unit_mode", mode="maintenance")
        ran = await recover_until_home(rig)
        assert core.status()["start_inhibited"] is None or not str(
            core.status()["start_inhibited"]).startswith("machine away"), ran
        await ledger_matches(rig)
        await back_to_service(rig)
        await rig.wait_for(lambda: len(rig.ended()) > swaps_before
                           and rig.ended()[-1]["outcome"] == "completed", 40.0,
                           what=f"a normal swap after recovery ({ran})")
        await rig.wait_for(lambda: core.state in (State.IDLE, State.COMPLETE,
                                                  State.RESETTING, State.EXECUTE), WAIT_S)
        await ledger_matches(rig)
        moved = [e.data for e in rig.events if e.kind == "pack_moved"]
        assert len(moved) == sum(len(e.data["moves"]) for e in rig.events
                                 if e.kind == "maintenance_started"
                                 and any(d.kind == "maintenance_done" and d.data["seq"]
                                         == e.data["seq"] for d in rig.events))
        assert sim.observer.violations == []
