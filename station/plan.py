"""What a swap is about: the vehicle, the pack it brings, the pack it gets, the slots used."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class PackInfo:
    serial: int
    family: int
    chemistry: str
    soc_pct: float
    soh_pct: float | None = None
    slot: int | None = None  # rack slot, when the pack is in the rack
    rated_energy_kwh: float | None = None  # from the pack's identity: billing's energy

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SwapPlan:
    swap_id: str
    vehicle_token: int
    pack_out: PackInfo  # the depleted pack the vehicle brought
    pack_in: PackInfo  # the charged pack it will leave with
    store_slot: int  # where the depleted pack goes
    fetch_slot: int  # where the charged pack comes from
    identify_started_at: float  # monotonic time the vehicle was first seen
    vin: str | None = None  # heard on CAN since the vehicle arrived; None when none was
