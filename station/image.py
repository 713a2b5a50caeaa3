"""The process image: the core's only view of the world, in the core's own words.

Drivers translate wire data into it (the Modbus/OPC UA link decodes the PLC contract's
signals, the CAN adapter decodes the packs' DBC messages); the core reads it and never
sees a register, a node, a CAN identifier or a DBC name. Every input carries the monotonic
time it arrived so that stale input can be treated as unsafe.

Vocabulary owned here:
- `Location`: where a pack is connected (the vehicle bay, or rack slot n).
- `PackData`: the kinds of pack data, each with its own freshness limit (`PackTimeouts`).
- `PackFault`, `PackState`: what a BMS may report about itself.
- `CmdStatus`, `StopRequest`: the values of the PLC contract's enumerated signals, by name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


@dataclass(frozen=True, order=True)
class Location:
    """Where a pack is plugged in: slot 0 is the vehicle's battery bay, 1..n the rack."""

    slot: int

    def __post_init__(self) -> None:
        if self.slot < 0:
            raise ValueError(f"location slot {self.slot} below 0")

    @classmethod
    def rack(cls, slot: int) -> Location:
        if slot < 1:
            raise ValueError(f"rack slot {slot} below 1")
        return cls(slot)

    @property
    def is_bay(self) -> bool:
        return self.slot == 0

    @property
    def rack_slot(self) -> int | None:
        return None if self.slot == 0 else self.slot

    def __str__(self) -> str:
        return "vehicle bay" if self.slot == 0 else f"rack slot {self.slot}"


BAY = Location(0)


class PackData(StrEnum):
    """Kinds of pack data; each has its own freshness limit."""

    IDENTITY = "identity"  # serial, family, chemistry, rated energy
    HEALTH = "health"  # cycle count, SOH
    STATUS = "status"  # SOC, voltage, current, temperatures
    CELLS = "cells"  # cell voltage extremes, insulation, fault flags, pack state
    LIMITS = "limits"  # the pack's own charge limits and cell count


@dataclass(frozen=True)
class PackTimeouts:
    """Seconds after which each kind of pack data no longer counts (from the pack protocol)."""

    identity: float
    health: float
    status: float
    cells: float
    limits: float

    def __post_init__(self) -> None:
        # looked up for every pack on every scan: a dict, not getattr on an enum's value
        object.__setattr__(self, "_by_kind", {k: float(getattr(self, k.value)) for k in PackData})

    def of(self, kind: PackData) -> float:
        return self._by_kind[kind]  # type: ignore[attr-defined]


class PackFault(StrEnum):
    OVER_TEMP = "over_temp"
    OVER_VOLTAGE = "over_voltage"
    UNDER_VOLTAGE = "under_voltage"
    INSULATION = "insulation"
    THERMAL_ALARM = "thermal_alarm"
    INTERNAL = "internal"


class PackState(StrEnum):
    IDLE = "idle"
    CHARGING = "charging"
    ISOLATED = "isolated"
    DISCHARGING = "discharging"
    UNKNOWN = "unknown"


class CmdStatus(StrEnum):
    """PLC contract enumeration `cmd_status`."""

    IDLE = "idle"
    BUSY = "busy"
    DONE = "done"
    ERROR = "error"


class StopRequest(StrEnum):
    """PLC contract enumeration `stop_request` (IEC 60204-1 stop categories)."""

    NONE = "none"
    CAT1 = "cat1"  # controlled stop, then power removed
    CAT2 = "cat2"  # controlled stop, power kept

    @property
    def severity(self) -> int:
        return {"none": 0, "cat2": 1, "cat1": 2}[self.value]


NO_COMMAND = "NONE"
_NEVER = float("-inf")  # the contract's command name for "no command"


@dataclass(frozen=True)
class PackIdentity:
    """What a pack says it is: fixed for its life. A location bound to one identity that
    hears another has a conflict (station/pack_trust.py)."""

    serial: int
    family: int
    chemistry: str
    rated_energy_kwh: float | None

    def __str__(self) -> str:
        return f"pack {self.serial} (family {self.family}, {self.chemistry})"


@dataclass(frozen=True)
class PackRatings:
    """The pack's own charge limits and build (PackLimits): fixed for its life too."""

    cell_count: int
    max_charge_voltage_v: float
    max_cell_charge_v: float

    def __str__(self) -> str:
        return (f"{self.cell_count} cells, {self.max_charge_voltage_v:g} V, "
                f"{self.max_cell_charge_v:g} V/cell")


@dataclass(frozen=True)
class PackNameplate:
    """What a pack's nameplate says (its identity as text): for people, never used to
    identify the pack (PackIdentity's serial is)."""

    manufacturer: str
    model: str
    serial: str
    at: float  # monotonic time heard


@dataclass(frozen=True)
class CellReadings:
    """Every cell's reading of one kind (voltages in V, or temperatures in degC), as heard
    in one message, with its extremes and the monotonic time it was heard."""

    values: tuple[float, ...]
    low: float
    high: float
    at: float


@dataclass
class PackReport:
    """What one pack's BMS last said, at one location."""

    location: Location
    serial: int | None = None
    family: int | None = None
    chemistry: str | None = None
    rated_energy_kwh: float | None = None
    rated_capacity_ah: float | None = None
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
    faults: frozenset[PackFault] = frozenset()
    state: PackState | None = None
    # The pack's own charge limits (GB/T 27930 BCP): the controller grants the lower of
    # these and its chemistry profile's.
    max_charge_voltage_v: float | None = None
    max_charge_current_a: float | None = None
    cell_count: int | None = None
    max_cell_charge_v: float | None = None
    # Latched since the core's last scan, so that a reading that lasted one frame between two
    # scans (a hot cell, a fault flag) is still judged; cleared by `ProcessImage.scanned()`.
    peak_cell_temp_c: float | None = None
    faults_latched: frozenset[PackFault] = frozenset()
    # Every identity, rating set and SOC heard since the last scan: a spoofed frame between
    # two real ones must still be seen (station/pack_trust.py).
    identities_latched: frozenset[PackIdentity] = frozenset()
    ratings_latched: frozenset[PackRatings] = frozenset()
    peak_soc_pct: float | None = None
    # Heard on request in a J1939-21 transport (drivers/bms/adapter.py); shown, never judged
    nameplate: PackNameplate | None = None
    cell_voltages: CellReadings | None = None
    cell_temps: CellReadings | None = None
    first_seen: float = 0.0
    last_seen: dict[PackData, float] = field(default_factory=dict)

    def seen_since(self, t: float, *kinds: PackData) -> bool:
        """True if every named kind of data was received at or after t."""
        return all(self.last_seen.get(k, float("-inf")) >= t for k in kinds)

    def age(self, kind: PackData, now: float) -> float:
        return now - self.last_seen.get(kind, float("-inf"))

    @property
    def identified(self) -> bool:
        return self.serial is not None and self.family is not None and self.chemistry is not None

    @property
    def identity(self) -> PackIdentity | None:
        """The identity last heard here (None before one is)."""
        if self.serial is None or self.family is None or self.chemistry is None:
            return None
        return PackIdentity(self.serial, self.family, self.chemistry, self.rated_energy_kwh)

    @property
    def ratings(self) -> PackRatings | None:
        if self.cell_count is None or self.max_charge_voltage_v is None or \
                self.max_cell_charge_v is None:
            return None
        return PackRatings(self.cell_count, self.max_charge_voltage_v, self.max_cell_charge_v)


@dataclass
class ProcessImage:
    pack_timeouts: PackTimeouts
    plc: dict[str, Any] = field(default_factory=dict)  # contract signal name -> value
    plc_read_at: float | None = None  # monotonic time of the last good read of the PLC inputs
    packs: dict[Location, PackReport] = field(default_factory=dict)
    # The vehicle on the platform as its own controller reports it over CAN (J1939-21
    # BAM, drivers/bms/): its VIN, and the monotonic time that VIN was last heard.
    vehicle_vin: str | None = None
    vehicle_vin_at: float | None = None
    # UTC wall-clock seconds at this scan (the daemon sets it): for what the network dates
    # in wall time (authorisation validity, reservation expiry, the power cap's schedule).
    # Never used for a timeout: those run on the monotonic clock.
    wall_time: float | None = None

    def fresh(self, rep: PackReport, kind: PackData, now: float) -> bool:
        return now - rep.last_seen.get(kind, _NEVER) <= self.pack_timeouts.of(kind)

    def expire(self, locations: Iterable[Location]) -> list[Location]:
        """The packs at these locations can no longer be heard (their CAN bus is down):
        every kind of their data is stale from now on, as if never heard, until they are
        heard again; so the interlocks judge them at once as silent packs. Returns the
        locations that had a report."""
        expired = []
        for loc in locations:
            rep = self.packs.get(loc)
            if rep is not None:
                rep.last_seen.clear()
                expired.append(loc)
        return expired

    def scanned(self) -> None:
        """The core has judged the latched readings: start latching anew."""
        for rep in self.packs.values():
            rep.peak_cell_temp_c, rep.faults_latched = None, frozenset()
            rep.identities_latched, rep.ratings_latched = frozenset(), frozenset()
            rep.peak_soc_pct = None

    def rack_slot_count(self) -> int:
        """Rack slots the PLC reports (0 before its first read)."""
        occupied = self.plc.get("rack_slot_occupied") or []
        try:
            return max(0, min(int(self.plc.get("rack_slot_count", 0) or 0), len(occupied)))
        except (TypeError, ValueError):
            return 0

    def pack_present(self, loc: Location) -> bool:
        """Does the PLC show a pack at this location? The bay: a vehicle (with its reader's
        token) and a pack in its bay; a rack slot: the slot exists and is occupied. Pack
        data from a location the PLC shows empty, or that does not exist, is not acted on."""
        if self.plc_read_at is None:
            return False
        if loc.is_bay:
            return bool(self.plc.get("vehicle_present")) and \
                bool(self.plc.get("vehicle_pack_present")) and \
                bool(self.plc.get("vehicle_token"))
        if loc.slot > self.rack_slot_count():
            return False
        return bool(self.plc["rack_slot_occupied"][loc.slot - 1])
