"""Arriving vehicles: when the next car comes, and what it brings (pure, seeded)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from sim_hw.config import SimConfig
from sim_hw.packs import AMBIENT_C, CHEMISTRIES, SimPack

FIRST_ARRIVAL_S = 1.0


@dataclass
class Vehicle:
    token: int
    family: int
    arrived_at: float  # sim seconds
    offset_x_mm: float
    offset_y_mm: float
    pack: SimPack | None
    ready: bool = False
    bay_awake_from: float | None = None  # sim time from which the bay pack talks on CAN
    visit: dict[str, Any] = field(default_factory=dict)  # pack_out, stored/fetched slot

    def describe(self) -> str:
        p = self.pack
        pack = f"pack {p.serial} {p.chemistry} SOC {p.soc_pct:.1f} %" if p else "no pack"
        return (f"vehicle {self.token} arrived: family {self.family}, {pack}, "
                f"offsets x={self.offset_x_mm:+.1f} y={self.offset_y_mm:+.1f} mm")


class VehicleSource:
    """Schedules arrivals: the first 1 s after start, then arrival_gap_s after each departure."""

    def __init__(self, config: SimConfig, taken_serials: set[int]) -> None:
        self.limit = config.vehicles
        self.gap = config.arrival_gap_s
        self.rng = random.Random(f"vehicles-{config.seed}")
        self.arrived = 0
        self.next_at: float | None = FIRST_ARRIVAL_S
        self._token = 0
        self._taken = set(taken_serials)
        # vehicle packs get serials from their own range, so they never collide with the rack
        self._serial = self.rng.randrange(100_000_000, 900_000_000)

    def due(self, now: float, families: list[int]) -> Vehicle | None:
        """The vehicle arriving by `now`, if one is due (it arrives at its scheduled time)."""
        if self.next_at is None or now < self.next_at:
            return None
        if self.limit and self.arrived >= self.limit:
            self.next_at = None
            return None
        t, self.next_at = self.next_at, None
        self.arrived += 1
        self._token = self._token % 0xFFFF + 1  # u16, never 0 (0 means no vehicle)
        fams = families or [20]
        family = fams[(self.arrived - 1) % len(fams)]
        return Vehicle(
            token=self._token,
            family=family,
            arrived_at=t,
            offset_x_mm=self._offset(),
            offset_y_mm=self._offset(),
            pack=self._pack(family),
            bay_awake_from=t,  # its BMS is awake while the car is driven in
        )

    def departed(self, t: float) -> None:
        if not self.limit or self.arrived < self.limit:
            self.next_at = t + self.gap

    def _offset(self) -> float:
        return round(self.rng.choice((-1, 1)) * self.rng.uniform(20.0, 80.0), 1)

    def _pack(self, family: int) -> SimPack:
        self._serial += 1
        while self._serial in self._taken:
            self._serial += 1
        self._taken.add(self._serial)
        return SimPack(
            serial=self._serial,
            family=family,
            chemistry=self.rng.choice(CHEMISTRIES),
            soc_pct=round(self.rng.uniform(5.0, 30.0), 1),
            cycle_count=self.rng.randrange(50, 900),
            soh_pct=round(self.rng.uniform(85.0, 99.0), 1),
            max_cell_temp_c=round(AMBIENT_C + self.rng.uniform(3.0, 8.0), 1),  # just driven
        )
