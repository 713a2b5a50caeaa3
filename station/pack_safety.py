"""Pack safety: thermal and insulation events on any pack the station can hear.

A pack's BMS fault flag, a cell temperature at or above its chemistry's alarm limit, a
temperature rising faster than the configured rate, or insulation below the limit is a
pack event (GB 38031-2025: treat as an emergency). The core isolates the pack (contactors
open, no charging), locks its rack slot out of selection and raises an alarm; if the pack
is near the running swap it aborts motion.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from station.config import StationConfig
from station.image import Location, PackData, PackFault, PackIdentity, PackReport, ProcessImage

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
                now: float, identity_of: Callable[[Location], PackIdentity | None] | None = None
                ) -> list[PackEvent]:
    """Every pack event visible now, at locations the PLC shows full (fresh reports only: a
    silent pack is another matter). `identity_of` names the pack bound to a location: the
    serial and chemistry a frame claims are not evidence of which pack it is (a pack not
    bound yet is judged by the strictest chemistry's limits)."""
    out: list[PackEvent] = []
    window = rise_window_s(cfg)
    for loc, rep in image.packs.items():
        if not image.pack_present(loc):
            continue
        if not image.fresh(rep, PackData.STATUS, now) and \
                not image.fresh(rep, PackData.CELLS, now):
            continue
        if identity_of is None:
            serial, chemistry = rep.serial, rep.chemistry
        else:
            ident = identity_of(loc)
            serial, chemistry = (None, None) if ident is None else (ident.serial,
                                                                    ident.chemistry)
        key = (loc, serial)
        if rep.max_cell_temp_c is not None:
            rates.add(key, rep.last_seen.get(PackData.STATUS, now), rep.max_cell_temp_c, window)
        ev = _event_of(loc, serial, chemistry, rep, cfg, rates.rate_per_min(key, window))
        if ev is not None:
            out.append(ev)
    return out


def _event_of(loc: Location, serial: int | None, chemistry: str | None, rep: PackReport,
              cfg: StationConfig, rate: float | None) -> PackEvent | None:
    flags = (rep.faults | rep.faults_latched) & EMERGENCY_FLAGS
    temp = max(t for t in (rep.max_cell_temp_c, rep.peak_cell_temp_c, -273.0) if t is not None)
    if flags:
        return PackEvent(loc, serial, "fault_flag",
                         "BMS reports " + ", ".join(sorted(flags)))
    lim = cfg.chemistry.get(chemistry or "")
    alarm_c = lim.alarm_temp_c if lim is not None else \
        min(c.alarm_temp_c for c in cfg.chemistry.values())  # unknown: the strictest
    if temp >= alarm_c:
        return PackEvent(loc, serial, "over_temp",
                         f"cell temperature {temp:.0f} C at or above "
                         f"{alarm_c:.0f} C ({chemistry or 'chemistry not known'})")
    limit = cfg.pack_safety.max_temp_rise_c_per_min * cfg.sequence.speed_factor
    if rate is not None and rate > limit:
        return PackEvent(loc, serial, "temp_rise",
                         f"temperature rising {rate / cfg.sequence.speed_factor:.1f} C/min, "
                         f"limit {cfg.pack_safety.max_temp_rise_c_per_min:.1f} C/min")
    if rep.insulation_kohm is not None and \
            rep.insulation_kohm < cfg.pack_safety.min_insulation_kohm:
        return PackEvent(loc, serial, "insulation",
                         f"insulation {rep.insulation_kohm:.0f} kOhm below "
                         f"{cfg.pack_safety.min_insulation_kohm:.0f} kOhm")
    return None
