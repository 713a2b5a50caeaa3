"""Charging plan for the rack: which pack may charge, with which limits, under the station's
power cap. Pure logic, run in the core's scan.

A pack charges when it is identified, fresh on CAN, fault-free, not isolated, below the
target SOC and inside its chemistry's charge temperature window. Its limits are the lower
of what the pack itself reports (PackLimits: maximum charge voltage and current, maximum
cell charge voltage, cell count) and its chemistry profile's (cut-off cell voltage x the
pack's cell count, C-rate), and the charger's per-slot maximum. A pack that has not
reported its limits does not charge: the controller never guesses a cell count.

The station power cap (the lower of the configured one, the grid connection's ceiling, and
the network's in force now: station/network.py) bounds the sum of the power granted
(current limit x voltage limit, the most the pack can draw under the grant). Packs are
served in order of how close they are to becoming ready for the next swap (the fewest SOC
points short of the selection minimum first; packs already ready but below the target
come after all others), among those first the packs that a car waiting on the platform
for a charged pack could take, then by slot; the last one served gets what is left of the cap.

This is where sodium-ion shows its cold-weather advantage: at -10 C it charges while an LFP
pack beside it waits.
"""

from __future__ import annotations

from dataclasses import dataclass

from station.config import StationConfig
from station.image import Location, PackReport, PackState, ProcessImage
from station.pack_commands import PackCommandKind
from station.selection import rack_packs

MIN_GRANT_A = 1.0  # below this a grant is not worth opening the contactors for


@dataclass(frozen=True)
class ChargeGrant:
    location: Location
    serial: int | None
    command: PackCommandKind  # CHARGE_ENABLE | CHARGE_DISABLE
    current_limit_a: float
    voltage_limit_v: float
    reason: str

    @property
    def power_kw(self) -> float:
        return round(self.current_limit_a * self.voltage_limit_v / 1000.0, 2)


def charge_limits(rep: PackReport, cfg: StationConfig) -> tuple[float, float] | str:
    """(current A, voltage V) this pack may charge with now, or why it may not charge."""
    if rep.chemistry is None or rep.chemistry not in cfg.chemistry:
        return f"no limits for chemistry {rep.chemistry}"
    lim = cfg.chemistry[rep.chemistry]
    if rep.faults:
        return "faults: " + ", ".join(sorted(rep.faults))
    if rep.state == PackState.ISOLATED:
        return "isolated"
    if rep.soc_pct is not None and rep.soc_pct >= cfg.charging.target_soc_pct:
        return "full"
    t_lo = rep.min_cell_temp_c if rep.min_cell_temp_c is not None else -273.0
    t_hi = rep.max_cell_temp_c if rep.max_cell_temp_c is not None else 1000.0
    if t_lo < lim.charge_temp_min_c:
        return f"too cold ({t_lo:g} C < {lim.charge_temp_min_c:g} C)"
    if t_hi > lim.charge_temp_max_c:
        return f"too warm ({t_hi:g} C > {lim.charge_temp_max_c:g} C)"
    if rep.cell_count is None or rep.max_charge_voltage_v is None or \
            rep.max_charge_current_a is None:
        return "pack has not reported its charge limits"
    cell_v = min(lim.charge_cutoff_cell_v, rep.max_cell_charge_v or lim.charge_cutoff_cell_v)
    voltage = min(cell_v * rep.cell_count, rep.max_charge_voltage_v)
    # Rated values, not the present voltage: a limit that moved with every reading would be
    # a new grant, journaled, every second.
    capacity_ah = rep.rated_capacity_ah or (rep.rated_energy_kwh or 0.0) * 1000.0 / voltage
    current = min(capacity_ah * lim.max_charge_c_rate, rep.max_charge_current_a,
                  cfg.charging.max_pack_current_a)
    if current < MIN_GRANT_A:
        return "no charge current allowed"
    return round(current, 1), round(voltage, 1)


def _priority(rep: PackReport, slot: int, cfg: StationConfig,
              waiting_family: int | None) -> tuple[int, int, float, int]:
    soc = rep.soc_pct or 0.0
    short = cfg.selection.min_soc_pct - soc
    # a pack the car waiting on the platform could take comes before any other
    wanted = 0 if waiting_family is not None and rep.family is not None and \
        cfg.selection.accepts(waiting_family, rep.family) else 1
    if short > 0:
        return 0, wanted, short, slot  # not ready yet: the closest to ready first
    return 1, wanted, cfg.charging.target_soc_pct - soc, slot  # ready: topping up last


def plan_charging(image: ProcessImage, cfg: StationConfig, now: float,
                  excluded: dict[int, str] | None = None,
                  waiting_family: int | None = None,
                  cap_kw: float | None = None) -> list[ChargeGrant]:
    """A grant (enable with limits, or disable with the reason) for every rack pack heard;
    `excluded` slots (locked out, stalled) get a disable with the reason given. Packs that
    a car waiting for a charged pack (`waiting_family`) could take are served first.
    `cap_kw` is the cap in force now (the network's, station/network.py `cap_at`); never
    above the configured `station_power_cap_kw`."""
    excluded = excluded or {}
    cap = cfg.charging.station_power_cap_kw if cap_kw is None else \
        min(cap_kw, cfg.charging.station_power_cap_kw)
    budget_kw = cap
    out: list[ChargeGrant] = []
    wanting: list[tuple[tuple[int, int, float, int], int, PackReport, float, float]] = []
    for slot, rep in rack_packs(image, cfg, now).items():
        loc = Location.rack(slot)
        limits = excluded[slot] if slot in excluded else charge_limits(rep, cfg)
        if isinstance(limits, str):
            out.append(ChargeGrant(loc, rep.serial, PackCommandKind.CHARGE_DISABLE, 0.0, 0.0,
                                   limits))
            continue
        current, voltage = limits
        wanting.append((_priority(rep, slot, cfg, waiting_family), slot, rep, current,
                        voltage))
    for _, slot, rep, current, voltage in sorted(wanting, key=lambda w: w[0]):
        loc = Location.rack(slot)
        affordable = budget_kw * 1000.0 / voltage
        if affordable < MIN_GRANT_A:
            out.append(ChargeGrant(loc, rep.serial, PackCommandKind.CHARGE_DISABLE, 0.0, 0.0,
                                   f"station power cap {cap:g} kW reached"))
            continue
        granted = min(current, float(int(affordable * 10)) / 10.0)  # round down: never over
        reason = "charging" if granted == current else \
            f"charging, limited by the station power cap ({granted:g} of {current:g} A)"
        grant = ChargeGrant(loc, rep.serial, PackCommandKind.CHARGE_ENABLE, granted, voltage,
                            reason)
        budget_kw -= granted * voltage / 1000.0
        out.append(grant)
    out.sort(key=lambda g: g.location)
    return out


def granted_power_kw(grants: list[ChargeGrant]) -> float:
    return sum(g.current_limit_a * g.voltage_limit_v / 1000.0 for g in grants
               if g.command == PackCommandKind.CHARGE_ENABLE)
