"""Which pack frames wake the scan at once (swapd's CAN ingest, issue 11).

Every pack frame is folded into the process image when it arrives, stamped with its time
(staleness is judged per frame). Waking the core's whole scan for each of them is what made
CAN ingest cost: a station hears ~500 frames/s of its own packs, a busy bus thousands, and
a scan per frame judged again and again what no frame had changed. The scan runs anyway at
least every TICK_S (50 ms) and on a PLC read that changed something; what a frame says
between two scans is not lost (the image latches the peak temperature, fault flags,
identities and ratings until the scan has judged them, `ProcessImage.scanned`).

So a frame wakes the scan at once only when it can change a decision now:
- the frequent kinds (STATUS, CELLS; 10 Hz per pack): when the reading crosses what the
  pack-safety rules act on at once: a cell temperature crossing any chemistry's alarm
  limit (the strictest judges a pack not yet identified, its own an identified one), a
  fault flag or the pack state changing, insulation crossing
  its limit, readings becoming implausible (lowest above highest, SOC outside 0-100 %);
- the rare kinds (IDENTITY, HEALTH, LIMITS; 1 Hz per pack, yet 69 scans/s for 23 packs):
  when what they say changes (another identity, other ratings or capacity: what the trust
  rules judge), and the bay's identity always (the identify step waits for a fresh one);
- anything else (the car's VIN, a pack's nameplate or cell arrays): always; they are rare;
- the first frame of a kind from a location, or of a new report there: always.
A routine reading (current, voltage, SOC, a temperature below the alarm limit) waits for
the next scan, at most TICK_S away. The temperature rise rate is judged on the scan's own
samples, so it does not need a wake-up per frame either.
"""

from __future__ import annotations

from station.config import StationConfig
from station.image import Location, PackData, PackReport

Key = tuple[object, ...]

class ScanWake:
    """Remembers, per location and kind, what the last frame meant for the decisions; a
    frame wakes the scan when that changes."""

    def __init__(self, cfg: StationConfig) -> None:
        # every chemistry's alarm limit: a pack not yet identified is judged by the
        # strictest (pack_safety), an identified one by its own; crossing any of them can
        # change a decision, so the key counts the limits a reading is at or above
        self.alarm_limits_c = tuple(sorted({c.alarm_temp_c for c in cfg.chemistry.values()}))
        self.alarm_c = self.alarm_limits_c[0]
        self.min_insulation_kohm = cfg.pack_safety.min_insulation_kohm
        self._last: dict[tuple[int, PackData], tuple[PackReport, Key]] = {}  # by slot

    def wakes(self, loc: Location, kind: PackData | None, rep: PackReport | None) -> bool:
        """After a frame of `kind` was folded into `rep` at `loc`: must the scan run now?
        kind None (the car's VIN) or rep None: yes."""
        if kind is None or rep is None or (kind is PackData.IDENTITY and loc.is_bay):
            return True
        key = self._key(kind, rep)
        slot = (loc.slot, kind)
        last = self._last.get(slot)
        if last is not None and last[0] is rep and last[1] == key:
            return False
        self._last[slot] = (rep, key)  # a new report (another pack) is a change
        return True

    def _key(self, kind: PackData, rep: PackReport) -> Key:
        if kind is PackData.STATUS:
            return self._status_key(rep)
        if kind is PackData.CELLS:
            return self._cells_key(rep)
        if kind is PackData.IDENTITY:
            return (rep.identity,)
        if kind is PackData.HEALTH:
            return (rep.rated_capacity_ah, rep.soh_pct, rep.cycle_count)
        return (rep.ratings, rep.max_charge_current_a)  # LIMITS

    def _status_key(self, rep: PackReport) -> Key:
        hi, lo, soc = rep.max_cell_temp_c, rep.min_cell_temp_c, rep.soc_pct
        return (0 if hi is None else sum(hi >= limit for limit in self.alarm_limits_c),
                hi is not None and lo is not None and lo > hi,
                soc is not None and not 0.0 <= soc <= 100.0)

    def _cells_key(self, rep: PackReport) -> Key:
        vhi, vlo, ins = rep.max_cell_v, rep.min_cell_v, rep.insulation_kohm
        return (rep.faults, rep.state,
                ins is not None and ins < self.min_insulation_kohm,
                vhi is not None and vlo is not None and vlo > vhi)
