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


Key = tuple[Location, int | None, float]  # (location, serial, arrival): a new start


class TempRiseTracker:
    """Cell temperature rise rate per pack, over a sliding window (°C per real minute)."""

    def __init__(self) -> None:
        self._samples: dict[Key, deque[tuple[float, float]]] = {}

    MAX_SOURCES = 256  # more than a station's packs: beyond, the long-silent are forgotten

    def add(self, source: Key, t: float, temp: float, window_s: float) -> None:
        if source not in self._samples and len(self._samples) >= self.MAX_SOURCES:
            # every arrival is a new source: forget the packs not heard for ten windows
            self._samples = {k: v for k, v in self._samples.items()
                             if v and t - v[-1][0] < 10 * window_s}
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


# What the station binds to a location (station/pack_trust.py): the pack's identity (None
# until it has said who it is) and when it arrived there.
BindingOf = Callable[[Location], tuple[PackIdentity | None, float]]


def pack_events(image: ProcessImage, cfg: StationConfig, rates: TempRiseTracker,
                now: float, binding_of: BindingOf | None = None) -> list[PackEvent]:
    """Every pack event visible now, at locations the PLC shows full (fresh reports only: a
    silent pack is another matter). `binding_of` names the pack bound to a location and
    when it arrived: the serial and chemistry a frame claims are not evidence of which pack
    it is (a pack not identified yet is judged by the strictest chemistry's limits), and
    what was heard there before it arrived belongs to the pack that was there before."""
    out: list[PackEvent] = []
    window = rise_window_s(cfg)
    for loc, rep in image.packs.items():
        if not image.pack_present(loc):
            continue
        if binding_of is None:
            serial, chemistry, since = rep.serial, rep.chemistry, float("-inf")
        else:
            ident, since = binding_of(loc)
            serial, chemistry = (None, None) if ident is None else (ident.serial,
                                                                    ident.chemistry)
        status = rep.last_seen.get(PackData.STATUS, float("-inf")) >= since and \
            image.fresh(rep, PackData.STATUS, now)
        cells = rep.last_seen.get(PackData.CELLS, float("-inf")) >= since and \
            image.fresh(rep, PackData.CELLS, now)
        if not status and not cells:
            continue
        key = (loc, serial, since)
        if status and rep.max_cell_temp_c is not None:
            rates.add(key, rep.last_seen[PackData.STATUS], rep.max_cell_temp_c, window)
        ev = _event_of(loc, serial, chemistry, rep, cfg, rates.rate_per_min(key, window),
                       status, cells)
        if ev is not None:
            out.append(ev)
    return out


def _event_of(loc: Location, serial: int | None, chemistry: str | None, rep: PackReport,
              cfg: StationConfig, rate: float | None, status: bool = True,
              cells: bool = True) -> PackEvent | None:
    """The pack event its report shows; `status`/`cells`: whether those readings are this
    pack's and fresh (the others are not judged)."""
    flags = (rep.faults | rep.faults_latched) & EMERGENCY_FLAGS if cells else frozenset()
    temps = (rep.max_cell_temp_c, rep.peak_cell_temp_c) if status else ()
    temp = max(t for t in (*temps, -273.0) if t is not None)
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
    if cells and rep.insulation_kohm is not None and \
            rep.insulation_kohm < cfg.pack_safety.min_insulation_kohm:
        return PackEvent(loc, serial, "insulation",
                         f"insulation {rep.insulation_kohm:.0f} kOhm below "
                         f"{cfg.pack_safety.min_insulation_kohm:.0f} kOhm")
    return None
