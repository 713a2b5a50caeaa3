"""Every decision of the station is a typed event: one class per kind.

The core returns events in its `Decision`; the daemon's event bus hands them to the
journal first (the record: nothing is commanded that is not journaled), then to the other
sinks (logs, the demo's progress view, telemetry, metrics). `kind` is the stable name used
in the journal and on the wire; `data` is the event as a JSON-ready dict.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from station.plan import PackInfo


@dataclass(frozen=True, kw_only=True)
class Event:
    kind: ClassVar[str] = "event"
    t: float  # monotonic seconds

    @property
    def data(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @property
    def swap_ref(self) -> str | None:
        return getattr(self, "swap_id", None)


def _plain(v: Any) -> Any:
    if isinstance(v, PackInfo):
        return v.as_dict()
    if isinstance(v, frozenset | set | tuple):
        return sorted(v) if isinstance(v, frozenset | set) else list(v)
    return v


@dataclass(frozen=True, kw_only=True)
class StateChanged(Event):
    kind: ClassVar[str] = "state"
    old: str
    new: str
    number: int
    reason: str | None
    swap_id: str | None


@dataclass(frozen=True, kw_only=True)
class SwapStarted(Event):
    kind: ClassVar[str] = "swap_started"
    swap_id: str
    vehicle_token: int
    pack_out: PackInfo
    pack_in: PackInfo
    store_slot: int
    fetch_slot: int
    origin: str
    vin: str | None = None  # the vehicle's, heard on CAN since it arrived


@dataclass(frozen=True, kw_only=True)
class StepStarted(Event):
    kind: ClassVar[str] = "step_started"
    swap_id: str
    step: str
    command: str | None
    seq: int | None
    param: int | None
    resumed: bool = False


@dataclass(frozen=True, kw_only=True)
class StepDone(Event):
    kind: ClassVar[str] = "step_done"
    swap_id: str
    step: str
    confirmed_by: str  # plc | sensors | read-back


@dataclass(frozen=True, kw_only=True)
class SwapEnded(Event):
    kind: ClassVar[str] = "swap_ended"
    swap_id: str
    outcome: str  # completed | aborted | stopped
    reason: str | None
    step: str | None


@dataclass(frozen=True, kw_only=True)
class Fault(Event):
    kind: ClassVar[str] = "fault"
    code: str
    reason: str
    swap_id: str | None
    step: str | None


@dataclass(frozen=True, kw_only=True)
class Inhibit(Event):
    kind: ClassVar[str] = "inhibit"
    reason: str | None  # None: the inhibit is lifted
    vehicle_token: int


@dataclass(frozen=True, kw_only=True)
class Alarm(Event):
    """A pack event (thermal, insulation, BMS flag), a pack that does not behave, or the
    station's own trouble: location "station" (disk_low) or "can:<bus>" (a CAN bus)."""

    kind: ClassVar[str] = "alarm"
    location: str
    slot: int | None
    serial: int | None
    alarm: str  # fault_flag | over_temp | temp_rise | insulation | charge_stalled |
    # identity_conflict | ratings_conflict | soc_implausible | readings_implausible |
    # overcurrent |
    # alarms_suppressed | disk_low | can_error_passive | can_bus_off | can_bus_down
    reason: str
    action: str


@dataclass(frozen=True, kw_only=True)
class SlotLocked(Event):
    """A rack slot taken out of service (no selection, no charging, no storing) until an
    operator releases it; persisted across restarts (the journal's lockouts table)."""

    kind: ClassVar[str] = "slot_locked"
    slot: int
    serial: int | None
    cause: str  # the alarm that locked it: fault_flag, identity_conflict, soc_implausible...
    reason: str
    isolated: bool  # the pack was told to isolate (a clear_isolation goes with the release)


@dataclass(frozen=True, kw_only=True)
class SlotReleased(Event):
    """An operator released a locked-out slot, saying why."""

    kind: ClassVar[str] = "slot_released"
    slot: int
    serial: int | None
    reason: str
    origin: str


@dataclass(frozen=True, kw_only=True)
class Recovery(Event):
    """What a restart mid-swap found on the first PLC read-back."""

    kind: ClassVar[str] = "recovery"
    swap_id: str
    step: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class CommandReceived(Event):
    kind: ClassVar[str] = "command_received"
    request_id: str
    command: str
    origin: str
    args: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class CommandAccepted(Event):
    kind: ClassVar[str] = "command_accepted"
    request_id: str
    command: str
    origin: str
    state: str
    result: dict[str, Any] | None = None  # what it gave (a reservation: id, slot, serial)


@dataclass(frozen=True, kw_only=True)
class CommandRefused(Event):
    kind: ClassVar[str] = "command_refused"
    request_id: str
    command: str
    origin: str
    reason: str
    # bad_args | not_permitted | refused | unknown_command (station/commands.py)
    code: str = "refused"


@dataclass(frozen=True, kw_only=True)
class CloudCommandRejected(Event):
    """A message on the command topic refused before it became a command request: too
    large, not JSON, not the schema, an unknown key or a bad signature, another station's,
    expired, an unknown command or bad arguments (station/cloud/envelope.py)."""

    kind: ClassVar[str] = "cloud_command_rejected"
    request_id: str | None  # None when the message had none that could be read
    command: str | None
    code: str
    reason: str
    key_id: str | None
    size: int  # bytes


@dataclass(frozen=True, kw_only=True)
class PackCommandChanged(Event):
    """What the station asks of one pack changed (charging, isolation): journaled on change;
    the PackControl refresh that carries it is not an event."""

    kind: ClassVar[str] = "pack_command"
    location: str
    slot: int | None
    serial: int | None
    command: str
    current_limit_a: float
    voltage_limit_v: float
    power_kw: float
    reason: str


@dataclass(frozen=True, kw_only=True)
class AuthorisationsSet(Event):
    """A new authorisation list is in force. The event's data is its summary; the whole
    list (up to 5,000 entries) rides along for the journal's network state only."""

    kind: ClassVar[str] = "authorisations_set"
    version: int
    valid_from: str  # RFC 3339 UTC
    valid_until: str
    entries: int  # how many
    origin: str
    full: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def data(self) -> dict[str, Any]:
        d = super().data
        del d["full"]
        return d


@dataclass(frozen=True, kw_only=True)
class PowerCapSet(Event):
    kind: ClassVar[str] = "power_cap_set"
    cap_kw: float | None  # None: back to the configured ceiling
    schedule: list[dict[str, Any]]  # [{from "HH:MM", to "HH:MM", cap_kw}], local time
    ceiling_kw: float  # charging.station_power_cap_kw: never exceeded
    origin: str


@dataclass(frozen=True, kw_only=True)
class ReservationMade(Event):
    kind: ClassVar[str] = "reservation_made"
    reservation_id: str
    vin: str
    family: int
    min_soc_pct: float
    expires_at: str  # RFC 3339 UTC
    slot: int
    serial: int
    soc_pct: float | None  # the kept pack's, when reserved
    origin: str


@dataclass(frozen=True, kw_only=True)
class ReservationEnded(Event):
    kind: ClassVar[str] = "reservation_ended"
    reservation_id: str
    vin: str
    slot: int
    serial: int
    outcome: str  # used | cancelled | expired
    reason: str | None
    swap_id: str | None  # the swap that used it


@dataclass(frozen=True, kw_only=True)
class UnitModeChanged(Event):
    """The PackML unit mode (OPC 30050: Production, Maintenance), set by a local operator."""

    kind: ClassVar[str] = "unit_mode"
    mode: str  # Production | Maintenance
    old: str
    origin: str


@dataclass(frozen=True, kw_only=True)
class MaintenanceStarted(Event):
    """A PLC command run in maintenance mode (a recovery step or a technician's single
    command): journaled before it is written, like a swap step's."""

    kind: ClassVar[str] = "maintenance_started"
    seq: int
    command: str
    param: int
    source: str  # recover (the plan's next step) | run (a single command)
    why: str
    moves: list[dict[str, Any]]  # what it should move: serial, from, to
    origin: str


@dataclass(frozen=True, kw_only=True)
class MaintenanceDone(Event):
    kind: ClassVar[str] = "maintenance_done"
    seq: int
    command: str
    param: int


@dataclass(frozen=True, kw_only=True)
class MaintenanceFailed(Event):
    kind: ClassVar[str] = "maintenance_failed"
    seq: int
    command: str
    param: int
    reason: str
    # plc_error | plc_no_answer | plc_restarted | plc_done_lost | plc_stopped |
    # sensor_disagrees | step_timeout | lock_failed | unlock_failed | stopped | aborted |
    # daemon_stopped | daemon_restarted | an interlock id | a pack event kind
    code: str


@dataclass(frozen=True, kw_only=True)
class PackMoved(Event):
    """A pack changed place by a maintenance command: the journal shows how every pack got
    where it is (a swap's moves are its steps)."""

    kind: ClassVar[str] = "pack_moved"
    serial: int | None  # None: a pack whose identity is not known
    source: str  # vehicle bay | shuttle | stacker | slot N
    dest: str
    command: str
    seq: int


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls for cls in (
        StateChanged, SwapStarted, StepStarted, StepDone, SwapEnded, Fault, Inhibit, Alarm,
        Recovery, CommandReceived, CommandAccepted, CommandRefused, PackCommandChanged,
        SlotLocked, SlotReleased, CloudCommandRejected, AuthorisationsSet, PowerCapSet,
        ReservationMade, ReservationEnded, UnitModeChanged, MaintenanceStarted,
        MaintenanceDone, MaintenanceFailed, PackMoved,
    )
}
