"""Is the machine at home? Judged from the PLC's read-back alone, without any I/O.

Home is where a swap may start from and where a reset may make the station ready:

- the lift down (`lift_height` within `sequence.height_tolerance_mm` of 0);
- the shuttle home (`shuttle_position` within `sequence.shuttle_home_tolerance_mm`) and
  empty (`shuttle_pack_present` false);
- the stacker carrying no pack (`stacker_pack_present` false);
- a car on the platform with a pack in its bay has all its bolts tight (`bolts_tight` =
  `bolt_count`). With no car, or no pack in the bay, the bolts are not judged: the PLC
  contract calls `bolts_tight` meaningless then (it reads whatever the last car left; the
  simulator keeps them tight, a PLC may read 0 of 0). Before UNLOCK it equals
  `bolt_count`: a car arrives bolted.

After an abort or a stop mid-swap the machine may be anywhere (a car lifted with its bolts
loose, a pack on the shuttle); RESET and START are refused there, and Idle holds the swap
back, with the reason `away_from_home` gives. The way back is maintenance mode's recovery
plan (station/recovery.py, station/maintenance.py), or the technician's hand pendant.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from station.config import SequenceSection

PREFIX = "machine away from home: "


def _num(plc: Mapping[str, Any], name: str) -> float:
    try:
        return float(plc.get(name, 0) or 0)
    except (TypeError, ValueError):
        return 0.0


def away_from_home(plc: Mapping[str, Any], seq: SequenceSection) -> str | None:
    """None when the read-back shows the machine at home, else a reason naming every thing
    that is off, e.g. "machine away from home: car lifted at 500 mm, 0 of 10 bolts tight,
    pack on the shuttle"."""
    off: list[str] = []
    car = bool(plc.get("vehicle_present"))
    h = _num(plc, "lift_height")
    if abs(h) > seq.height_tolerance_mm:
        off.append(f"{'car lifted' if car else 'lift'} at {h:.0f} mm")
    if car and plc.get("vehicle_pack_present"):
        tight, n = int(_num(plc, "bolts_tight")), int(_num(plc, "bolt_count"))
        if tight < n:
            off.append(f"{tight} of {n} bolts tight")
    pos = _num(plc, "shuttle_position")
    shuttle_away = abs(pos) > seq.shuttle_home_tolerance_mm
    if plc.get("shuttle_pack_present"):
        off.append("pack on the shuttle" + (f" at {pos:.0f} mm" if shuttle_away else ""))
    elif shuttle_away:
        off.append(f"shuttle at {pos:.0f} mm, not home")
    if plc.get("stacker_pack_present"):
        slot = int(_num(plc, "stacker_slot"))
        off.append("pack on the stacker" + (f" at slot {slot}" if slot else ""))
    return PREFIX + ", ".join(off) if off else None


def same_things_off(a: str | None, b: str | None) -> bool:
    """Do two reasons name the same things off, whatever the readings (a lift lowered by
    hand reads another height every poll: the same reason, not a new one to journal)?"""
    if a is None or b is None:
        return a is b
    return re.sub(r"\d+", "#", a) == re.sub(r"\d+", "#", b)


__all__ = ["PREFIX", "away_from_home", "same_things_off"]
