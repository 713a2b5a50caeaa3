"""Interlocks as a table: condition, where it applies, reaction, hazard.

Evaluated by the core on every change of the process image and on every tick, before any
command is written. A tripped interlock in a state where it applies makes the core react
(abort the swap with a category-1 stop, or refuse to start / finish resetting).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from station.config import StationConfig
from station.image import BAY, Location, PackData, ProcessImage
from station.pack_safety import PackEvent
from station.packml import State
from station.plan import SwapPlan
from station.sequence import STEPS_BY_NAME, Car, Step, Talker, steps_where
from station.setpoints import setpoint_mismatch


class Reaction(Enum):
    ABORT = "abort"  # category-1 stop requested from the PLC; Aborted until an operator clears
    HOLD = "hold"  # category-2 stop; Held until an operator unholds (once the cause is gone)
    INHIBIT = "inhibit"  # no start, no reset/clear/unhold completion while the condition holds


MOTION = frozenset({
    State.STARTING, State.EXECUTE, State.COMPLETING, State.HOLDING, State.UNHOLDING,
    State.SUSPENDING, State.UNSUSPENDING,
})
PAUSED = frozenset({State.HELD, State.SUSPENDED})  # a swap in progress, machine stopped
AT_REST = frozenset({State.IDLE, State.RESETTING, State.COMPLETE, State.CLEARING,
                     State.STOPPED, State.ABORTED, State.STOPPING, State.ABORTING})


@dataclass(frozen=True)
class Inputs:
    image: ProcessImage
    cfg: StationConfig
    now: float
    plc_heartbeat_changed_at: float | None
    state: State = State.IDLE
    step: str | None = None
    plan: SwapPlan | None = None
    pack_events: tuple[PackEvent, ...] = ()

    def num(self, name: str) -> float:
        return float(self.image.plc.get(name, 0) or 0)


@dataclass(frozen=True)
class Interlock:
    id: str
    hazard: str
    condition: Callable[[Inputs], str | None]  # what is wrong now, or None
    in_motion: Reaction  # while a swap runs (or is held) in one of `steps`
    steps: frozenset[str] | None = None  # None: every step
    at_rest: Reaction | None = Reaction.INHIBIT
    faults: tuple[str, ...] = ()  # simulator faults that provoke it (sim_hw/faults.py)
    # Held or Suspended swap: None = as in motion (a hold only blocks the unhold). Loss of
    # sight (stale input) only blocks the unhold too: nothing moves, and a restart starts blind.
    paused: Reaction | None = None

    def __post_init__(self) -> None:
        unknown = set(self.steps or ()) - set(STEPS_BY_NAME)
        if unknown:  # a misspelt step would silently never apply
            raise ValueError(f"interlock {self.id}: no such step(s) {sorted(unknown)}")

    def reaction(self, state: State, step: str | None) -> Reaction | None:
        if state in MOTION or state in PAUSED:
            if self.steps is not None and (step is None or step not in self.steps):
                return None
            if state in PAUSED:
                if self.paused is not None:
                    return self.paused
                if self.in_motion == Reaction.HOLD:
                    return Reaction.INHIBIT  # already stopped: it only blocks the unhold
            return self.in_motion
        return self.at_rest


def _plc_stale(i: Inputs) -> str | None:
    t = i.image.plc_read_at
    if t is None:
        return "no PLC input read yet"
    age = i.now - t
    return f"PLC inputs {age:.2f} s old" if age > i.cfg.plc.stale_after_s else None


def _plc_heartbeat_lost(i: Inputs) -> str | None:
    t = i.plc_heartbeat_changed_at
    if t is None or i.now - t > i.cfg.plc.stale_after_s * 2:
        return "PLC heartbeat counter not changing"
    return None


def _setpoints(i: Inputs) -> str | None:
    """The PLC works to other set-points than the controller judges by (station/setpoints)."""
    return setpoint_mismatch(i.image.plc, i.cfg)


def _flag_false(name: str, text: str) -> Callable[[Inputs], str | None]:
    return lambda i: None if i.image.plc.get(name, False) else text


def _vehicle_moved(i: Inputs) -> str | None:
    lim = i.cfg.interlocks.vehicle_drift_mm
    x, y = i.num("position_offset_x"), i.num("position_offset_y")
    if abs(x) > lim or abs(y) > lim:
        return f"vehicle offset x {x:.1f} mm, y {y:.1f} mm beyond {lim:.0f} mm"
    return None


def _row(i: Inputs) -> Step | None:
    return STEPS_BY_NAME.get(i.step) if i.step is not None else None


def _lift_mismatch(i: Inputs) -> str | None:
    s, il = i.cfg.sequence, i.cfg.interlocks
    h = i.num("lift_height")
    if h > s.swap_height_mm + il.lift_overtravel_mm:
        return f"lift over-travel: {h:.0f} mm, swap height {s.swap_height_mm:.0f} mm"
    row = _row(i)
    car = row.car if row is not None else None
    if car == Car.LIFTED and abs(h - s.swap_height_mm) > s.height_tolerance_mm:
        return f"lift at {h:.0f} mm during {i.step}, must stay at {s.swap_height_mm:.0f} mm"
    if car == Car.DOWN and h > s.height_tolerance_mm:
        return f"lift at {h:.0f} mm during {i.step}, must be down"
    return None


def _shuttle_mismatch(i: Inputs) -> str | None:
    il = i.cfg.interlocks
    pos = i.num("shuttle_position")
    if pos > il.shuttle_car_mm + il.shuttle_tolerance_mm:
        return f"shuttle over-travel: {pos:.0f} mm, rail end {il.shuttle_car_mm:.0f} mm"
    row = _row(i)
    if row is not None and row.shuttle_home and pos > il.shuttle_tolerance_mm:
        return f"shuttle at {pos:.0f} mm during {i.step}, must be home"
    return None


def _pack_presence(i: Inputs) -> str | None:
    row = _row(i)
    if i.plan is None or row is None:
        return None
    occ = i.image.plc.get("rack_slot_occupied", [])

    def slot(n: int) -> bool:
        return 1 <= n <= len(occ) and bool(occ[n - 1])

    seen = (bool(i.image.plc.get("vehicle_pack_present")),
            bool(i.image.plc.get("shuttle_pack_present")),
            slot(i.plan.store_slot), slot(i.plan.fetch_slot))
    names = ("vehicle bay", "shuttle", f"slot {i.plan.store_slot}", f"slot {i.plan.fetch_slot}")
    p = row.presence
    wants = (p.bay, p.shuttle, p.store_slot, p.fetch_slot)
    for want, got, name in zip(wants, seen, names, strict=True):
        if want is not None and want != got:
            return f"{name}: pack {'present' if got else 'absent'} during {i.step}"
    return None


def _pack_event_near_swap(i: Inputs) -> str | None:
    """A thermal or insulation event on the car's pack or on a pack the swap moves."""
    if i.plan is None:
        return None
    near = {BAY, Location.rack(i.plan.store_slot), Location.rack(i.plan.fetch_slot)}
    for ev in i.pack_events:
        if ev.location in near:
            return f"pack {ev.serial} in {ev.location}: {ev.detail}"
    return None


def _pack_silent(i: Inputs) -> str | None:
    row = _row(i)
    if i.plan is None or row is None:
        return None
    limit = i.cfg.interlocks.pack_silent_s
    checks = []
    if Talker.VEHICLE in row.talkers:
        checks.append((BAY, "vehicle pack"))
    if Talker.FETCH in row.talkers:
        checks.append((Location.rack(i.plan.fetch_slot), f"pack in slot {i.plan.fetch_slot}"))
    for loc, name in checks:
        rep = i.image.packs.get(loc)
        if rep is None or rep.age(PackData.STATUS, i.now) > limit:
            return f"{name} silent on CAN for more than {limit:g} s"
    return None


R = Reaction
INTERLOCKS: tuple[Interlock, ...] = (
    Interlock("plc_inputs_stale", "controller blind to the machine: PLC inputs older than "
              "plc.stale_after_s", _plc_stale, R.ABORT, faults=("plc_silent", "network_down"),
              paused=R.INHIBIT),
    Interlock("plc_heartbeat_lost", "PLC program not running: heartbeat counter frozen",
              _plc_heartbeat_lost, R.ABORT, paused=R.INHIBIT),
    Interlock("plc_setpoint_mismatch", "the PLC works to other set-points (swap height, "
              "tolerances, shuttle under-car position, bolt windows) than the controller "
              "judges each step by: a step done for the PLC fails here, or the reverse",
              _setpoints, R.ABORT, faults=("setpoint_mismatch",)),
    Interlock("estop_open", "emergency stop pressed or e-stop chain open",
              _flag_false("estop_ok", "e-stop chain open"), R.ABORT, faults=("estop",)),
    Interlock("safety_plc_fault", "safety PLC reports a fault: the safety barrier is not "
              "guaranteed", _flag_false("safety_plc_ok", "safety PLC not OK"), R.ABORT,
              faults=("safety_plc_fault",)),
    Interlock("light_curtain_breached", "person or object in the swap area while machinery "
              "moves", _flag_false("light_curtain_clear", "light curtain breached"), R.HOLD,
              faults=("light_curtain",)),
    Interlock("door_open", "station door open: access to moving machinery",
              _flag_false("doors_closed", "station door open"), R.HOLD, faults=("door_open",)),
    Interlock("smoke_detected", "smoke or fire in the station",
              _flag_false("smoke_clear", "smoke detector tripped"), R.ABORT, faults=("smoke",)),
    Interlock("vehicle_moved", "vehicle moving on a positioned or lifted platform: car falls "
              "or shuttle hits it", _vehicle_moved, R.ABORT,
              steps=steps_where(lambda s: s.car_positioned), at_rest=None,
              faults=("vehicle_moved",)),
    Interlock("lift_position_mismatch", "lift over-travel, or not at swap height while the "
              "shuttle works under the car", _lift_mismatch, R.ABORT,
              faults=("lift_overtravel",)),
    Interlock("shuttle_position_mismatch", "shuttle over-travel, or away from home while the "
              "stacker or the lift needs it there", _shuttle_mismatch, R.ABORT,
              faults=("shuttle_misplaced",)),
    Interlock("pack_presence_mismatch", "a pack where the step says none may be (collision) "
              "or none where one must be (dropped pack)", _pack_presence, R.ABORT,
              at_rest=None,
              faults=("pack_present_ghost", "pack_missing_sensor")),
    Interlock("pack_event_near_swap", "thermal runaway or insulation fault on the car's pack "
              "or a pack being moved (GB 38031-2025)", _pack_event_near_swap, R.ABORT,
              at_rest=None,
              faults=("pack_over_temp", "pack_temp_rise", "pack_fault", "pack_insulation_low")),
    Interlock("pack_silent", "a pack in use silent on CAN: its state is unknown",
              _pack_silent, R.ABORT, steps=steps_where(lambda s: bool(s.talkers)),
              at_rest=None, faults=("can_silent",), paused=R.INHIBIT),
)

SIGHT_INTERLOCKS = frozenset({"plc_inputs_stale", "plc_heartbeat_lost"})


def evaluate(inputs: Inputs, disabled: frozenset[str] = frozenset()
             ) -> list[tuple[Interlock, Reaction, str]]:
    """The interlocks tripped now that apply in this state and step: (interlock, reaction,
    what is wrong). `disabled` exists for the test that proves no interlock is dead code."""
    out = []
    blind = inputs.image.plc_read_at is None  # nothing read yet: only staleness can be judged
    for il in INTERLOCKS:
        if il.id in disabled or (blind and il.id not in SIGHT_INTERLOCKS):
            continue
        reaction = il.reaction(inputs.state, inputs.step)
        if reaction is None:
            continue
        detail = il.condition(inputs)
        if detail is not None:
            out.append((il, reaction, detail))
    return out
