"""The interlock table against the core, step by step (scripted PLC, fake clock).

A matrix generated from the table: every interlock, in every step where it applies, must
produce its documented reaction with its id as the reason; and with the interlock
disabled the same case must fail, so no interlock is dead code. The same matrix runs
against the simulator over real protocols in tests/integration/test_interlock_matrix.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from station.core import CommandRefused, StationCore
from station.image import BAY, Location, StopRequest
from station.interlocks import INTERLOCKS, Interlock, Reaction
from station.pack_commands import PackCommand, PackCommandKind
from station.packml import Cmd, State
from station.sequence import SEQUENCE, STEPS_BY_NAME
from tests.unit.core_harness import Run, ScriptedPlc, make_run

STEPS = [s.name for s in SEQUENCE]
FLAG_OF = {
    "estop_open": "estop_ok", "safety_plc_fault": "safety_plc_ok",
    "light_curtain_breached": "light_curtain_clear", "door_open": "doors_closed",
    "smoke_detected": "smoke_clear",
}


def trip(run: Run, il_id: str, step: str) -> None:
    """Make the scripted PLC or packs show the hazard this interlock guards against."""
    plc, p = run.plc, run.plc.image.plc
    plan = run.core.plan
    if il_id in FLAG_OF:
        p[FLAG_OF[il_id]] = False
    elif il_id == "plc_inputs_stale":
        plc.freeze = True
    elif il_id == "plc_heartbeat_lost":
        plc.freeze_heartbeat = True
    elif il_id == "vehicle_moved":
        p["position_offset_x"] = 30.0
    elif il_id == "lift_position_mismatch":
        p["lift_height"] = 540.0
    elif il_id == "shuttle_position_mismatch":
        p["shuttle_position"] = 3200.0
    elif il_id == "pack_presence_mismatch":
        assert plan is not None
        pr = STEPS_BY_NAME[step].presence
        want = (pr.bay, pr.shuttle, pr.store_slot, pr.fetch_slot)
        i = next(k for k, w in enumerate(want) if w is not None)
        if i == 0:
            p["vehicle_pack_present"] = not want[0]
        elif i == 1:
            p["shuttle_pack_present"] = not want[1]
        else:
            slot = plan.store_slot if i == 2 else plan.fetch_slot
            p["rack_slot_occupied"][slot - 1] = not want[i]
    elif il_id == "pack_event_near_swap":
        assert plan is not None
        for loc in (BAY, Location.rack(plan.fetch_slot), Location.rack(plan.store_slot)):
            if loc in plc.image.packs:
                plc.image.packs[loc].max_cell_temp_c = 75.0
                return
        raise AssertionError("no pack near the swap to heat")
    elif il_id == "pack_silent":
        assert plan is not None
        plc.silent |= {BAY, Location.rack(plan.fetch_slot)}
    elif il_id == "plc_setpoint_mismatch":
        p["setpoint_swap_height"] = 520.0
    else:
        raise AssertionError(f"no test trigger for interlock {il_id}")


def untrip(run: Run, il_id: str) -> None:
    if il_id in FLAG_OF:
        run.plc.image.plc[FLAG_OF[il_id]] = True


def applicable(il: Interlock) -> list[str]:
    return [s for s in STEPS if il.steps is None or s in il.steps]


MATRIX = [(il.id, step) for il in INTERLOCKS for step in applicable(il)]
BY_ID = {il.id: il for il in INTERLOCKS}


def run_to_step(step: str, disabled: frozenset[str] = frozenset()) -> Run:
    cmd = next(s.command for s in SEQUENCE if s.name == step)
    plc_kw: dict = {"behaviour": {cmd: "busy"}} if cmd else {"wake_pack": False}
    run = make_run(**plc_kw)
    run.core.disabled_interlocks = disabled
    run.until(lambda: run.core.step is not None and run.core.step.name == step)
    run.step(n=2)
    assert run.core.state == State.EXECUTE, run.core.reason
    return run


def reacts(run: Run, il: Interlock) -> bool:
    """Did the core take this interlock's documented reaction, naming it?"""
    target = State.ABORTED if il.in_motion == Reaction.ABORT else State.HELD
    for _ in range(60):  # 3 s of scans: every trigger here trips within 1.5 s
        run.step()
        if run.core.state in (State.ABORTED, State.HELD):
            break
    faults = run.kinds("fault")
    return run.core.state == target and bool(faults) and faults[0]["code"] == il.id


def test_every_interlock_has_a_trigger_here() -> None:
    assert {il.id for il in INTERLOCKS} == {
        *FLAG_OF, "plc_inputs_stale", "plc_heartbeat_lost", "vehicle_moved",
        "lift_position_mismatch", "shuttle_position_mismatch", "pack_presence_mismatch",
        "pack_event_near_swap", "pack_silent", "plc_setpoint_mismatch",
    }


@pytest.mark.parametrize(("il_id", "step"), MATRIX)
def test_interlock_matrix(il_id: str, step: str) -> None:
    il = BY_ID[il_id]
    run = run_to_step(step)
    trip(run, il_id, step)
    assert reacts(run, il), (run.core.state, run.kinds("fault"))
    assert run.kinds("fault")[0]["step"] == step
    assert run.core.reason.startswith(f"interlock {il_id}")
    if il.in_motion == Reaction.ABORT:
        assert run.core.outputs["stop_request"] == "cat1"
        assert run.kinds("swap_ended")[0]["outcome"] == "aborted"
    else:
        assert run.core.outputs["stop_request"] == "cat2"
        assert not run.kinds("swap_ended")  # held, not ended
        with pytest.raises(CommandRefused, match=il_id):
            run.cmd(Cmd.UNHOLD)  # refused while the cause is still there
        untrip(run, il_id)
        run.step(n=2)
        run.plc.behaviour.clear()
        if step == "check":
            run.plc.wake(run.now)
        run.cmd(Cmd.UNHOLD)
        run.until(lambda: bool(run.kinds("swap_ended")))
        assert run.kinds("swap_ended")[0]["outcome"] == "completed"


@pytest.mark.parametrize("il_id", [il.id for il in INTERLOCKS])
def test_disabling_an_interlock_breaks_its_matrix_case(il_id: str) -> None:
    """Mutation check: with the interlock removed, its own case must not pass."""
    il = BY_ID[il_id]
    step = applicable(il)[0]
    run = run_to_step(step, disabled=frozenset({il_id}))
    trip(run, il_id, step)
    assert not reacts(run, il)


@pytest.mark.parametrize("il_id", [il.id for il in INTERLOCKS if il.at_rest is not None])
def test_interlock_at_rest_inhibits_start_and_blocks_clear(il_id: str) -> None:
    def no_car(plc: ScriptedPlc) -> None:
        plc.image.plc["vehicle_present"] = False

    run = make_run(prepare=no_car)
    assert run.core.state == State.IDLE
    trip(run, il_id, "position")
    run.until(lambda: il_id in run.core.active_interlocks, limit=100)
    run.plc.image.plc.update(vehicle_present=True, vehicle_token=9)  # a car arrives
    run.step(n=40)
    assert run.core.state == State.IDLE and not run.kinds("swap_started")
    run.cmd(Cmd.ABORT)
    run.step(n=3)
    with pytest.raises(CommandRefused, match=il_id):
        run.cmd(Cmd.CLEAR)


def test_abort_then_clear_and_reset_returns_to_idle() -> None:
    run = run_to_step("unlock")
    trip(run, "estop_open", "unlock")
    run.until(lambda: run.core.state == State.ABORTED)
    untrip(run, "estop_open")
    run.step(n=2)
    run.cmd(Cmd.CLEAR)
    run.until(lambda: run.core.state == State.STOPPED)
    # The abort left the car lifted: no reset from there (station/home.py)
    with pytest.raises(CommandRefused, match="reset refused: machine away from home: "
                       "car lifted at 500 mm"):
        run.cmd(Cmd.RESET)
    assert run.core.state == State.STOPPED
    run.plc.manual_home()  # the technician's hand pendant
    run.step(n=2)
    run.cmd(Cmd.RESET)
    run.until(lambda: run.core.state in (State.IDLE, State.STARTING, State.EXECUTE))


def test_rack_pack_event_isolates_and_locks_out_without_stopping_the_swap() -> None:
    run = make_run()
    run.until(lambda: run.core.step is not None and run.core.step.name == "lift")
    run.plc.image.packs[Location.rack(3)].faults = frozenset({"thermal_alarm"})  # not in this swap
    run.step(n=2)
    alarms = run.kinds("alarm")
    assert alarms and alarms[0]["slot"] == 3 and "isolated" in alarms[0]["action"]
    assert run.core.locked_out_slots.keys() == {3}
    run.until(lambda: bool(run.kinds("swap_ended")))
    assert run.kinds("swap_ended")[0]["outcome"] == "completed"


def test_pack_event_emits_isolation_command_once() -> None:
    core = StationCore(make_run().core.cfg)
    plc = ScriptedPlc()
    plc.image.packs[Location.rack(1)].max_cell_temp_c = 80.0
    d1 = core.update(plc.image, 0.0)
    d2 = core.update(plc.image, 0.05)
    isolate = PackCommand(Location.rack(1), PackCommandKind.ISOLATE)
    assert d1.isolations == [isolate] and d2.isolations == []


def test_temperature_rise_rate_is_a_pack_event() -> None:
    run = make_run(prepare=lambda plc: plc.image.plc.update(vehicle_present=False))
    rep = run.plc.image.packs[Location.rack(1)]
    for _ in range(400):  # +1 C every 2 s of packs' time = 30 C/min > 10 C/min
        run.step(dt=0.1)
        rep.max_cell_temp_c = 26.0 + int(run.now / 2.0)
        if run.kinds("alarm"):
            break
    assert run.kinds("alarm")[0]["alarm"] == "temp_rise"


def test_an_abort_is_decided_before_the_pack_bookkeeping() -> None:
    """The e-stop's stop request goes out in the scan that sees it, before pack trust and
    pack safety (most of a scan's time) run: they wait for the next scan."""
    run = make_run()
    run.until(lambda: run.core.step is not None and run.core.step.name == "lift")
    core = run.core
    calls: list[str] = []
    trust, safety = core._pack_trust, core._pack_safety

    def spy_trust(*a: Any) -> None:
        calls.append(f"trust@{core.state.label}")
        trust(*a)

    def spy_safety(*a: Any) -> None:
        calls.append(f"safety@{core.state.label}")
        safety(*a)

    core._pack_trust = spy_trust  # type: ignore[method-assign]
    core._pack_safety = spy_safety  # type: ignore[method-assign]
    run.step()
    assert calls == ["trust@Execute", "safety@Execute"]  # every scan, normally
    calls.clear()
    run.plc.image.plc["estop_ok"] = False
    d = core.update(run.plc.image, run.now + 0.05)
    assert core.state == State.ABORTING and core.outputs["stop_request"] == StopRequest.CAT1
    assert d.outputs is not None and d.outputs["stop_request"] == StopRequest.CAT1
    assert calls == []  # not in the scan that stops the machine
    assert core.active_interlocks == ["estop_open"]
    core.update(run.plc.image, run.now + 0.1)
    assert calls  # the next scan does them
