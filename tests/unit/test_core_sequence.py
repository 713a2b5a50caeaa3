"""The swap sequence in the core, against a scripted PLC and a fake clock."""

from __future__ import annotations

import pytest

from station.config import SequenceSection, StationConfig
from station.image import BAY, PackData
from station.packml import Cmd, State
from station.sequence import SEQUENCE, STEP_NAMES
from tests.unit.core_harness import ScriptedPlc, make_run

COMMAND_STEPS = [s for s in SEQUENCE if s.command]


def test_full_swap_runs_every_step_in_order_and_completes() -> None:
    run = make_run()
    run.until(lambda: bool(run.kinds("swap_ended")))
    ended = run.kinds("swap_ended")[0]
    assert ended["outcome"] == "completed", ended
    started = [e["step"] for e in run.kinds("step_started")]
    done = [e["step"] for e in run.kinds("step_done")]
    assert started == list(STEP_NAMES)
    assert done == list(STEP_NAMES)
    run.until(lambda: run.core.state == State.IDLE)


def test_selection_takes_highest_soc_compatible_pack_and_free_slot() -> None:
    run = make_run()
    run.until(lambda: bool(run.kinds("swap_started")))
    s = run.kinds("swap_started")[0]
    # family 20 vehicle: slot 2 (LFP 97 %) beats slot 1 (NMC 90 %); slot 3 is family 25
    assert s["fetch_slot"] == 2 and s["pack_in"]["serial"] == 1002
    assert s["store_slot"] == 4
    assert s["pack_out"]["serial"] == 2001


def test_commands_carry_fresh_nonzero_sequence_numbers_and_slot_params() -> None:
    run = make_run()
    run.until(lambda: bool(run.kinds("swap_ended")))
    seqs = [e["seq"] for e in run.kinds("step_started") if e["command"]]
    assert all(s > 0 for s in seqs) and len(set(seqs)) == len(seqs)
    params = {e["step"]: e.get("param") for e in run.kinds("step_started")}
    assert params["store"] == 4 and params["fetch"] == 2


@pytest.mark.parametrize("step", [s.name for s in COMMAND_STEPS])
def test_plc_error_on_each_step_aborts_with_reason(step: str) -> None:
    cmd = next(s.command for s in SEQUENCE if s.name == step)
    run = make_run(behaviour={cmd: "error"})
    run.until(lambda: run.core.state == State.ABORTED)
    assert step in run.core.reason and "PLC error mechanism_fault" in run.core.reason
    ended = run.kinds("swap_ended")[0]
    assert ended["outcome"] == "aborted" and ended["step"] == step
    assert run.core.outputs["stop_request"] == "cat1"
    assert run.kinds("fault")[0]["code"] == "plc_error"


@pytest.mark.parametrize("step", [s.name for s in COMMAND_STEPS])
def test_step_timeout_on_each_step_aborts(step: str) -> None:
    cmd = next(s.command for s in SEQUENCE if s.name == step)
    run = make_run(behaviour={cmd: "busy"})
    run.until(lambda: run.core.state == State.ABORTED, limit=5000)
    assert run.core.reason.startswith(f"{step}: timed out")
    assert run.kinds("fault")[0]["code"] == "step_timeout"


@pytest.mark.parametrize("step", [s.name for s in COMMAND_STEPS])
def test_plc_not_taking_the_command_aborts(step: str) -> None:
    cmd = next(s.command for s in SEQUENCE if s.name == step)
    run = make_run(behaviour={cmd: "silent"})
    run.until(lambda: run.core.state == State.ABORTED)
    assert "did not take" in run.core.reason and step in run.core.reason


@pytest.mark.parametrize("step", [s.name for s in COMMAND_STEPS])
def test_done_without_sensor_confirmation_aborts(step: str) -> None:
    cmd = next(s.command for s in SEQUENCE if s.name == step)
    run = make_run(behaviour={cmd: "no_sensor"})
    run.until(lambda: run.core.state == State.ABORTED)
    # after LOCK the unreported bolts are caught by the torque/angle window first
    expected = {"lock": "bolt outside lock torque/angle window",
                "unlock": "bolt outside unlock torque/angle window"}.get(step, "sensors disagree")
    assert expected in run.core.reason and run.core.reason.startswith(step)


def test_lock_outside_torque_window_aborts() -> None:
    run = make_run(bolt_torque=140.0)
    run.until(lambda: run.core.state == State.ABORTED)
    assert run.core.reason.startswith("lock: bolt outside lock torque/angle window")


def test_check_step_rejects_unhealthy_pack() -> None:
    run = make_run(check_pack_ok=False)
    run.until(lambda: run.core.state == State.ABORTED)
    assert run.core.reason.startswith("check: installed pack reports faults: internal")


def test_check_step_rejects_low_insulation() -> None:
    run = make_run()
    run.until(lambda: run.core.step is not None and run.core.step.name == "check")
    run.plc.image.packs[BAY].insulation_kohm = 90.0  # above the pack-event limit? no: 100
    run.until(lambda: run.core.state == State.ABORTED)
    assert "insulation 90 kOhm below 100 kOhm" in run.core.reason


def test_check_step_times_out_when_pack_silent() -> None:
    cfg = StationConfig(sequence=SequenceSection(speed_factor=10.0))
    run = make_run(cfg)
    run.until(lambda: run.core.step is not None and run.core.step.name == "check")
    run.plc.image.packs.pop(BAY, None)
    run.until(lambda: run.core.state == State.ABORTED)
    assert run.core.reason.startswith("check: timed out")


def test_no_compatible_pack_inhibits_start_with_reason() -> None:
    def all_family_25(plc: ScriptedPlc) -> None:
        for rep in plc.image.packs.values():
            if rep.location != BAY:
                rep.family = 25

    run = make_run(prepare=all_family_25)
    run.step(n=5)
    assert run.core.state == State.IDLE
    assert "no charged pack for a family-20 vehicle" in run.core.status()["start_inhibited"]
    assert not run.kinds("swap_started")
    assert run.kinds("inhibit")[-1]["reason"].startswith("no charged pack")


def test_auto_reset_brings_station_back_to_idle_for_next_vehicle() -> None:
    run = make_run()
    run.until(lambda: bool(run.kinds("swap_ended")))
    run.until(lambda: run.core.state == State.IDLE)
    assert [e["new"] for e in run.kinds("state")][-3:] == ["Complete", "Resetting", "Idle"]


def test_stop_command_ends_swap_and_requests_category_2_stop() -> None:
    run = make_run()
    run.until(lambda: run.core.step is not None and run.core.step.name == "unlock")
    run.cmd(Cmd.STOP)
    assert run.core.outputs["stop_request"] == "cat2"
    run.step(n=3)
    assert run.core.state == State.STOPPED
    assert run.kinds("swap_ended")[0]["outcome"] == "stopped"


def test_unlock_outside_torque_window_aborts() -> None:
    run = make_run(unlock_torque=30.0)
    run.until(lambda: run.core.state == State.ABORTED)
    assert run.core.reason.startswith("unlock: bolt outside unlock torque/angle window")
    assert run.kinds("fault")[0]["code"] == "unlock_failed"


def test_check_does_not_trust_an_identity_heard_before_the_install() -> None:
    """Defect: with a BMS that sends no identity burst, `check` compared the expected serial
    with the removed pack's identity (heard before the install, older than its timeout) and
    aborted with the right pack in the car. It must ask for the identity instead."""
    run = make_run(identity_burst=False)
    run.until(lambda: bool(run.kinds("swap_ended")))
    assert run.kinds("swap_ended")[0]["outcome"] == "completed", run.core.reason
    check_start = next(e["t"] for e in run.kinds("step_started") if e["step"] == "check")
    assert any(r.location == BAY and PackData.IDENTITY in r.kinds
               for r in run.plc.asked), "the core never asked the installed pack who it is"
    assert run.plc.image.packs[BAY].serial == 1002
    assert run.plc.image.packs[BAY].last_seen[PackData.IDENTITY] >= check_start


def test_check_ignores_an_identity_older_than_its_timeout() -> None:
    """The installed pack never answers: the check times out (it never passes on the old
    pack's identity, nor aborts on it as the wrong pack)."""
    cfg = StationConfig(sequence=SequenceSection(speed_factor=10.0))
    run = make_run(cfg, identity_burst=False)
    run.plc.tick = _deaf(run.plc)  # type: ignore[method-assign]
    run.until(lambda: run.core.state == State.ABORTED, limit=5000)
    assert run.core.reason.startswith("check: timed out"), run.core.reason


def _deaf(plc: ScriptedPlc):  # type: ignore[no-untyped-def]
    tick = plc.tick

    def no_requests(outputs, now, requests=None):  # type: ignore[no-untyped-def]
        return tick(outputs, now, None)

    return no_requests


def test_suspend_stops_the_plc_and_unsuspend_resumes_the_step() -> None:
    """Defect: Suspend sent no stop request, so the PLC went on with the step, and Unsuspend
    sent the step's command again with a new sequence number while the old one still ran
    (the PLC refuses it: one command at a time)."""
    run = make_run(behaviour={"LIFT": "busy"})
    run.until(lambda: run.core.step is not None and run.core.step.name == "lift"
              and run.plc.image.plc["cmd_status"] == "busy")
    run.cmd(Cmd.SUSPEND)
    assert run.core.outputs["stop_request"] == "cat2"
    run.until(lambda: run.core.state == State.SUSPENDED)
    assert run.plc.image.plc["cmd_status"] == "error"  # the PLC ended the step: stopped
    assert run.plc.image.plc["cmd_error_code"] == "stopped"
    run.plc.behaviour.clear()
    run.cmd(Cmd.UNSUSPEND)
    run.until(lambda: bool(run.kinds("swap_ended")))
    assert run.plc.refused == 0
    assert run.kinds("swap_ended")[0]["outcome"] == "completed", run.core.reason
    lifts = [e for e in run.kinds("step_started") if e["step"] == "lift"]
    assert len(lifts) == 2 and lifts[0]["seq"] != lifts[1]["seq"]


def test_release_completes_when_the_next_car_arrives_before_the_platform_reads_empty() -> None:
    """Defect (`swapd demo --speed 500`): the next car arrived within one poll of the last
    one leaving, the platform never read empty, and release aborted with "PLC reported done
    but the sensors disagree". Then the bay still held the pack installed in the car that
    left: it must not be taken for the new car's pack."""
    run = make_run(next_vehicle=True)
    run.until(lambda: len(run.kinds("swap_started")) == 2, limit=4000)
    first, second = run.kinds("swap_ended")[0], run.kinds("swap_started")[1]
    assert first["outcome"] == "completed", run.core.reason
    assert second["vehicle_token"] == 8
    assert second["pack_out"]["serial"] == 2002  # the new car's pack, not 1002 we installed


def test_an_abort_while_holding_raises_the_stop_category() -> None:
    """Category 1 (stop, then power off) is more than category 2 (stop, power kept): an abort
    that follows a hold is a stronger stop, which the daemon sends before the journal's
    fsync like every other stop."""
    from station.image import StopRequest

    run = make_run()
    run.until(lambda: run.core.step is not None and run.core.step.name == "unlock")
    run.cmd(Cmd.HOLD)
    held = StopRequest(run.core.outputs["stop_request"])
    run.cmd(Cmd.ABORT)
    aborted = StopRequest(run.core.outputs["stop_request"])
    assert (held, aborted) == (StopRequest.CAT2, StopRequest.CAT1)
    assert aborted.severity > held.severity > StopRequest.NONE.severity
