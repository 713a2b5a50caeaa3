"""Pack selection: which charged, compatible, healthy pack a vehicle gets; where its pack goes.

Pure functions over the process image and the configuration, so every case is a unit test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from station.config import StationConfig
from station.image import Location, PackData, PackReport, PackState, ProcessImage
from station.network import Reservation
from station.plan import PackInfo


@dataclass(frozen=True)
class Choice:
    pack: PackInfo
    store_slot: int


@dataclass(frozen=True)
class NoChoice:
    reason: str


def rack_packs(image: ProcessImage, cfg: StationConfig, now: float) -> dict[int, PackReport]:
    """Occupied rack slots whose pack is heard on CAN, fresh and identified: slot -> report."""
    occupied = image.plc.get("rack_slot_occupied", [])
    slots = int(image.plc.get("rack_slot_count", 0))
    out: dict[int, PackReport] = {}
    for slot in range(1, min(slots, len(occupied)) + 1):
        if not occupied[slot - 1]:
            continue
        rep = image.packs.get(Location.rack(slot))
        if rep is None or not rep.identified:
            continue
        if not image.fresh(rep, PackData.STATUS, now):
            continue
        out[slot] = rep
    return out


def free_slots(image: ProcessImage) -> list[int]:
    occupied = image.plc.get("rack_slot_occupied", [])
    slots = int(image.plc.get("rack_slot_count", 0))
    return [s for s in range(1, min(slots, len(occupied)) + 1) if not occupied[s - 1]]


def why_unfit(rep: PackReport, vehicle_family: int, cfg: StationConfig) -> str | None:
    """Why a rack pack cannot go into this vehicle, or None if it can."""
    assert rep.family is not None and rep.chemistry is not None
    if not cfg.selection.accepts(vehicle_family, rep.family):
        return f"family {rep.family} not accepted by a family-{vehicle_family} vehicle"
    if rep.faults:
        return "faults: " + ", ".join(sorted(rep.faults))
    if rep.state == PackState.ISOLATED:
        return "isolated"
    if rep.soc_pct is None or rep.soc_pct < cfg.selection.min_soc_pct:
        return f"SOC {rep.soc_pct} % below {cfg.selection.min_soc_pct} %"
    if rep.soh_pct is not None and rep.soh_pct < cfg.selection.min_soh_pct:
        return f"SOH {rep.soh_pct} % below {cfg.selection.min_soh_pct} %"
    limits = cfg.chemistry.get(rep.chemistry)
    if limits is None:
        return f"chemistry {rep.chemistry} has no limits configured"
    if rep.max_cell_temp_c is not None and rep.max_cell_temp_c >= limits.alarm_temp_c:
        return f"cell temperature {rep.max_cell_temp_c} C at or above {limits.alarm_temp_c} C"
    return None


def _fit(image: ProcessImage, cfg: StationConfig, vehicle_family: int, now: float,
         skip: frozenset[int] | set[int], min_soc_pct: float = 0.0,
         ) -> list[tuple[float, int, PackReport]]:
    """(SOC, slot, report) of every rack pack this vehicle could take, not in `skip`."""
    fit: list[tuple[float, int, PackReport]] = []
    for slot, rep in rack_packs(image, cfg, now).items():
        if slot not in skip and why_unfit(rep, vehicle_family, cfg) is None and \
                (rep.soc_pct or 0.0) >= min_soc_pct:
            fit.append((rep.soc_pct or 0.0, slot, rep))
    fit.sort(key=lambda t: (-t[0], t[1]))  # the fullest, then the lowest slot
    return fit


def _info(soc: float, slot: int, rep: PackReport) -> PackInfo:
    assert rep.serial is not None and rep.family is not None and rep.chemistry is not None
    return PackInfo(rep.serial, rep.family, rep.chemistry, soc, rep.soh_pct, slot,
                    rep.rated_energy_kwh)


def choose_pack(
    image: ProcessImage, cfg: StationConfig, vehicle_family: int, now: float,
    excluded: frozenset[int] = frozenset(),
    reserved: Mapping[int, Reservation] | None = None,
    own: Reservation | None = None,
) -> Choice | NoChoice:
    """The fittest pack (highest SOC, then lowest slot) and a free slot for the depleted one;
    `excluded` slots (locked out) are used for neither. A pack `reserved` for another
    vehicle is never given; a vehicle with its `own` reservation gets that pack while it
    still holds the reserved serial and is fit (SOC at least the reservation's minimum),
    else the fittest unreserved one."""
    reserved = reserved or {}
    store = [s for s in free_slots(image) if s not in excluded]
    if not store:
        return NoChoice("no free rack slot for the depleted pack")
    packs = rack_packs(image, cfg, now)
    if own is not None and own.slot not in excluded:
        rep = packs.get(own.slot)
        if rep is not None and rep.serial == own.serial and \
                why_unfit(rep, vehicle_family, cfg) is None and \
                (rep.soc_pct or 0.0) >= own.min_soc_pct:
            return Choice(_info(rep.soc_pct or 0.0, own.slot, rep), store[0])
    fit = _fit(image, cfg, vehicle_family, now, excluded | set(reserved))
    if not fit:
        occupied = len(image.plc.get("rack_slot_occupied", [])[:int(
            image.plc.get("rack_slot_count", 0))]) - len(store)
        unheard = occupied - len(packs)
        if unheard > 0:
            return NoChoice(f"waiting for {unheard} rack pack(s) to report on CAN")
        kept = len(_fit(image, cfg, vehicle_family, now, excluded)) if reserved else 0
        return NoChoice(
            f"no charged pack for a family-{vehicle_family} vehicle "
            f"(SOC >= {cfg.selection.min_soc_pct} %, healthy)"
            + (f"; {kept} reserved for other vehicles" if kept else "")
        )
    soc, slot, rep = fit[0]
    return Choice(_info(soc, slot, rep), store[0])


def pack_to_reserve(
    image: ProcessImage, cfg: StationConfig, vehicle_family: int, min_soc_pct: float,
    now: float, skip: frozenset[int],
) -> Choice | NoChoice:
    """The pack a reservation would keep: what selection would give this vehicle now (and
    at least `min_soc_pct`), outside `skip` (locked out, reserved, the running swap's);
    Choice.store_slot is meaningless here (0)."""
    fit = _fit(image, cfg, vehicle_family, now, skip,
               max(min_soc_pct, cfg.selection.min_soc_pct))
    if not fit:
        return NoChoice(f"no ready pack for a family-{vehicle_family} vehicle with SOC >= "
                        f"{max(min_soc_pct, cfg.selection.min_soc_pct):g} % that is not "
                        "already reserved")
    soc, slot, rep = fit[0]
    return Choice(_info(soc, slot, rep), 0)


def ready(rep: PackReport, cfg: StationConfig) -> bool:
    """Fit for selection now (at selection.min_soc_pct) by a vehicle of its own family."""
    return rep.family is not None and rep.chemistry is not None and \
        why_unfit(rep, rep.family, cfg) is None
