"""Issue 10 follow-up, safety of maintenance commands (the reviewer's findings): the step
row's bolt-window check and interlocks apply to a maintenance command; a stop, hold or abort
ends it in any PackML state and clear is refused while it runs; `run` refuses a locked-out
slot and a location with a live pack event at issue time; a daemon restart or shutdown
mid-command records it failed and leaves the machine stopped."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from station.config import JournalSection, StationConfig
from station.core import CommandRefused
from station.daemon import Daemon
from station.events import MaintenanceStarted
from station.image import BAY, StopRequest
from station.journal import Journal
from station.maintenance import MaintenanceRun
from station.packml import Cmd, State
from tests.unit.core_harness import Run, make_run
from tests.unit.test_daemon_apply import LinkDouble


def aborted_in_lock(**plc_kw: Any) -> Run:
    """A swap aborted in its LOCK (every bolt under-torqued): the car lifted with its new
    pack bolted in the bay, the shuttle home; the station in maintenance mode."""
    run = make_run(bolt_torque=50.0, **plc_kw)
    run.until(lambda: run.core.state == State.ABORTED)
    assert run.core.interrupted is not None and run.core.interrupted.step == "lock"
    run._take(run.core.set_unit_mode("maintenance", "local", run.now))
    return run


def failed(run: Run) -> list[dict[str, Any]]:
    return run.kinds("maintenance_failed")


# ---- 1: the bolt windows ---------------------------------------------------------------
def test_a_maintenance_lock_outside_the_torque_window_fails_and_the_plan_locks_again() -> None:
    run = aborted_in_lock()
    first = run.core.recovery_plan().steps[0]
    assert (first.command, first.param) == ("LOCK", 0)
    run._take(run.core.recover_next("local", run.now))
    run.until(lambda: not run.core.maintenance.running)
    m = run.core.maintenance.run
    assert m is not None and m.state == "failed" and m.code == "lock_failed"
    assert "bolt outside lock torque/angle window" in (m.reason or "")
    assert failed(run)[-1]["code"] == "lock_failed"
    assert run.core.outputs["stop_request"] == StopRequest.CAT2
    assert not run.kinds("maintenance_done")
    steps = run.core.recovery_plan().steps
    assert steps and steps[0].command == "LOCK"  # never LOWER: the car is not home


def test_a_maintenance_unlock_outside_its_window_fails() -> None:
    run = aborted_in_lock()
    run.plc.unlock_torque = 30.0  # the gun now under-torques the unlock too
    run._take(run.core.maintenance_command("UNLOCK", 0, "local", run.now))
    run.until(lambda: not run.core.maintenance.running)
    m = run.core.maintenance.run
    assert m is not None and m.state == "failed" and m.code == "unlock_failed"


# ---- 2: what stops a running command ---------------------------------------------------
def running_in_aborted() -> Run:
    run = aborted_in_lock()
    run.plc.behaviour["LOCK"] = "busy"
    run._take(run.core.recover_next("local", run.now))
    run.step(n=3)
    assert run.core.maintenance.running and run.core.state == State.ABORTED
    assert run.core.outputs["stop_request"] == StopRequest.NONE
    return run


@pytest.mark.parametrize("how, stop", [
    ("stop", StopRequest.CAT2), ("hold", StopRequest.CAT2), ("abort", StopRequest.CAT1),
    ("request_stop", StopRequest.CAT2), ("request_hold", StopRequest.CAT2)])
def test_stop_hold_abort_end_a_running_command_in_aborted(how: str, stop: StopRequest) -> None:
    run = running_in_aborted()
    core = run.core
    if how == "request_stop":
        d = core.request_stop("cloud says stop", "cloud", run.now)
    elif how == "request_hold":
        d = core.request_hold("cloud says hold", "cloud", run.now)
    else:
        d = core.command(Cmd(how), run.now, "local")
    run._take(d)
    assert not core.maintenance.running
    assert core.outputs["stop_request"] == stop
    assert d.outputs is not None and d.outputs["stop_request"] == stop
    assert [e.kind for e in d.events] == ["maintenance_failed"]  # journaled with it
    ev = failed(run)[-1]
    assert ev["code"] == ("aborted" if stop == StopRequest.CAT1 else "stopped")
    assert ev["command"] == "LOCK"
    assert core.state == State.ABORTED


def test_stop_ends_a_running_command_in_stopped_too() -> None:
    run = aborted_in_lock()
    run.cmd(Cmd.CLEAR)
    run.until(lambda: run.core.state == State.STOPPED)
    run.plc.behaviour["LOWER"] = "busy"
    run._take(run.core.maintenance_command("LOWER", 0, "local", run.now))
    run.step(n=2)
    run.cmd(Cmd.STOP)
    assert not run.core.maintenance.running
    assert run.core.outputs["stop_request"] == StopRequest.CAT2


def test_clear_is_refused_while_a_command_runs() -> None:
    run = running_in_aborted()
    with pytest.raises(CommandRefused, match=r"clear refused: maintenance command LOCK "
                       r"\(seq \d+\) running: stop it or wait"):
        run.cmd(Cmd.CLEAR)
    run.step(n=3)
    assert run.core.maintenance.running and run.core.state == State.ABORTED
    assert run.core.outputs["stop_request"] == StopRequest.NONE


# ---- 3: the step row's interlocks ------------------------------------------------------
@pytest.mark.parametrize("what, value, code", [
    ("position_offset_x", 120.0, "vehicle_moved"),
    ("lift_height", 300, "lift_position_mismatch")])
def test_the_lock_steps_interlocks_stop_a_maintenance_lock(what: str, value: float,
                                                           code: str) -> None:
    run = running_in_aborted()
    run.plc.image.plc[what] = value
    run.step(n=2)
    m = run.core.maintenance.run
    assert m is not None and m.state == "failed" and m.code == code, m
    assert run.core.outputs["stop_request"] == StopRequest.CAT1


def test_a_maintenance_lock_is_refused_with_the_car_off_centre() -> None:
    run = aborted_in_lock()
    run.plc.image.plc["position_offset_x"] = 120.0
    run.step()
    with pytest.raises(CommandRefused, match="interlocks active: vehicle_moved"):
        run.core.recover_next("local", run.now)


def test_the_vehicle_pack_silent_stops_a_maintenance_unlock() -> None:
    run = aborted_in_lock()
    run.plc.behaviour["UNLOCK"] = "busy"
    run._take(run.core.maintenance_command("UNLOCK", 0, "local", run.now))
    run.plc.silent.add(BAY)
    run.until(lambda: not run.core.maintenance.running)
    m = run.core.maintenance.run
    assert m is not None and m.code == "pack_silent" and "vehicle pack" in (m.reason or "")


def test_store_with_no_car_lifted_runs_and_the_lift_must_not_move() -> None:
    """STORE's row holds the car lifted while the stacker works: for a maintenance STORE
    with the lift down (no car) the lift must only stay where it was."""
    run = aborted_in_lock()
    p = run.plc.image.plc
    p.update(lift_height=0, vehicle_present=False, vehicle_token=0,
             vehicle_pack_present=False, shuttle_pack_present=True, position_offset_x=0.0,
             position_offset_y=0.0)
    run.step(n=2)
    run.plc.behaviour["STORE"] = "busy"
    run._take(run.core.maintenance_command("STORE", 4, "local", run.now))
    run.step(n=2)
    assert run.core.maintenance.running
    p["lift_height"] = 100
    run.step(n=2)
    m = run.core.maintenance.run
    assert m is not None and m.code == "lift_position_mismatch" and "must not move" in \
        (m.reason or "")


# ---- 4: what `run` refuses at issue time -----------------------------------------------
def test_run_refuses_a_locked_out_slot_naming_the_lockout() -> None:
    run = aborted_in_lock()
    run._take(run.core.slot_maintenance(4, "lock", "bent rail", "local", run.now))
    for name in ("FETCH", "STORE"):
        with pytest.raises(CommandRefused, match=r"slot 4 is locked out \(maintenance: bent "
                           r"rail\)"):
            run.core.maintenance_command(name, 4, "local", run.now)


def test_a_command_touching_a_live_pack_event_is_refused_at_issue() -> None:
    run = aborted_in_lock()
    run.plc.image.packs[BAY].max_cell_temp_c = 80.0
    run.step()
    assert any(ev.location == BAY for ev in run.core._pack_events)
    with pytest.raises(CommandRefused, match="live pack event"):
        run.core.maintenance_command("LOCK", 0, "local", run.now)
    assert not run.kinds("maintenance_started")


# ---- 5: a daemon restart or shutdown mid-command ---------------------------------------
def test_a_command_unfinished_at_start_up_is_failed_and_the_machine_stays_stopped(
        tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    j = Journal(path)
    j.record([MaintenanceStarted(t=1.0, seq=12, command="LOCK", param=0, source="recover",
                                 why="tighten", moves=[], origin="local")])
    j.close()
    log: list[tuple[str, Any]] = []
    d = Daemon(StationConfig(journal=JournalSection(path=path)), link=LinkDouble(log))
    try:
        assert d.core.outputs["stop_request"] == StopRequest.CAT2
        assert ("set", "cat2") in log
        assert not d.core.maintenance.running
        assert d._reset_pending is False
        rows = d.journal.db.execute(
            "SELECT data FROM events WHERE kind = 'maintenance_failed'").fetchall()
        assert len(rows) == 1
        data = json.loads(rows[0]["data"])
        assert data["code"] == "daemon_restarted" and data["seq"] == 12
        assert "restarted" in data["reason"] and "not resumed" in data["reason"]
    finally:
        d.journal.close()
    again = Daemon(StationConfig(journal=JournalSection(path=path)), link=LinkDouble([]))
    try:  # recorded once: the next start finds it ended
        assert again.core.outputs["stop_request"] == StopRequest.NONE
    finally:
        again.journal.close()


async def test_a_graceful_shutdown_stops_a_running_command(tmp_path: Path) -> None:
    log: list[tuple[str, Any]] = []
    link = LinkDouble(log)
    d = Daemon(StationConfig(journal=JournalSection(path=tmp_path / "j.sqlite")), link=link)
    core = d.core
    core.outputs["stop_request"] = StopRequest.NONE
    core.maintenance.run = MaintenanceRun(5, "LOWER", 0, "run", "test", (), "local", 0.0)
    recorded: list[Any] = []
    record = d.journal.record

    def journal_record(events: Any) -> list[int]:
        events = list(events)
        recorded.extend(events)
        return record(events)

    d.journal.record = journal_record  # type: ignore[method-assign]
    scan = asyncio.ensure_future(asyncio.sleep(0))
    await scan
    await d._shutdown(scan, [], None)
    assert link.desired["stop_request"] == StopRequest.CAT2
    assert ("write", "cat2") in log
    assert [(e.kind, e.code) for e in recorded] == [("maintenance_failed", "daemon_stopped")]


# ---- a plan needs a read-back of the machine at rest (CI: unlock-early recovery) --------
@pytest.mark.parametrize("status, behind", [("done", True), ("busy", False)])
def test_recovery_waits_for_a_read_back_of_the_machine_at_rest(status: str,
                                                               behind: bool) -> None:
    """A read-back from before the PLC took the last command (its echo behind), or one that
    shows a command still running, is no picture of where the machine stopped: recover and
    run are refused until the PLC's read-back catches up."""
    run = aborted_in_lock()
    p = run.plc.image.plc
    sent = run.core.outputs["cmd_seq"]
    assert sent and p["cmd_ack_seq"] == sent  # at rest: the plan may go
    assert run.core.recovery_plan().steps
    p["cmd_ack_seq"], p["cmd_status"] = (sent - 1 if behind else sent), status
    for call in (lambda: run.core.recover_next("local", run.now),
                 lambda: run.core.maintenance_command("NOOP", 0, "local", run.now)):
        with pytest.raises(CommandRefused, match="not at rest yet"):
            call()
    p["cmd_ack_seq"], p["cmd_status"] = sent, "error"  # the stop reported: at rest
    run._take(run.core.recover_next("local", run.now))
    assert run.core.maintenance.running
