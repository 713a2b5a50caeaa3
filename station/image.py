"""The process image: the core's only view of the world, with when each part was last heard.

Drivers write into it (through the daemon); the core reads it. Every input carries the
monotonic time it was read so that stale input can be treated as unsafe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class PackReport:
    """What one pack's BMS last said, at one source address (vehicle bay or rack slot)."""

    source: int
    serial: int | None = None
    family: int | None = None
    chemistry: str | None = None
    rated_energy_kwh: float | None = None
    cycle_count: int | None = None
    soh_pct: float | None = None
    soc_pct: float | None = None
    voltage_v: float | None = None
    current_a: float | None = None
    min_cell_temp_c: float | None = None
    max_cell_temp_c: float | None = None
    max_cell_v: float | None = None
    min_cell_v: float | None = None
    insulation_kohm: float | None = None
    faults: frozenset[str] = frozenset()
    state: str | None = None
    # Latched since the core's last scan, so that a reading that lasted one frame between two
    # scans (a hot cell, a fault flag) is still judged; the daemon clears them after a scan.
    peak_cell_temp_c: float | None = None
    faults_latched: frozenset[str] = frozenset()
    first_seen: float = 0.0
    last_seen: dict[str, float] = field(default_factory=dict)  # message name -> time

    def seen_since(self, t: float, *messages: str) -> bool:
        """True if every named message was received at or after t."""
        return all(self.last_seen.get(m, -1.0) >= t for m in messages)

    @property
    def identified(self) -> bool:
        return self.serial is not None and self.family is not None and self.chemistry is not None


@dataclass
class ProcessImage:
    plc: dict[str, Any] = field(default_factory=dict)
    plc_read_at: float | None = None  # monotonic time of the last good read of the PLC inputs
    plc_connected: bool = False
    packs: dict[int, PackReport] = field(default_factory=dict)  # by CAN source address
    can_frames_rejected: int = 0

    def pack(self, source: int) -> PackReport | None:
        return self.packs.get(source)
