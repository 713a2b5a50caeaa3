"""The swap sequence in the core, against a scripted PLC and a fake clock."""

from __future__ import annotations

import pytest

from station.config import SequenceSection, StationConfig
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
    assert step in run.core.reason and "PLC error 3" in run.core.reason
    ended = run.kinds("swap_ended")[0]
    assert ended["outcome"] == "aborted" and ended["step"] == step
    assert run.core.outputs["stop_request"] == 1
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
    run.plc.image.packs[0xF4].insulation_kohm = 90.0  # above the pack-event limit? no: 100
    run.until(lambda: run.core.state == State.ABORTED)
    assert "insulation 90 kOhm below 100 kOhm" in run.core.reason


def test_check_step_times_out_when_pack_silent() -> None:
    cfg = StationConfig(sequence=SequenceSection(speed_factor=10.0))
    run = make_run(cfg)
    run.until(lambda: run.core.step is not None and run.core.step.name == "check")
    run.plc.image.packs.pop(0xF4, None)
    run.until(lambda: run.core.state == State.ABORTED)
    assert run.core.reason.startswith("check: timed out")


def test_no_compatible_pack_inhibits_start_with_reason() -> None:
    def all_family_25(plc: ScriptedPlc) -> None:
        for rep in plc.image.packs.values():
            if rep.source != 0xF4:
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
    assert run.core.outputs["stop_request"] == 2
    run.step(n=3)
    assert run.core.state == State.STOPPED
    assert run.kinds("swap_ended")[0]["outcome"] == "stopped"


def test_unlock_outside_torque_window_aborts() -> None:
    run = make_run(unlock_torque=30.0)
    run.until(lambda: run.core.state == State.ABORTED)
    assert run.core.reason.startswith("unlock: bolt outside unlock torque/angle window")
    assert run.kinds("fault")[0]["code"] == "unlock_failed"
