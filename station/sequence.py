"""The swap sequence as data: one row per step.

Everything about a step lives in its row, and nothing else in the project names a step
without coming through `SEQUENCE`: the PLC command it issues (or none, for steps the
controller does itself), the parameter it sends, the sensor condition that must hold for
the step to count as done (the controller never trusts a bare "done" from the PLC), a check
for a hard failure that ends the swap at once, and the facts the interlocks judge the
machine by during the step: what the presence sensors must read, whether the car must be
lifted or down and the shuttle home, which packs must be talking on CAN, and its default
timeout. The interlock table, the config's timeouts and the documents derive from these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from station.image import BAY, PackData, PackReport, ProcessImage
from station.plan import PackInfo, SwapPlan

if TYPE_CHECKING:
    from station.config import StationConfig


@dataclass(frozen=True)
class StepView:
    """What a step's conditions may look at."""

    image: ProcessImage
    plan: SwapPlan
    cfg: StationConfig
    started_at: float  # monotonic time the step began (its command was issued)
    now: float

    def plc(self, name: str, default: object = None) -> object:
        return self.image.plc.get(name, default)

    def num(self, name: str) -> float:
        return float(self.image.plc.get(name, 0) or 0)


Predicate = Callable[[StepView], bool]
FaultCheck = Callable[[StepView], str | None]


class Car(StrEnum):
    """Where the lift must hold the car throughout a step (None in a row: it moves)."""

    DOWN = "down"
    LIFTED = "lifted"


class Talker(StrEnum):
    """A pack that must be heard on CAN throughout a step."""

    VEHICLE = "vehicle pack"
    FETCH = "pack to fetch"


@dataclass(frozen=True)
class Presence:
    """What the presence sensors must read throughout a step; None: changes in the step."""

    bay: bool | None
    shuttle: bool | None
    store_slot: bool | None
    fetch_slot: bool | None


@dataclass(frozen=True)
class Step:
    name: str
    command: str | None  # PLC contract command name
    description: str
    complete: Predicate
    presence: Presence
    timeout_s: float  # default, real seconds before speed_factor; [sequence.timeouts] overrides
    car: Car | None = None
    car_positioned: bool = True  # the car must not move on the platform (after POSITION)
    shuttle_home: bool = False
    talkers: frozenset[Talker] = frozenset()
    fault: FaultCheck = lambda v: None
    param: Callable[[SwapPlan], int] = lambda p: 0
    # What the sensors show that `complete` does not accept, each naming the input, its
    # value and what was expected ("lift_height 520 mm, expected 500 +- 5 mm"): the reason
    # when the PLC reports done and the sensors disagree.
    off: Callable[[StepView], list[str]] = lambda v: []


def _near(v: StepView, name: str, target: float, tol: float) -> bool:
    return abs(v.num(name) - target) <= tol


def _positioned(v: StepView) -> bool:
    tol = v.cfg.sequence.position_tolerance_mm
    return abs(v.num("position_offset_x")) <= tol and abs(v.num("position_offset_y")) <= tol


def _lifted(v: StepView) -> bool:
    s = v.cfg.sequence
    return _near(v, "lift_height", s.swap_height_mm, s.height_tolerance_mm)


def _lowered(v: StepView) -> bool:
    return v.num("lift_height") <= v.cfg.sequence.height_tolerance_mm


def _shuttle_home(v: StepView) -> bool:
    return v.num("shuttle_position") <= v.cfg.sequence.shuttle_home_tolerance_mm


def _slot_occupied(v: StepView, slot: int) -> bool:
    occ = v.plc("rack_slot_occupied", [])
    assert isinstance(occ, list)
    return 1 <= slot <= len(occ) and bool(occ[slot - 1])


def _want(name: str, want: bool) -> Callable[[StepView], list[str]]:
    def off(v: StepView) -> list[str]:
        got = bool(v.plc(name))
        return [] if got == want else [f"{name} {int(got)}, expected {int(want)}"]

    return off


def _want_near(name: str, target: Callable[[StationConfig], float],
               tol: Callable[[StationConfig], float]) -> Callable[[StepView], list[str]]:
    def off(v: StepView) -> list[str]:
        t, d = target(v.cfg), tol(v.cfg)
        got = v.num(name)
        return [] if abs(got - t) <= d else [f"{name} {got:g} mm, expected {t:g} +- {d:g} mm"]

    return off


def _want_slot(which: str, want: bool) -> Callable[[StepView], list[str]]:
    def off(v: StepView) -> list[str]:
        slot = getattr(v.plan, f"{which}_slot")
        got = _slot_occupied(v, slot)
        return [] if got == want else [
            f"rack_slot_occupied of slot {slot} {int(got)}, expected {int(want)}"]

    return off


def _all(*parts: Callable[[StepView], list[str]]) -> Callable[[StepView], list[str]]:
    return lambda v: [text for part in parts for text in part(v)]


_HEIGHT = _want_near("lift_height", lambda c: c.sequence.swap_height_mm,
                     lambda c: c.sequence.height_tolerance_mm)
_SHUTTLE_HOME = _want_near("shuttle_position", lambda c: 0.0,
                           lambda c: c.sequence.shuttle_home_tolerance_mm)


def _bolts_off(all_tight: bool) -> Callable[[StepView], list[str]]:
    def off(v: StepView) -> list[str]:
        n, tight = int(v.num("bolt_count")), int(v.num("bolts_tight"))
        if all_tight:
            ok = tight == n > 0
            return [] if ok else [f"bolts_tight {tight}, expected bolt_count ({n}) > 0"]
        return [] if tight == 0 else [f"bolts_tight {tight}, expected 0"]

    return off


def _position_off(v: StepView) -> list[str]:
    tol = v.cfg.sequence.position_tolerance_mm
    return [f"{name} {v.num(name):g} mm, expected 0 +- {tol:g} mm"
            for name in ("position_offset_x", "position_offset_y")
            if abs(v.num(name)) > tol]


def _release_off(v: StepView) -> list[str]:
    return [f"vehicle_present 1 with vehicle_token {int(v.num('vehicle_token'))} (the swapped "
            f"vehicle), expected it gone"]


def _bolt_window_fault(run: str) -> FaultCheck:
    """After UNLOCK or LOCK (once the PLC says done): every bolt's final torque and angle
    inside its window; a bolt that reports nothing reads 0 and fails too."""

    def check(v: StepView) -> str | None:
        n = int(v.num("bolt_count"))
        torque = v.plc("bolt_torque", [])
        angle = v.plc("bolt_angle", [])
        assert isinstance(torque, list) and isinstance(angle, list)
        t_lo, t_hi = getattr(v.cfg.sequence, f"{run}_torque_nm")
        a_lo, a_hi = getattr(v.cfg.sequence, f"{run}_angle_deg")
        bad = [
            f"bolt {i + 1} {torque[i]:.1f} N*m {angle[i]:.1f} deg"
            for i in range(min(n, len(torque), len(angle)))
            if not (t_lo <= torque[i] <= t_hi and a_lo <= angle[i] <= a_hi)
        ]
        if bad:
            return (f"bolt outside {run} torque/angle window ({t_lo:g}-{t_hi:g} N*m, "
                    f"{a_lo:g}-{a_hi:g} deg): " + "; ".join(bad))
        return None

    return check


def _vehicle_gone(v: StepView) -> bool:
    """The swap's own vehicle has left: the platform is empty, or the PLC's reader shows
    another vehicle (on a fast simulator the next one may arrive before we look again)."""
    return not v.plc("vehicle_present") or int(v.num("vehicle_token")) != v.plan.vehicle_token


CHECK_KINDS = (PackData.IDENTITY, PackData.STATUS, PackData.CELLS)


def _installed_pack_heard(v: StepView) -> bool:
    """The bay pack's identity, status and cells all arrived since the check began (after
    the install): an identity heard before, or older than its timeout, is the pack that left
    and must not count. The core asks for the identity (J1939 Request) when the step starts."""
    rep = v.image.packs.get(BAY)
    return rep is not None and rep.identified and rep.seen_since(v.started_at, *CHECK_KINDS) \
        and v.image.fresh(rep, PackData.IDENTITY, v.now)


CHECK_SOC_TOLERANCE_PCT = 5.0  # installed pack's SOC below the SOC it was fetched with


def installed_pack_mismatch(rep: PackReport, fetched: PackInfo) -> str | None:
    """What the installed pack says about itself that differs from the pack fetched: the
    check's reason names each field (serial, family, chemistry, SOC)."""
    diffs = []
    for name, heard, want in (("serial", rep.serial, fetched.serial),
                              ("family", rep.family, fetched.family),
                              ("chemistry", rep.chemistry, fetched.chemistry)):
        if heard != want:
            diffs.append(f"{name} {heard} (fetched {want})")
    soc = rep.soc_pct
    # Lower than fetched is another pack, or a rack report that lied; higher is the charge
    # it took between selection and fetch.
    if soc is None or soc < fetched.soc_pct - CHECK_SOC_TOLERANCE_PCT:
        diffs.append(f"SOC {soc} % (fetched at {fetched.soc_pct:g} %, at most "
                     f"{CHECK_SOC_TOLERANCE_PCT:g} % less allowed)")
    if not diffs:
        return None
    return "installed pack is not the pack fetched: " + ", ".join(diffs)


def _check_pack_fault(v: StepView) -> str | None:
    rep = v.image.packs.get(BAY)
    if rep is None or not _installed_pack_heard(v):
        return None  # not heard yet: the step waits, its timeout bounds it
    mismatch = installed_pack_mismatch(rep, v.plan.pack_in)
    if mismatch is not None:
        return mismatch
    if rep.faults:
        return "installed pack reports faults: " + ", ".join(sorted(rep.faults))
    ins = rep.insulation_kohm
    if ins is not None and ins < v.cfg.check.min_insulation_kohm:
        return f"insulation {ins:.0f} kOhm below {v.cfg.check.min_insulation_kohm:.0f} kOhm"
    return None


def _check_pack_ok(v: StepView) -> bool:
    rep = v.image.packs.get(BAY)
    return (
        rep is not None
        and _installed_pack_heard(v)
        and installed_pack_mismatch(rep, v.plan.pack_in) is None
        and not rep.faults
        and rep.soc_pct is not None
        and rep.soc_pct >= v.cfg.check.min_soc_pct
    )


P = Presence
SEQUENCE: tuple[Step, ...] = (
    Step("position", "POSITION", "centre the vehicle on the platform", _positioned,
         P(True, False, False, True), 45.0, car=Car.DOWN, car_positioned=False,
         shuttle_home=True, talkers=frozenset({Talker.VEHICLE, Talker.FETCH}),
         off=_position_off),
    Step("lift", "LIFT", "lift the vehicle to swap height", _lifted,
         P(True, False, False, True), 30.0, shuttle_home=True,
         talkers=frozenset({Talker.VEHICLE, Talker.FETCH}), off=_HEIGHT),
    Step("unlock", "UNLOCK", "shuttle docks under the car and loosens every bolt",
         lambda v: v.num("bolts_tight") == 0 and _lifted(v),
         P(True, False, False, True), 45.0, car=Car.LIFTED,
         talkers=frozenset({Talker.VEHICLE, Talker.FETCH}), fault=_bolt_window_fault("unlock"),
         off=_all(_bolts_off(False), _HEIGHT)),
    Step("remove", "REMOVE",
         "depleted pack lowered onto the shuttle and carried to the stacker",
         lambda v: bool(v.plc("shuttle_pack_present")) and not v.plc("vehicle_pack_present")
         and _shuttle_home(v),
         P(None, None, False, True), 36.0, car=Car.LIFTED, talkers=frozenset({Talker.FETCH}),
         off=_all(_want("shuttle_pack_present", True), _want("vehicle_pack_present", False),
                  _SHUTTLE_HOME)),
    Step("store", "STORE", "stacker stores the depleted pack in its rack slot",
         lambda v: _slot_occupied(v, v.plan.store_slot) and not v.plc("shuttle_pack_present"),
         P(False, None, None, True), 45.0, car=Car.LIFTED, shuttle_home=True,
         talkers=frozenset({Talker.FETCH}), param=lambda p: p.store_slot,
         off=_all(_want_slot("store", True), _want("shuttle_pack_present", False))),
    Step("fetch", "FETCH", "stacker takes the charged pack onto the shuttle",
         lambda v: not _slot_occupied(v, v.plan.fetch_slot)
         and bool(v.plc("shuttle_pack_present")),
         P(False, None, True, None), 45.0, car=Car.LIFTED, shuttle_home=True,
         param=lambda p: p.fetch_slot,
         off=_all(_want_slot("fetch", False), _want("shuttle_pack_present", True))),
    Step("install", "INSTALL", "shuttle raises the charged pack into the vehicle",
         lambda v: bool(v.plc("vehicle_pack_present")) and not v.plc("shuttle_pack_present"),
         P(None, None, True, False), 36.0, car=Car.LIFTED,
         off=_all(_want("vehicle_pack_present", True), _want("shuttle_pack_present", False))),
    Step("lock", "LOCK", "every bolt tightened inside its torque and angle window",
         lambda v: v.num("bolts_tight") == v.num("bolt_count") > 0 and _shuttle_home(v),
         P(True, False, True, False), 45.0, car=Car.LIFTED, fault=_bolt_window_fault("lock"),
         off=_all(_bolts_off(True), _SHUTTLE_HOME)),
    Step("check", None, "the vehicle wakes; the new pack's BMS must report healthy",
         _check_pack_ok, P(True, False, True, False), 30.0, car=Car.LIFTED,
         shuttle_home=True, fault=_check_pack_fault),
    Step("lower", "LOWER", "lower the vehicle to the ground", _lowered,
         P(True, False, True, False), 30.0, shuttle_home=True,
         off=_want_near("lift_height", lambda c: 0.0, lambda c: c.sequence.height_tolerance_mm)),
    Step("release", "RELEASE", "the vehicle drives out", _vehicle_gone,
         P(None, False, True, False), 60.0, car=Car.DOWN, car_positioned=False,
         shuttle_home=True, off=_release_off),
)

STEPS_BY_NAME: dict[str, Step] = {s.name: s for s in SEQUENCE}

STEP_NAMES: tuple[str, ...] = ("identify", *STEPS_BY_NAME)
"""Every step of a swap, in order; identify runs before the swap starts (it picks the pack)."""


def step_index(name: str) -> int:
    return list(STEPS_BY_NAME).index(name)


def steps_where(pred: Callable[[Step], bool]) -> frozenset[str]:
    """Names of the steps whose row satisfies pred (for the interlock table)."""
    return frozenset(s.name for s in SEQUENCE if pred(s))
