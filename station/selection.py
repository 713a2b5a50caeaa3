"""Pack selection: which charged, compatible, healthy pack a vehicle gets; where its pack goes.

Pure functions over the process image and the configuration, so every case is a unit test.
"""

from __future__ import annotations

from dataclasses import dataclass

from station.config import StationConfig
from station.image import Location, PackData, PackReport, PackState, ProcessImage
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


def choose_pack(
    image: ProcessImage, cfg: StationConfig, vehicle_family: int, now: float,
    excluded: frozenset[int] = frozenset(),
) -> Choice | NoChoice:
    """The fittest pack (highest SOC, then lowest slot) and a free slot for the depleted one;
    `excluded` slots (locked out after a pack event) are used for neither."""
    store = [s for s in free_slots(image) if s not in excluded]
    if not store:
        return NoChoice("no free rack slot for the depleted pack")
    fit: list[tuple[float, int, PackReport]] = []
    for slot, rep in rack_packs(image, cfg, now).items():
        if slot not in excluded and why_unfit(rep, vehicle_family, cfg) is None:
            fit.append((rep.soc_pct or 0.0, slot, rep))
    if not fit:
        occupied = len(image.plc.get("rack_slot_occupied", [])[:int(
            image.plc.get("rack_slot_count", 0))]) - len(store)
        unheard = occupied - len(rack_packs(image, cfg, now))
        if unheard > 0:
            return NoChoice(f"waiting for {unheard} rack pack(s) to report on CAN")
        return NoChoice(
            f"no charged pack for a family-{vehicle_family} vehicle "
            f"(SOC >= {cfg.selection.min_soc_pct} %, healthy)"
        )
    fit.sort(key=lambda t: (-t[0], t[1]))
    soc, slot, rep = fit[0]
    assert rep.serial is not None and rep.family is not None and rep.chemistry is not None
    info = PackInfo(rep.serial, rep.family, rep.chemistry, soc, rep.soh_pct, slot)
    return Choice(info, store[0])
