"""Which CAN bus serves which pack location: parsed and checked once, for swapd's `[can]`
and the simulator's `[sim.can]` alike (the two must describe the same wiring).

A location is "bay" (the vehicle's battery bay: the car's pack and the car itself, which
sends its VIN from the bay's address), "slot:N" (rack slot N) or "slot:N-M" (slots N to M).
Addresses are fixed by location (drivers/bms/protocol.py); there is no J1939 address claim.
This module imports no driver (the core imports the configuration that uses it).
Every location is served by exactly one bus: a location on two buses, or one left out, is
an error that names it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

MAX_RACK_SLOTS = 0x60  # drivers.bms.protocol.MAX_RACK_SLOTS (a unit test keeps them equal)
BAY = "bay"
BAY_SLOT = 0  # the bay among a bus's slots, as in station.image.Location
SHORTHAND_BUS = "pack"  # the single bus of `[can]` without `[[can.buses]]`: every location
BUS_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
_SLOTS = re.compile(r"^slot:([0-9]{1,3})(?:-([0-9]{1,3}))?$")


def parse_location(text: str) -> list[int]:
    """"bay" -> [0]; "slot:3" -> [3]; "slot:1-12" -> [1, ..., 12]. ValueError says why not."""
    if text == BAY:
        return [BAY_SLOT]
    m = _SLOTS.match(text)
    if m is None:
        raise ValueError(f"location {text!r}: \"bay\", \"slot:N\" or \"slot:N-M\"")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) is not None else lo
    if not 1 <= lo <= hi <= MAX_RACK_SLOTS:
        raise ValueError(f"location {text!r}: slots from 1 to {MAX_RACK_SLOTS}, the first "
                         "not above the last")
    return list(range(lo, hi + 1))


def check_layout(buses: Sequence[tuple[str, Sequence[str]]], where: str,
                 slots: int | None = None) -> dict[str, frozenset[int]]:
    """Bus name -> the slots it serves (0: the bay). Every location served by exactly one
    bus: the bay, and rack slots 1..`slots` (None: 1..the highest slot named; the station
    learns the rack's size from its PLC). ValueError naming the bus, the location and the
    problem (`where` is the config key of the list, e.g. "can.buses")."""
    if not buses:
        raise ValueError(f"{where}: at least one bus")
    served: dict[str, frozenset[int]] = {}
    owner: dict[int, str] = {}
    for i, (name, locations) in enumerate(buses):
        if name in served:
            raise ValueError(f"{where}.{i}.name: bus {name!r} named twice")
        mine: set[int] = set()
        for text in locations:
            try:
                slot_list = parse_location(text)
            except ValueError as exc:
                raise ValueError(f"{where}.{i}.locations: {exc}") from None
            for slot in slot_list:
                if slot in owner:
                    other = owner[slot]
                    raise ValueError(
                        f"{where}.{i}.locations: {describe(slot)} is served by bus {other!r} "
                        f"and bus {name!r}" + (" (named twice)" if other == name else "")
                        + ": each location on exactly one bus")
                owner[slot] = name
                mine.add(slot)
        if not mine:
            raise ValueError(f"{where}.{i}.locations: bus {name!r} serves no location")
        served[name] = frozenset(mine)
    if BAY_SLOT not in owner:
        raise ValueError(f"{where}: no bus serves the bay (add \"bay\" to one bus's locations)")
    top = max(owner) if slots is None else slots
    if slots is not None and max(owner) > slots:
        raise ValueError(f"{where}: {describe(max(owner))} is beyond the station's {slots} "
                         "rack slots")
    missing = [s for s in range(1, top + 1) if s not in owner]
    if missing:
        raise ValueError(f"{where}: no bus serves {_ranges(missing)} (a gap: every rack "
                         f"slot from 1 to {top} must be on one bus)")
    return served


def addresses(slots: Iterable[int]) -> frozenset[int]:
    """The source addresses of the packs (and the car) at these locations (the drivers'
    business: imported when asked, never by the configuration)."""
    from drivers.bms.protocol import VEHICLE_PACK_SA, rack_sa

    return frozenset(VEHICLE_PACK_SA if s == BAY_SLOT else rack_sa(s) for s in slots)


def every_location() -> list[str]:
    """The locations of a single bus that serves them all (the `[can]` shorthand)."""
    return [BAY, f"slot:1-{MAX_RACK_SLOTS}"]


def describe(slot: int) -> str:
    return "the bay" if slot == BAY_SLOT else f"rack slot {slot}"


def _ranges(slots: list[int]) -> str:
    parts: list[str] = []
    start = prev = slots[0]
    for s in [*slots[1:], -1]:
        if s == prev + 1:
            prev = s
            continue
        parts.append(f"slot:{start}" if start == prev else f"slot:{start}-{prev}")
        start = prev = s
    return "rack " + ", ".join(parts)
