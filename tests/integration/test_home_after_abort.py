"""Issue 7, item 6, over real Modbus TCP and CAN: after an abort mid-swap that left the car
lifted with its bolts loose, reset is refused with a reason saying what is off, no swap
record is written and nothing is commanded (the soak's loop: an auto-start sent POSITION
to the lifted car, the PLC refused, the swap aborted, again and again). Once the technician
has brought the machine home by hand, clear+reset returns to Idle and the car's swap runs."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from station.core import CommandRefused
from station.packml import Cmd, State
from station.rig import Rig

WAIT_S = 20.0


def swap_rows(path: Path) -> int:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM swaps").fetchone()[0])
    finally:
        db.close()


async def test_reset_refused_with_the_car_lifted_until_the_technician_homes_it(
        tmp_path: Path) -> None:
    async with Rig(speed=50.0, vehicles=1, workdir=tmp_path, name="home") as rig:
        core, sim = rig.core, rig.sim
        await rig.wait_for(lambda: core.step is not None and core.step.name == "unlock"
                           and sim.truth()["bolts_tight"] < 10, WAIT_S,
                           what="unlock under way, some bolts loose")
        await rig.command(Cmd.ABORT)
        await rig.wait_for(lambda: core.state == State.ABORTED, WAIT_S, what="Aborted")
        await rig.command(Cmd.CLEAR)  # acknowledging the abort is allowed anywhere
        await rig.wait_for(lambda: core.state == State.STOPPED, WAIT_S, what="Stopped")
        await rig.wait_for(lambda: core.status()["start_inhibited"] is not None, WAIT_S,
                           what="the status to say why nothing may start")
        truth = sim.truth()
        assert truth["lift_mm"] == pytest.approx(500.0, abs=1.0)
        loose = f"{truth['bolts_tight']} of 10 bolts tight"
        commands, started = len(sim.command_log), len(rig.events)
        swaps = swap_rows(rig.journal_path)
        assert swaps == 1

        with pytest.raises(CommandRefused) as refused:
            await rig.command(Cmd.RESET)
        reason = str(refused.value)
        assert reason.startswith("reset refused: machine away from home: car lifted at 500 mm, "
                                 f"{loose}"), reason
        shown = reason.removeprefix("reset refused: ")
        await rig.wait_for(lambda: core.status()["start_inhibited"] == shown, WAIT_S,
                           what="the status to say the same")

        await asyncio.sleep(1.0)  # 50 simulated seconds: nothing moves, nothing is written
        assert core.state == State.STOPPED
        assert len(sim.command_log) == commands
        assert swap_rows(rig.journal_path) == swaps
        assert not [e for e in rig.events[started:] if e.kind in ("swap_started",
                                                                  "step_started")]
        refusals = [e.data for e in rig.events[started:] if e.kind == "command_refused"]
        assert refusals and refusals[0]["reason"] == reason  # journaled with its reason

        done = rig.manual_home()["done"]
        assert "bolts tightened" in done and "car lowered" in done, done
        await rig.wait_for(lambda: core.status()["start_inhibited"] is None, WAIT_S,
                           what="the read-back to show the machine home")
        await rig.command(Cmd.RESET)
        await rig.wait_for(lambda: len(rig.ended()) == 2, 60.0, what="the car's swap")
        assert rig.ended()[1]["outcome"] == "completed", rig.ended()
        assert swap_rows(rig.journal_path) == 2
        assert sim.observer.violations == []
