"""The PLC's set-points against the controller's configuration, without any I/O.

The PLC publishes the values its own program works to (contract signals `setpoint_*`,
docs/plc-interface.md "Set-points"). The controller judges every step by its own
configuration; where the two differ, a physically complete swap can abort (the PLC stops
the lift at 520 mm, the controller wants 500 +- 5) or a step the controller would refuse can
pass the PLC. So they are compared whenever the PLC's inputs are read, and a mismatch keeps
the station from starting (interlock `plc_setpoint_mismatch`), naming both values.

The rules, one per set-point:
- a position (swap height, shuttle under the car) must be equal to the configured one,
  within half the coarsest resolution an addressing gives it (1 mm registers: 0.5 mm);
- a tolerance the PLC calls a step done within must not be wider than the controller's;
- a bolt window must lie inside the controller's: every gun run the PLC accepts, the
  controller accepts too; so must the lift's window (swap height +- its tolerance): every
  height the PLC may call LIFT done at, the controller counts as lifted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from station.config import StationConfig

EQUAL_WITHIN = 0.5  # mm: a 1 mm register rounds by at most this
WINDOW_SLACK = 0.05  # a 0.1-scaled register rounds by at most this


@dataclass(frozen=True)
class SetpointCheck:
    signal: str  # the contract's set-point signal
    config_key: str  # where the controller's value comes from
    plc: float | tuple[float, float] | None  # None: not read (or not a number)
    config: float | tuple[float, float]
    rule: str  # "equal", "at most", "inside"
    unit: str
    # checks this one is composed of: when one of them fails, it says it, not this one
    parts: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        p, c = self.plc, self.config
        if p is None:
            return False
        if self.rule == "equal":
            assert isinstance(p, float) and isinstance(c, float)
            return abs(p - c) <= EQUAL_WITHIN
        if self.rule == "at most":
            assert isinstance(p, float) and isinstance(c, float)
            return 0 < p <= c + WINDOW_SLACK
        assert isinstance(p, tuple) and isinstance(c, tuple)
        return c[0] - WINDOW_SLACK <= p[0] < p[1] <= c[1] + WINDOW_SLACK

    def describe(self) -> str:
        """e.g. "setpoint_swap_height 520 mm (PLC) != sequence.swap_height_mm 500 mm"."""
        word = {"equal": "!=", "at most": "wider than", "inside": "not inside"}[self.rule]
        if self.ok:
            word = {"equal": "=", "at most": "within", "inside": "inside"}[self.rule]
        return (f"{self.signal} {_fmt(self.plc, self.unit)} (PLC) {word} "
                f"{self.config_key} {_fmt(self.config, self.unit)}")


def _fmt(v: float | tuple[float, float] | None, unit: str) -> str:
    if v is None:
        return "not reported"
    if isinstance(v, tuple):
        return f"{v[0]:g}-{v[1]:g} {unit}"
    return f"{v:g} {unit}"


def _number(raw: Any) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    return float(raw)


def _window(raw: Any) -> tuple[float, float] | None:
    if not isinstance(raw, Sequence) or isinstance(raw, str) or len(raw) != 2:
        return None
    lo, hi = _number(raw[0]), _number(raw[1])
    return None if lo is None or hi is None else (lo, hi)


def check_setpoints(plc: Mapping[str, Any], cfg: StationConfig) -> list[SetpointCheck]:
    """Every set-point with the controller's value it must match, in contract order."""
    s, il = cfg.sequence, cfg.interlocks
    out = [
        SetpointCheck("setpoint_swap_height", "sequence.swap_height_mm",
                      _number(plc.get("setpoint_swap_height")), s.swap_height_mm, "equal",
                      "mm"),
        SetpointCheck("setpoint_height_tolerance", "sequence.height_tolerance_mm",
                      _number(plc.get("setpoint_height_tolerance")), s.height_tolerance_mm,
                      "at most", "mm"),
        SetpointCheck("setpoint_position_tolerance", "sequence.position_tolerance_mm",
                      _number(plc.get("setpoint_position_tolerance")),
                      s.position_tolerance_mm, "at most", "mm"),
        SetpointCheck("setpoint_shuttle_car_position", "interlocks.shuttle_car_mm",
                      _number(plc.get("setpoint_shuttle_car_position")), il.shuttle_car_mm,
                      "equal", "mm"),
    ]
    # The two compose: the PLC may call LIFT done anywhere in its own window, and every
    # height in it must count as lifted for the controller too (500.5 +- 5 reaches 505.5).
    h, tol = out[0].plc, out[1].plc
    lift = (h - tol, h + tol) if isinstance(h, float) and isinstance(tol, float) else None
    out.insert(2, SetpointCheck(
        "setpoint_swap_height +- setpoint_height_tolerance",
        "sequence.swap_height_mm +- height_tolerance_mm", lift,
        (s.swap_height_mm - s.height_tolerance_mm, s.swap_height_mm + s.height_tolerance_mm),
        "inside", "mm", parts=(out[0].signal, out[1].signal)))
    for run in ("unlock", "lock"):
        for what, unit in (("torque", "N*m"), ("angle", "deg")):
            key = f"{run}_{what}_{'nm' if what == 'torque' else 'deg'}"
            lo, hi = getattr(s, key)
            out.append(SetpointCheck(f"setpoint_{run}_{what}", f"sequence.{key}",
                                     _window(plc.get(f"setpoint_{run}_{what}")),
                                     (float(lo), float(hi)), "inside", unit))
    return out


_SIGNALS = ("setpoint_swap_height", "setpoint_height_tolerance", "setpoint_position_tolerance",
            "setpoint_shuttle_car_position", "setpoint_unlock_torque", "setpoint_unlock_angle",
            "setpoint_lock_torque", "setpoint_lock_angle")
# The interlock asks every scan, and set-points are constant while the PLC runs: the last
# answer is kept with what it was computed from (the configuration and the values read).
_last: tuple[object, str | None] | None = None


def setpoint_mismatch(plc: Mapping[str, Any], cfg: StationConfig) -> str | None:
    """None when every set-point fits the configuration, else one reason naming each
    mismatch with both values."""
    global _last
    sq = cfg.sequence
    key = (sq.swap_height_mm, sq.height_tolerance_mm, sq.position_tolerance_mm,
           cfg.interlocks.shuttle_car_mm, sq.unlock_torque_nm, sq.unlock_angle_deg,
           sq.lock_torque_nm, sq.lock_angle_deg, repr([plc.get(name) for name in _SIGNALS]))
    if _last is not None and _last[0] == key:
        return _last[1]
    why = _mismatch(plc, cfg)
    _last = (key, why)
    return why


def _mismatch(plc: Mapping[str, Any], cfg: StationConfig) -> str | None:
    checks = check_setpoints(plc, cfg)
    failed = {c.signal for c in checks if not c.ok}
    bad = [c.describe() for c in checks if not c.ok and not failed.intersection(c.parts)]
    return "; ".join(bad) if bad else None


__all__ = ["SetpointCheck", "check_setpoints", "setpoint_mismatch"]
