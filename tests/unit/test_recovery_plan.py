"""The recovery planner (station/recovery.py), pure: one physical state a stop can leave
per test, and the commands that bring the machine home from it."""

from __future__ import annotations

from collections.abc import Mapping
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


def commands(p: dict[str, Any], known: Mapping[str, int | None] | None = None,
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


def test_a_lift_stopped_a_few_mm_up_is_lowered_to_the_plcs_zero() -> None:
    """Within the controller's height tolerance is home for it, but the PLC's POSITION needs
    lift_height = 0 (the contract): a lift stopped at 3 mm would refuse the next swap."""
    assert commands(plc(lift_height=3), step="lift") == ["LOWER"]


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


def blocked(p: dict[str, Any], known: Mapping[str, int | None], interrupted: Interrupted | None,
            locked: frozenset[int] = frozenset()) -> tuple[list[str], str]:
    plan = plan_recovery(p, known, interrupted, SEQ, locked)
    assert plan.blocked is not None, [s.command for s in plan.steps]
    assert not plan.home
    return [f"{s.command} {s.param}" for s in plan.steps], plan.blocked


@pytest.mark.parametrize("own_known", [OUT, None])
def test_the_cars_own_pack_in_a_locked_out_slot_is_never_fetched(own_known: int | None) -> None:
    """The car's pack was stored in slot 4, then slot 4 was locked out (a thermal event):
    the plan must not FETCH it into the car, whether its serial is known there or not."""
    p = plc(vehicle_pack_present=False, bolts_tight=0, rack_slot_occupied=[True] * 4)
    known = {"slot 1": IN, "slot 2": 602, "slot 3": 603, "slot 4": own_known}
    steps, why = blocked(p, known, Interrupted(PLAN, "fetch"), frozenset({4}))
    assert steps == []
    assert f"its own pack {OUT} is in slot 4, which is locked out" in why


@pytest.mark.parametrize(("kw", "what"), [
    # vehicle_present reads 0 while a pack with loose bolts hangs in the bay, shuttle docked
    ({"vehicle_present": False, "vehicle_token": 0, "bolts_tight": 0,
      "shuttle_position": 3000}, "a pack in the vehicle bay but no vehicle on the platform"),
    ({"vehicle_present": False, "vehicle_token": 0, "bolts_tight": 0,
      "shuttle_position": 3000, "shuttle_pack_present": True},
     "a pack in the vehicle bay but no vehicle on the platform"),
    ({"bolts_tight": 0, "bolt_count": 0}, "held by bolt_count 0 bolts"),
    ({"bolts_tight": 99, "bolt_count": 10}, "99 bolts tight of bolt_count 10"),
    ({"bolts_tight": -1}, "bolts_tight -1 is not a count"),
    ({"lift_height": -600, "bolts_tight": 0}, "lift at -600 mm, below down"),
    ({"shuttle_position": float("nan"), "bolts_tight": 0}, "shuttle_position is not a number"),
    ({"lift_height": "high"}, "lift_height is not a number"),
    ({"shuttle_position": -3000}, "shuttle at -3000 mm, behind home"),
    ({"rack_slot_count": 4, "rack_slot_occupied": [True, True, True, False, True]},
     "slot 5 reads occupied but the rack has 4 slots"),
    ({"rack_slot_count": 6}, "rack_slot_count 6 but only 4 slot occupancy bits"),
    ({"stacker_slot": 7}, "stacker at slot 7 of a 4-slot rack"),
])
def test_a_read_back_that_does_not_add_up_blocks_the_plan(kw: dict[str, Any], what: str) -> None:
    steps, why = blocked(plc(**kw), KNOWN, Interrupted(PLAN, "unlock"))
    assert steps == []
    assert why.startswith("the read-back does not add up") and what in why, why
    assert "hand pendant" in why


def test_a_pack_on_the_shuttle_not_known_to_be_the_cars_is_never_installed() -> None:
    """No interrupted swap in the journal: the pack on the shuttle is nobody's known pack;
    an interrupted swap of car 7 while car 8 stands lifted: pack 500 is car 7's. Either way
    it is stored in a free slot (the shuttle's way home is clear: the bay is empty) and the
    car, its bay empty, blocks the plan with the reason."""
    p = plc(vehicle_pack_present=False, bolts_tight=0, shuttle_pack_present=True,
            shuttle_position=3000)
    steps, why = blocked(p, {"slot 1": 601}, None)
    assert steps == ["HOME 0", "STORE 4"]
    assert "journal knows no interrupted swap of this car (vehicle 7)" in why
    plan = plan_recovery(plc(vehicle_token=8, vehicle_pack_present=False, bolts_tight=0,
                             shuttle_pack_present=True),
                         {"slot 1": IN}, Interrupted(PLAN, "remove"), SEQ)
    assert [(s.command, s.param) for s in plan.steps] == [("STORE", 4)]
    assert [str(m) for m in plan.steps[0].moves] == [f"pack {OUT}: shuttle -> slot 4"]
    assert "is not put into that car" in plan.steps[0].why
    assert plan.blocked is not None and "(vehicle 8)" in plan.blocked
    assert all(s.command != "INSTALL" for s in plan.steps)


def test_a_pack_of_unknown_identity_on_the_shuttle_is_not_installed() -> None:
    """Both of the interrupted swap's packs are seen in the rack: the shuttle's pack is
    neither, so it is not put into the car even though the swap was this car's."""
    p = plc(vehicle_pack_present=False, bolts_tight=0, shuttle_pack_present=True,
            rack_slot_occupied=[True, True, True, True, False])
    known = {"slot 1": IN, "slot 2": 602, "slot 3": 603, "slot 4": OUT}
    plan = plan_recovery(p, known, Interrupted(PLAN, "fetch"), SEQ)
    assert [(s.command, s.param) for s in plan.steps] == [
        ("STORE", 5), ("FETCH", 4), ("INSTALL", 0), ("LOCK", 0), ("LOWER", 0)]
    assert str(plan.steps[2].moves[0]) == f"pack {OUT}: shuttle -> vehicle bay"


def test_a_free_slot_is_only_one_of_the_racks_slots() -> None:
    """The register map's occupancy array is longer than the rack: a full 4-slot rack has
    no slot 5 to store the stacker's pack in."""
    occ = [True] * 4 + [False] * 26
    p = plc(rack_slot_count=4, rack_slot_occupied=occ, stacker_pack_present=True,
            stacker_slot=2, vehicle_pack_present=False, bolts_tight=0)
    known = {"slot 1": 601, "slot 2": 602, "slot 3": 603, "slot 4": 604}
    steps, why = blocked(p, known, Interrupted(PLAN, "store"))
    assert steps == [] and "no free rack slot" in why
    free = plan_recovery(plc(rack_slot_count=4, rack_slot_occupied=[True, False] + [False] * 28,
                             vehicle_present=False, vehicle_pack_present=False, lift_height=0,
                             stacker_pack_present=True, stacker_slot=2),
                         {"slot 1": 601}, None, SEQ)
    assert [(s.command, s.param) for s in free.steps] == [("STORE", 2)]
