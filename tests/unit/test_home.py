"""Home (station/home.py): RESET and START, the automatic reset and the automatic start are
refused while the PLC's read-back shows the machine away from home (issue 7, item 6), with
a reason naming everything that is off; the normal places a station rests in are home."""

from __future__ import annotations

from typing import Any

import pytest

from station.config import SequenceSection, StationConfig
from station.core import CommandRefused, StationCore
from station.home import away_from_home
from station.packml import Cmd, State
from tests.unit.core_harness import Run, ScriptedPlc, make_run

SEQ = SequenceSection()
HOME: dict[str, Any] = {
    "vehicle_present": True, "vehicle_pack_present": True, "lift_height": 0,
    "bolts_tight": 10, "bolt_count": 10, "shuttle_position": 0,
    "shuttle_pack_present": False, "stacker_pack_present": False, "stacker_slot": 0,
}

# (what is off, the read-back changes, the words that name it)
OFF = [
    ("car lifted", {"lift_height": 500}, "car lifted at 500 mm"),
    ("lift up, no car", {"vehicle_present": False, "lift_height": 200}, "lift at 200 mm"),
    ("lift part way", {"lift_height": 6}, "car lifted at 6 mm"),
    ("bolts loose", {"bolts_tight": 0}, "0 of 10 bolts tight"),
    ("one bolt loose", {"bolts_tight": 9}, "9 of 10 bolts tight"),
    ("pack on the shuttle", {"shuttle_pack_present": True}, "pack on the shuttle"),
    ("shuttle away", {"shuttle_position": 3000}, "shuttle at 3000 mm, not home"),
    ("pack on the shuttle away", {"shuttle_pack_present": True, "shuttle_position": 1500},
     "pack on the shuttle at 1500 mm"),
    ("pack on the stacker", {"stacker_pack_present": True, "stacker_slot": 2},
     "pack on the stacker at slot 2"),
    ("pack on the stacker at the shuttle", {"stacker_pack_present": True},
     "pack on the stacker"),
]

NORMAL = [
    ("a car just arrived: down, bolts tight", {}),
    ("no car, bolts read 0 of 0", {"vehicle_present": False, "vehicle_pack_present": False,
                                   "bolts_tight": 0, "bolt_count": 0}),
    ("no car, bolts as the last car left them", {"vehicle_present": False,
                                                 "vehicle_pack_present": False,
                                                 "bolts_tight": 3}),
    ("a completed swap: car lowered, bolts tight, released",
     {"vehicle_present": False, "vehicle_pack_present": False}),
    ("within the tolerances", {"lift_height": 4, "shuttle_position": -5}),
    ("a car with an empty bay: bolts not judged", {"vehicle_pack_present": False,
                                                   "bolts_tight": 0}),
]


@pytest.mark.parametrize(("what", "change", "words"), OFF, ids=[o[0] for o in OFF])
def test_each_thing_off_is_named(what: str, change: dict[str, Any], words: str) -> None:
    assert away_from_home({**HOME, **change}, SEQ) == f"machine away from home: {words}"


@pytest.mark.parametrize(("what", "change"), NORMAL, ids=[n[0] for n in NORMAL])
def test_the_normal_resting_places_are_home(what: str, change: dict[str, Any]) -> None:
    assert away_from_home({**HOME, **change}, SEQ) is None


def test_every_thing_off_is_named_at_once() -> None:
    plc = {**HOME, "lift_height": 500, "bolts_tight": 0, "shuttle_pack_present": True,
           "shuttle_position": 3000, "stacker_pack_present": True, "stacker_slot": 4}
    assert away_from_home(plc, SEQ) == (
        "machine away from home: car lifted at 500 mm, 0 of 10 bolts tight, pack on the "
        "shuttle at 3000 mm, pack on the stacker at slot 4")


def test_the_tolerances_come_from_the_configuration() -> None:
    wide = SequenceSection(height_tolerance_mm=20.0, shuttle_home_tolerance_mm=40.0)
    plc = {**HOME, "lift_height": 15, "shuttle_position": 35}
    assert away_from_home(plc, wide) is None
    assert away_from_home(plc, SEQ) is not None


# ---- the core --------------------------------------------------------------------------

def stopped_core(change: dict[str, Any], cfg: StationConfig | None = None) -> Run:
    """A core in Stopped before its first reset, in front of a PLC reading `change`."""
    run = Run(StationCore(cfg or StationConfig()), ScriptedPlc())
    run.plc.image.plc.update(change)
    run.step(n=2)
    assert run.core.state == State.STOPPED
    return run


@pytest.mark.parametrize(("what", "change", "words"), OFF, ids=[o[0] for o in OFF])
def test_reset_is_refused_away_from_home_with_the_reason(
        what: str, change: dict[str, Any], words: str) -> None:
    run = stopped_core(change)
    with pytest.raises(CommandRefused) as exc:
        run.cmd(Cmd.RESET)
    assert str(exc.value) == f"reset refused: machine away from home: {words}"
    assert run.core.state == State.STOPPED
    # what the operator sees before trying: the status says why nothing starts
    assert run.core.status()["start_inhibited"] == f"machine away from home: {words}"
    assert [e["reason"] for e in run.kinds("inhibit")] == [f"machine away from home: {words}"]


@pytest.mark.parametrize(("what", "change"), NORMAL, ids=[n[0] for n in NORMAL])
def test_reset_is_accepted_at_home(what: str, change: dict[str, Any]) -> None:
    run = stopped_core(change)
    run.cmd(Cmd.RESET)
    run.step(n=2)
    assert run.core.state in (State.IDLE, State.STARTING, State.EXECUTE), run.core.reason
    assert not (run.core.status()["start_inhibited"] or "").startswith("machine away")


def test_homing_clears_the_inhibit_and_reset_then_works() -> None:
    run = stopped_core({"lift_height": 500, "bolts_tight": 0})
    with pytest.raises(CommandRefused, match="car lifted at 500 mm, 0 of 10 bolts tight"):
        run.cmd(Cmd.RESET)
    run.plc.manual_home()
    run.step(n=2)
    assert run.core.status()["start_inhibited"] is None
    assert run.kinds("inhibit")[-1]["reason"] is None  # journaled as cleared
    run.cmd(Cmd.RESET)
    run.until(lambda: bool(run.kinds("swap_ended")))
    assert run.kinds("swap_ended")[0]["outcome"] == "completed", run.core.reason


def manual_start_idle() -> Run:
    cfg = StationConfig.model_validate({"operation": {"auto_start": False}})
    run = make_run(cfg)
    run.until(lambda: run.core.ready_to_start)
    return run


@pytest.mark.parametrize(("what", "change", "words"), OFF, ids=[o[0] for o in OFF])
def test_idle_away_from_home_is_a_start_inhibit_and_start_is_refused(
        what: str, change: dict[str, Any], words: str) -> None:
    run = manual_start_idle()
    run.plc.image.plc.update(change)
    run.step(n=2)
    assert run.core.state == State.IDLE
    status = run.core.status()
    assert status["start_inhibited"] == f"machine away from home: {words}"
    assert not run.core.ready_to_start
    with pytest.raises(CommandRefused) as exc:
        run.cmd(Cmd.START)
    assert str(exc.value) == f"start refused: machine away from home: {words}"
    assert run.kinds("swap_started") == []


def test_start_goes_once_the_machine_is_home_again() -> None:
    run = manual_start_idle()
    run.plc.image.plc["shuttle_pack_present"] = True
    run.step(n=2)
    assert not run.core.ready_to_start
    run.plc.image.plc["shuttle_pack_present"] = False  # it was taken off
    run.until(lambda: run.core.ready_to_start)
    assert run.core.status()["start_inhibited"] is None
    run.cmd(Cmd.START)
    assert run.core.state == State.STARTING


def test_no_automatic_start_away_from_home() -> None:
    """The soak's loop: an auto-start sent POSITION to a lifted car, the PLC refused, the swap
    aborted and a new swap record was written, again and again. Now nothing starts."""
    def no_car(plc: ScriptedPlc) -> None:
        plc.image.plc.update(vehicle_present=False, vehicle_token=0)

    run = make_run(prepare=no_car)
    assert run.core.state == State.IDLE
    run.plc.image.plc.update(vehicle_present=True, vehicle_token=9, lift_height=500,
                             bolts_tight=0)
    run.step(n=200)
    assert run.core.state == State.IDLE
    assert run.kinds("swap_started") == [] and run.kinds("step_started") == []
    assert run.core.outputs["cmd_seq"] == 0  # nothing commanded
    assert run.core.status()["start_inhibited"] == (
        "machine away from home: car lifted at 500 mm, 0 of 10 bolts tight")
    run.plc.manual_home()
    run.until(lambda: bool(run.kinds("swap_started")))


def test_no_automatic_reset_after_a_complete_swap_away_from_home() -> None:
    run = make_run()
    run.until(lambda: run.core.state == State.COMPLETING)
    run.plc.image.plc["stacker_pack_present"] = True  # e.g. a pack left on the stacker
    run.step(n=20)
    assert run.core.state == State.COMPLETE
    assert run.core.status()["start_inhibited"] == "machine away from home: pack on the stacker"
    run.plc.manual_home()
    run.until(lambda: run.core.state == State.IDLE)


def test_clear_is_accepted_away_from_home_it_only_acknowledges_the_abort() -> None:
    run = make_run()
    run.until(lambda: run.core.step is not None and run.core.step.name == "remove")
    run.cmd(Cmd.ABORT)
    run.until(lambda: run.core.state == State.ABORTED)
    assert away_from_home(run.plc.image.plc, SEQ) is not None
    run.cmd(Cmd.CLEAR)
    run.until(lambda: run.core.state == State.STOPPED)
    with pytest.raises(CommandRefused, match="reset refused: machine away from home: "):
        run.cmd(Cmd.RESET)


def test_unhold_of_a_held_swap_is_accepted_away_from_home() -> None:
    """A held swap goes on with its own steps: the way it continues is its business."""
    run = make_run()
    run.until(lambda: run.core.step is not None and run.core.step.name == "lock")
    run.cmd(Cmd.HOLD)
    run.until(lambda: run.core.state == State.HELD)
    assert away_from_home(run.plc.image.plc, SEQ) is not None  # car lifted
    run.cmd(Cmd.UNHOLD)
    run.until(lambda: bool(run.kinds("swap_ended")))
    assert run.kinds("swap_ended")[0]["outcome"] == "completed", run.core.reason


def test_a_lift_lowered_by_hand_is_shown_live_but_journaled_once() -> None:
    run = stopped_core({"lift_height": 500})
    for h in (480, 350, 120, 7):
        run.plc.image.plc["lift_height"] = h
        run.step()
        shown = run.core.status()["start_inhibited"]
        assert shown == f"machine away from home: car lifted at {h} mm"
    assert [e["reason"] for e in run.kinds("inhibit")] == [
        "machine away from home: car lifted at 500 mm"]
    run.plc.image.plc["bolts_tight"] = 3  # another thing off: a new record
    run.step()
    run.plc.image.plc.update(lift_height=0, bolts_tight=10)
    run.step()
    assert [e["reason"] for e in run.kinds("inhibit")] == [
        "machine away from home: car lifted at 500 mm",
        "machine away from home: car lifted at 7 mm, 3 of 10 bolts tight",
        None]


def test_after_homing_the_car_is_identified_again() -> None:
    """The technician may have put another pack in the bay: what was heard before counts no
    more, the bay's identity is asked for again before a swap starts."""
    from station.image import BAY, PackData

    cfg = StationConfig.model_validate({"operation": {"auto_start": False}})
    run = make_run(cfg, identity_burst=False)
    run.until(lambda: run.core.ready_to_start)
    run.plc.image.plc["lift_height"] = 500
    run.step(n=2)
    run.plc.asked.clear()
    run.plc.manual_home()
    run.step()
    assert not run.core.ready_to_start  # not on what was heard before
    asked = [r for r in run.plc.asked if r.location == BAY and PackData.IDENTITY in r.kinds]
    assert asked
    run.until(lambda: run.core.ready_to_start)
