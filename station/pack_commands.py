"""What the core asks of packs, in its own words; the CAN side turns it into frames."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from station.image import Location, PackData


class PackCommandKind(StrEnum):
    CHARGE_ENABLE = "charge_enable"
    CHARGE_DISABLE = "charge_disable"
    ISOLATE = "isolate"  # contactors open, no charging, until cleared
    CLEAR_ISOLATION = "clear_isolation"


@dataclass(frozen=True)
class PackCommand:
    location: Location
    command: PackCommandKind
    current_limit_a: float = 0.0
    voltage_limit_v: float = 0.0


@dataclass(frozen=True)
class PackRequest:
    """Ask a pack (None: every pack) to send these kinds of data now (J1939 Request)."""

    location: Location | None
    kinds: tuple[PackData, ...]
