"""Issue 10, the PLC contract's gaps (items 1-14, "Reasons"), on the scripted PLC and the
simulator's model: what the contract now says, the core and the simulator do."""

from __future__ import annotations

from typing import Any

import pytest

from drivers.docgen import COMMAND_PRECONDITIONS
from drivers.plc.contract import load_contract
from sim_hw.mechanics import STATUS_DONE
from sim_hw.packs import CMD_ISOLATE
from station.config import SequenceSection, StationConfig
from station.core import CommandRefused, StationCore
from station.packml import Cmd, State
from tests.unit.core_harness import Run, ScriptedPlc, make_run
from tests.unit.test_sim_mechanics import DT, swap_to
from tests.unit.test_sim_mechanics import station as make_station

CONTRACT = load_contract()


# ---------------------------------------------------------------- the config's defaults
@pytest.mark.parametrize(("key", "ms"), [("handshake_timeout_s", "handshake_timeout_ms"),
                                         ("sensor_grace_s", "sensor_grace_ms"),
                                         ("stop_cause_grace_s", "stop_cause_grace_ms")])
def test_the_sequence_defaults_are_the_contracts_timing(key: str, ms: str) -> None:
    default = SequenceSection.model_fields[key].default
    assert default == getattr(CONTRACT.timing, ms) / 1000


# ---------------------------------------------------------------- helpers
def at_step(run: Run, step: str) -> None:
    run.until(lambda: run.core.step is not None and run.core.step.name == step
              and run.plc.image.plc["cmd_ack_seq"] == run.core.seq)


def fault_codes(run: Run) -> list[str]:
    return [f["code"] for f in run.kinds("fault")]


# ---------------------------------------------------------------- items 2, 3 and Reasons
def test_bolt_results_are_judged_in_the_scan_that_shows_done() -> None:
    """A PLC that sets done before the bolt results (they come a scan later) breaks the
    contract: the step fails on the bolts, it does not wait for them."""
    run = make_run(behaviour={"UNLOCK": "no_sensor"})
    at_step(run, "unlock")
    assert run.plc.image.plc["cmd_status"] == "done"
    run.step()  # the scan that shows done, without the results
    p = run.plc.image.plc  # the results a scan too late, all inside the window
    p["bolts_tight"], p["bolt_torque"], p["bolt_angle"] = 0, [90.0] * 12, [720.0] * 12
    run.step()
    assert run.core.state in (State.ABORTING, State.ABORTED)
    assert run.core.reason.startswith("unlock: bolt outside unlock torque/angle window")
    assert fault_codes(run) == ["unlock_failed"]


def test_sensors_disagreeing_are_named_with_value_and_expectation() -> None:
    run = make_run(behaviour={"LIFT": "no_sensor"})
    at_step(run, "lift")
    run.plc.image.plc["lift_height"] = 520
    run.until(lambda: run.core.state == State.ABORTED)
    assert run.core.reason == ("lift: PLC reported done but the sensors disagree 500 ms "
                               "later: lift_height 520 mm, expected 500 +- 5 mm")
    assert fault_codes(run) == ["sensor_disagrees"]


@pytest.mark.parametrize(("step", "cmd"), [
    ("position", "POSITION"), ("remove", "REMOVE"), ("store", "STORE"), ("fetch", "FETCH"),
    ("install", "INSTALL"), ("lower", "LOWER"), ("release", "RELEASE")])
def test_every_step_names_what_is_off_when_its_sensors_disagree(step: str, cmd: str) -> None:
    """Each command step's row says what it expected, for the step's own inputs."""
    run = make_run(behaviour={cmd: "no_sensor"})
    run.until(lambda: run.core.state == State.ABORTED)
    assert run.core.reason.startswith(f"{step}: PLC reported done but the sensors "
                                      "disagree"), run.core.reason
    assert "expected" in run.core.reason, run.core.reason


def test_the_sensor_grace_is_the_configured_one() -> None:
    cfg = StationConfig.model_validate({"sequence": {"sensor_grace_s": 2.0}})
    run = make_run(cfg, behaviour={"LIFT": "no_sensor"})
    at_step(run, "lift")
    run.step(n=20)  # 1 s: past the contract's default 0.5 s, inside the configured 2 s
    assert run.core.state == State.EXECUTE and run.core.step.name == "lift"
    run.plc.image.plc["lift_height"] = 500
    run.until(lambda: run.core.step is not None and run.core.step.name == "unlock")


@pytest.mark.parametrize(("change", "words"), [
    ({"cmd_status": "idle"}, "then cmd_status idle"),
    ({"cmd_ack_seq": "older"}, "an older command"),
])
def test_done_then_lost_says_so(change: dict[str, Any], words: str) -> None:
    run = make_run(behaviour={"LIFT": "no_sensor"})
    at_step(run, "lift")
    run.step()
    p = run.plc.image.plc
    for k, v in change.items():
        p[k] = run.core.seq - 1 if v == "older" else v
    run.step()
    assert run.core.state in (State.ABORTING, State.ABORTED)
    assert run.core.reason.startswith(f"lift: PLC reported LIFT (seq {run.plc.last_seq}) "
                                      "done, then "), run.core.reason
    assert words in run.core.reason and "timed out" not in run.core.reason
    assert fault_codes(run) == ["plc_done_lost"]


# ---------------------------------------------------------------- item 6: stop and cause
def stopped_at_lift() -> Run:
    run = make_run(behaviour={"LIFT": "busy"})
    at_step(run, "lift")
    p = run.plc.image.plc
    p["cmd_status"], p["cmd_error_code"] = "error", "stopped"
    run.step()
    return run


def test_a_stop_whose_cause_comes_a_scan_later_still_holds() -> None:
    run = stopped_at_lift()
    assert run.core.state == State.EXECUTE  # waiting for the cause
    run.plc.image.plc["light_curtain_clear"] = False  # 50 ms after the error
    run.step()
    run.until(lambda: run.core.state == State.HELD)
    assert fault_codes(run) == ["light_curtain_breached"]


def test_a_stop_then_done_within_the_grace_is_a_broken_handshake_not_done() -> None:
    """Error is a level like done: error stopped, then done for the same command, is not
    taken as done (the grace waits for a cause, it does not let the PLC change its mind)."""
    run = stopped_at_lift()
    p = run.plc.image.plc
    p["cmd_status"], p["cmd_error_code"], p["lift_height"] = "done", "none", 500
    run.step()
    assert run.core.state in (State.ABORTING, State.ABORTED)
    assert "error stopped, then cmd_status done" in run.core.reason, run.core.reason
    assert fault_codes(run) == ["plc_done_lost"]


def test_a_stop_whose_cause_aborts_aborts_with_that_interlock() -> None:
    run = stopped_at_lift()
    run.plc.image.plc["estop_ok"] = False
    run.until(lambda: run.core.state == State.ABORTED)
    assert fault_codes(run) == ["estop_open"]


def test_a_stop_without_a_cause_aborts_after_the_grace() -> None:
    run = stopped_at_lift()
    run.until(lambda: run.core.state == State.ABORTED)
    assert run.core.reason == ("lift: PLC stopped LIFT (error stopped) and no cause was "
                               "seen within 250 ms")
    assert fault_codes(run) == ["plc_stopped"]


# ---------------------------------------------------------------- item 11: PLC restart
def test_a_plc_restart_during_a_step_is_named() -> None:
    run = make_run(behaviour={"LIFT": "busy"})
    at_step(run, "lift")
    seq = run.core.seq
    p = run.plc.image.plc
    p["cmd_ack_seq"], p["cmd_status"] = 0, "idle"
    run.step()
    assert run.core.reason == (f"lift: PLC restarted: cmd_ack_seq 0, cmd_status idle; LIFT "
                               f"(seq {seq}) lost")
    assert fault_codes(run) == ["plc_restarted"]


def test_a_fresh_plc_that_is_slow_to_take_the_first_command_is_no_restart() -> None:
    """ack 0 before any command was ever taken is a PLC that has not answered yet."""
    run = make_run(behaviour={"POSITION": "silent"})
    assert run.plc.image.plc["cmd_ack_seq"] == 0
    run.until(lambda: run.core.state == State.ABORTED)
    assert fault_codes(run) == ["plc_no_answer"]


# ---------------------------------------------------------------- item 7: set-points
def test_a_setpoint_mismatch_refuses_reset_naming_both_values() -> None:
    run = Run(StationCore(StationConfig()), ScriptedPlc())
    run.plc.image.plc["setpoint_swap_height"] = 520.0
    run.step()
    with pytest.raises(CommandRefused) as refused:
        run.cmd(Cmd.RESET)
    assert str(refused.value) == (
        "reset refused: interlocks active: plc_setpoint_mismatch (setpoint_swap_height "
        "520 mm (PLC) != sequence.swap_height_mm 500 mm)")


def test_a_setpoint_mismatch_mid_swap_aborts() -> None:
    run = make_run(behaviour={"LIFT": "busy"})
    at_step(run, "lift")
    run.plc.image.plc["setpoint_height_tolerance"] = 8.0
    run.until(lambda: run.core.state == State.ABORTED)
    assert fault_codes(run) == ["plc_setpoint_mismatch"]
    assert "setpoint_height_tolerance 8 mm (PLC) wider than sequence.height_tolerance_mm 5 mm" \
        in run.core.reason


def test_the_simulator_publishes_a_mismatching_setpoint_on_its_fault() -> None:
    m, _ = make_station()
    assert m.inputs()["setpoint_swap_height"] == 500
    m.faults.set("setpoint_mismatch")
    assert m.inputs()["setpoint_swap_height"] == 520
    assert m.truth()["lift_mm"] == 0  # only what it publishes
    m.faults.clear("setpoint_mismatch")
    assert m.inputs()["setpoint_swap_height"] == 500


# ---------------------------------------------------------------- items 4, 5, 9: the sim
def test_release_is_done_only_once_the_car_has_left() -> None:
    m, c = make_station()
    swap_to(c, "LOWER")
    rec = c.send("RELEASE")
    while rec.status != STATUS_DONE:
        assert m.inputs()["vehicle_present"], "the car left before done"
        c.step()
    inp = m.inputs()
    assert inp["cmd_status"] == STATUS_DONE and not inp["vehicle_present"]


def test_done_is_held_until_the_next_command() -> None:
    m, c = make_station()
    c.arrive()
    rec = c.ok("POSITION")
    for _ in range(int(5.0 / DT)):
        c.step()
        inp = m.inputs()
        assert (inp["cmd_ack_seq"], inp["cmd_status"]) == (rec.seq, STATUS_DONE)
    nxt = c.send("LIFT")
    assert m.inputs()["cmd_ack_seq"] == nxt.seq


def test_fetch_of_an_isolated_pack_is_not_the_plcs_to_refuse() -> None:
    """The PLC cannot know whether a pack may be used: the controller never fetches one it
    has not judged usable (selection, pack safety, lockouts)."""
    m, c = make_station()
    swap_to(c, "STORE")
    pack = m.rack[1]
    assert pack is not None
    pack.apply_control(CMD_ISOLATE, 0, 0, 1, c.t)
    assert pack.state == "isolated"
    c.ok("FETCH", 1)
    assert m.shuttle_pack is pack
    assert "isolated" not in COMMAND_PRECONDITIONS["FETCH"]


# ---------------------------------------------------------------- item 6: the sim's delay
def test_the_simulator_can_report_a_safety_input_after_the_stop_it_caused() -> None:
    m, c = make_station()
    c.arrive()
    m.faults.set("safety_report_delay", 500)  # five of the fake clock's steps
    rec = c.send("POSITION")
    c.step()
    m.faults.set("light_curtain")
    c.step()  # the sim PLC stops at once
    inp = m.inputs()
    assert (inp["cmd_ack_seq"], inp["cmd_error_code"]) == (rec.seq, 6)
    assert inp["light_curtain_clear"]  # reported later
    c.step(5)
    assert not m.inputs()["light_curtain_clear"]
    m.faults.clear("light_curtain")
    c.step()
    assert not m.inputs()["light_curtain_clear"]  # the clearing is delayed too
    c.step(5)
    assert m.inputs()["light_curtain_clear"]


def test_a_model_plc_restart_forgets_the_command() -> None:
    m, c = make_station()
    c.arrive()
    rec = c.send("POSITION")
    c.step()
    m.restart_program()
    inp = m.inputs()
    assert (inp["cmd_ack_seq"], inp["cmd_status"]) == (0, 0)
    c.step(5)
    assert m.inputs()["cmd_ack_seq"] == 0 and rec.reason == "PLC restarted"
