"""The recovery planner (station/recovery.py), pure: one physical state a stop can leave
per test, and the commands that bring the machine home from it."""

from __future__ import annotations

from typing import Any

import pytest

from drivers.plc.contract import load_contract
from station.config import SequenceSection
from station.plan import PackInfo, SwapPlan
from station.recovery import COMMANDS, Interrupted, plan_recovery, result_shown

SEQ = SequenceSection()
OUT, IN = 500, 600  # the car's pack, the charged pack
PLAN = SwapPlan("S-000001", 7, PackInfo(OUT, 20, "nmc", 20.0), PackInfo(IN, 20, "nmc", 95.0),
                store_slot=4, fetch_slot=1, identify_started_at=0.0)


def plc(**kw: Any) -> dict[str, Any]:
    """A car lifted at swap height, its pack in the bay, bolts tight, shuttle home empty;
    slots 1-3 full, 4 empty (the store slot)."""
    base: dict[str, Any] = {
        "vehicle_present": True, "vehicle_token": 7, "lift_height": 500,
        "vehicle_pack_present": True, "bolts_tight": 10, "bolt_count": 10,
        "shuttle_position": 0, "shuttle_pack_present": False, "stacker_slot": 0,
        "stacker_pack_present": False, "rack_slot_occupied": [True, True, True, False]}
    base.update(kw)
    return base


KNOWN = {"vehicle bay": OUT, "slot 1": IN, "slot 2": 602, "slot 3": 603}


def commands(p: dict[str, Any], known: dict[str, int | None] | None = None,
             step: str | None = "unlock", locked: frozenset[int] = frozenset()) -> list[str]:
    plan = plan_recovery(p, KNOWN if known is None else known,
                         Interrupted(PLAN, step) if step else None, SEQ, locked)
    assert plan.blocked is None, plan.blocked
    return [f"{s.command} {s.param}" if s.param else s.command for s in plan.steps]


def test_the_planners_commands_are_the_contracts() -> None:
    assert set(COMMANDS) == set(load_contract().commands)


def test_home_needs_nothing() -> None:
    plan = plan_recovery(plc(lift_height=0), KNOWN, None, SEQ)
    assert plan.home and plan.steps == () and plan.off is None


def test_car_lifted_bolts_tight_is_lowered() -> None:
    assert commands(plc(), step="lift") == ["LOWER"]


def test_some_bolts_loose_are_locked_then_lowered() -> None:
    assert commands(plc(bolts_tight=4, shuttle_position=900)) == ["LOCK", "LOWER"]


def test_shuttle_away_empty_goes_home_first() -> None:
    assert commands(plc(shuttle_position=300)) == ["HOME", "LOWER"]


def test_pack_on_the_shuttle_away_goes_back_into_the_empty_bay() -> None:
    p = plc(vehicle_pack_present=False, bolts_tight=0, shuttle_pack_present=True,
            shuttle_position=400)
    plan = plan_recovery(p, {**KNOWN, "vehicle bay": None}, Interrupted(PLAN, "remove"), SEQ)
    assert [s.command for s in plan.steps] == ["INSTALL", "LOCK", "LOWER"]
    assert [str(m) for m in plan.steps[0].moves] == [f"pack {OUT}: shuttle -> vehicle bay"]


def test_pack_on_the_stacker_is_stored_where_it_was_going_then_the_car_gets_it_back() -> None:
    p = plc(vehicle_pack_present=False, bolts_tight=0, stacker_pack_present=True,
            stacker_slot=4)
    plan = plan_recovery(p, {**KNOWN, "vehicle bay": None}, Interrupted(PLAN, "store"), SEQ)
    assert [(s.command, s.param) for s in plan.steps] == [
        ("STORE", 4), ("FETCH", 4), ("INSTALL", 0), ("LOCK", 0), ("LOWER", 0)]
    assert [str(m) for s in plan.steps for m in s.moves] == [
        f"pack {OUT}: stacker -> slot 4", f"pack {OUT}: slot 4 -> shuttle",
        f"pack {OUT}: shuttle -> vehicle bay"]


def test_charged_pack_on_the_stacker_goes_back_to_its_slot() -> None:
    occupied = [False, True, True, True]  # fetch slot 1 emptied, the car's pack in slot 4
    p = plc(vehicle_pack_present=False, bolts_tight=0, stacker_pack_present=True,
            stacker_slot=1, rack_slot_occupied=occupied)
    known = {"slot 2": 602, "slot 3": 603, "slot 4": OUT}
    plan = plan_recovery(p, known, Interrupted(PLAN, "fetch"), SEQ)
    assert [(s.command, s.param) for s in plan.steps][:2] == [("STORE", 1), ("FETCH", 4)]
    assert str(plan.steps[0].moves[0]) == f"pack {IN}: stacker -> slot 1"


def test_a_pack_goes_back_to_its_own_slot_not_the_first_free_one() -> None:
    plan2 = SwapPlan("S-000002", 7, PLAN.pack_out, PLAN.pack_in, store_slot=3, fetch_slot=2,
                     identify_started_at=0.0)
    p = plc(vehicle_present=False, vehicle_pack_present=False, lift_height=0,
            stacker_pack_present=True, stacker_slot=2,
            rack_slot_occupied=[False, False, True, True])
    plan = plan_recovery(p, {"slot 3": OUT}, Interrupted(plan2, "fetch"), SEQ)
    assert [(s.command, s.param) for s in plan.steps] == [("STORE", 2)]


def test_charged_pack_on_the_shuttle_is_installed_in_the_lifted_car() -> None:
    occupied = [False, True, True, True]
    p = plc(vehicle_pack_present=False, bolts_tight=0, shuttle_pack_present=True,
            rack_slot_occupied=occupied)
    known = {"slot 2": 602, "slot 3": 603, "slot 4": OUT}
    assert commands(p, known, step="install") == ["INSTALL", "LOCK", "LOWER"]


def test_pack_on_the_shuttle_without_a_car_is_stored_in_its_slot() -> None:
    occupied = [False, True, True, True]
    p = plc(vehicle_present=False, vehicle_pack_present=False, lift_height=0,
            shuttle_pack_present=True, shuttle_position=200, rack_slot_occupied=occupied)
    assert commands(p, {"slot 4": OUT}, step="install") == ["HOME", "STORE 1"]


def test_a_locked_out_origin_slot_sends_the_pack_to_a_free_one() -> None:
    occupied = [False, True, True, True, False]
    p = plc(vehicle_present=False, vehicle_pack_present=False, lift_height=0,
            shuttle_pack_present=True, rack_slot_occupied=occupied)
    assert commands(p, {"slot 4": OUT}, step="fetch", locked=frozenset({1})) == ["STORE 5"]


def test_install_or_lock_stopped_before_lock_ended_gets_a_lock() -> None:
    assert commands(plc(), {**KNOWN, "vehicle bay": IN}, step="lock") == ["LOCK", "LOWER"]
    relocked = plan_recovery(plc(), KNOWN, Interrupted(PLAN, "lock", relocked=True), SEQ)
    assert [s.command for s in relocked.steps] == ["LOWER"]


def test_no_free_slot_needs_the_hand_pendant() -> None:
    p = plc(vehicle_present=False, vehicle_pack_present=False, lift_height=0,
            shuttle_pack_present=True, rack_slot_occupied=[True, True, True, True])
    plan = plan_recovery(p, {}, None, SEQ)
    assert plan.steps == () and not plan.home
    assert plan.blocked is not None and "no free rack slot" in plan.blocked
    assert "hand pendant" in plan.blocked


@pytest.mark.parametrize("known_slot4", [None, 999])
def test_the_cars_pack_nowhere_known_is_never_guessed(known_slot4: int | None) -> None:
    p = plc(vehicle_pack_present=False, bolts_tight=0,
            rack_slot_occupied=[True, True, True, known_slot4 is not None])
    known = {"slot 1": IN, "slot 4": known_slot4}
    plan = plan_recovery(p, known, Interrupted(PLAN, "store"), SEQ)
    assert plan.steps == () and plan.blocked is not None
    assert f"its own pack {OUT} is not where the journal stored it" in plan.blocked
    unknown = plan_recovery(p, known, None, SEQ)  # no interrupted swap in the journal
    assert unknown.blocked is not None and "where its pack is is not known" in unknown.blocked


def test_result_shown_needs_the_read_back() -> None:
    assert not result_shown("STORE", 4, plc(), SEQ)
    assert result_shown("STORE", 4, plc(rack_slot_occupied=[True] * 4), SEQ)
    assert not result_shown("HOME", 0, plc(shuttle_position=200), SEQ)
    assert result_shown("LOWER", 0, plc(lift_height=0), SEQ)
    assert not result_shown("LOCK", 0, plc(bolts_tight=9), SEQ)
