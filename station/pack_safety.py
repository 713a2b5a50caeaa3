"""Pack safety: thermal and insulation events on any pack the station can hear.

A pack's BMS fault flag, a cell temperature at or above its chemistry's alarm limit, a
temperature rising faster than the configured rate, or insulation below the limit is a
pack event (GB 38031-2025: treat as an emergency). The core isolates the pack (contactors
open, no charging), locks its rack slot out of selection and raises an alarm; if the pack
is near the running swap it aborts motion.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from station.config import StationConfig
from station.image import Location, PackData, PackFault, PackReport, ProcessImage

EMERGENCY_FLAGS = frozenset({PackFault.OVER_TEMP, PackFault.OVER_VOLTAGE,
                             PackFault.UNDER_VOLTAGE, PackFault.INSULATION,
                             PackFault.THERMAL_ALARM})


@dataclass(frozen=True)
class PackEvent:
    location: Location
    serial: int | None
    kind: str  # fault_flag | over_temp | temp_rise | insulation
    detail: str


Key = tuple[Location, int | None]  # (location, serial): another pack there starts anew


class TempRiseTracker:
    """Cell temperature rise rate per pack, over a sliding window (°C per real minute)."""

    def __init__(self) -> None:
        self._samples: dict[Key, deque[tuple[float, float]]] = {}

    def add(self, source: Key, t: float, temp: float, window_s: float) -> None:
        q = self._samples.setdefault(source, deque())
        if q and q[-1][0] == t:
            return
        q.append((t, temp))
        while len(q) > 2 and t - q[1][0] >= window_s:
            q.popleft()

    def rate_per_min(self, source: Key, window_s: float) -> float | None:
        q = self._samples.get(source)
        if not q or len(q) < 2:
            return None
        (t0, c0), (t1, c1) = q[0], q[-1]
        if t1 - t0 < window_s * 0.5:
            return None
        return (c1 - c0) / (t1 - t0) * 60.0

    def forget(self, source: Key) -> None:
        self._samples.pop(source, None)


def rise_window_s(cfg: StationConfig) -> float:
    return max(1.0, cfg.pack_safety.temp_rise_window_s / cfg.sequence.speed_factor)


def pack_events(image: ProcessImage, cfg: StationConfig, rates: TempRiseTracker,
                now: float) -> list[PackEvent]:
    """Every pack event visible now (fresh reports only: a silent pack is another matter)."""
    out: list[PackEvent] = []
    window = rise_window_s(cfg)
    for loc, rep in image.packs.items():
        if not image.fresh(rep, PackData.STATUS, now) and \
                not image.fresh(rep, PackData.CELLS, now):
            continue
        key = (loc, rep.serial)
        if rep.max_cell_temp_c is not None:
            rates.add(key, rep.last_seen.get(PackData.STATUS, now), rep.max_cell_temp_c, window)
        ev = _event_of(loc, rep, cfg, rates.rate_per_min(key, window))
        if ev is not None:
            out.append(ev)
    return out


def _event_of(loc: Location, rep: PackReport, cfg: StationConfig, rate: float | None
              ) -> PackEvent | None:
    flags = (rep.faults | rep.faults_latched) & EMERGENCY_FLAGS
    temp = max(t for t in (rep.max_cell_temp_c, rep.peak_cell_temp_c, -273.0) if t is not None)
    if flags:
        return PackEvent(loc, rep.serial, "fault_flag",
                         "BMS reports " + ", ".join(sorted(flags)))
    lim = cfg.chemistry.get(rep.chemistry or "")
    if lim is not None and temp >= lim.alarm_temp_c:
        return PackEvent(loc, rep.serial, "over_temp",
                         f"cell temperature {temp:.0f} C at or above "
                         f"{lim.alarm_temp_c:.0f} C ({rep.chemistry})")
    limit = cfg.pack_safety.max_temp_rise_c_per_min * cfg.sequence.speed_factor
    if rate is not None and rate > limit:
        return PackEvent(loc, rep.serial, "temp_rise",
                         f"temperature rising {rate / cfg.sequence.speed_factor:.1f} C/min, "
                         f"limit {cfg.pack_safety.max_temp_rise_c_per_min:.1f} C/min")
    if rep.insulation_kohm is not None and \
            rep.insulation_kohm < cfg.pack_safety.min_insulation_kohm:
        return PackEvent(loc, rep.serial, "insulation",
                         f"insulation {rep.insulation_kohm:.0f} kOhm below "
                         f"{cfg.pack_safety.min_insulation_kohm:.0f} kOhm")
    return None
