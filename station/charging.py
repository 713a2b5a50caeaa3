"""Charging plan for the rack: which pack may charge, with which limits. Pure logic.

A pack charges when it is identified, fresh on CAN, fault-free, not isolated, below the
target SOC and inside its chemistry's charge temperature window. This is where sodium-ion
shows its cold-weather advantage: at -10 C it charges while an LFP pack beside it waits.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.bms.protocol import rack_sa
from station.config import StationConfig
from station.image import PackReport, ProcessImage
from station.selection import rack_packs

CELLS_IN_SERIES = {"nmc": 96, "lfp": 120, "sodium_ion": 112}  # nominal, for the voltage limit


@dataclass(frozen=True)
class PackControl:
    slot: int
    source: int
    command: str  # charge_enable | charge_disable
    current_limit_a: float
    voltage_limit_v: float
    reason: str


def charge_decision(rep: PackReport, cfg: StationConfig) -> tuple[bool, str]:
    if rep.chemistry is None or rep.chemistry not in cfg.chemistry:
        return False, f"no limits for chemistry {rep.chemistry}"
    lim = cfg.chemistry[rep.chemistry]
    if rep.faults:
        return False, "faults: " + ", ".join(sorted(rep.faults))
    if rep.state == "isolated":
        return False, "isolated"
    if rep.soc_pct is not None and rep.soc_pct >= cfg.selection.charge_target_soc_pct:
        return False, "full"
    t_lo = rep.min_cell_temp_c if rep.min_cell_temp_c is not None else -273.0
    t_hi = rep.max_cell_temp_c if rep.max_cell_temp_c is not None else 1000.0
    if t_lo < lim.charge_temp_min_c:
        return False, f"too cold ({t_lo} C < {lim.charge_temp_min_c} C)"
    if t_hi > lim.charge_temp_max_c:
        return False, f"too warm ({t_hi} C > {lim.charge_temp_max_c} C)"
    return True, "charging"


def plan_charging(image: ProcessImage, cfg: StationConfig, now: float,
                  locked_out: frozenset[int] = frozenset()) -> list[PackControl]:
    out = []
    for slot, rep in rack_packs(image, cfg, now).items():
        ok, why = charge_decision(rep, cfg)
        if slot in locked_out:
            ok, why = False, "slot locked out after a pack event"
        chem = rep.chemistry or ""
        lim = cfg.chemistry.get(chem)
        if not ok or lim is None:
            out.append(PackControl(slot, rack_sa(slot), "charge_disable", 0.0, 0.0, why))
            continue
        capacity_ah = (rep.rated_energy_kwh or 0.0) * 1000.0 / max(rep.voltage_v or 400.0, 1.0)
        current = round(min(capacity_ah * lim.max_charge_c_rate, 500.0), 1)
        voltage = round(lim.charge_cutoff_cell_v * CELLS_IN_SERIES.get(chem, 96), 1)
        out.append(PackControl(slot, rack_sa(slot), "charge_enable", current, voltage, why))
    return out
