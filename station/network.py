"""The station's network policy: who may swap here, which pack is kept for whom, how much
power the rack may draw. Pure: no I/O, no drivers; wall time (UTC epoch seconds) is passed
in, never read.

- The authorisation list (`set_authorisations`): a version, a validity (valid_from,
  valid_until) and entries, each an exact VIN or a VIN prefix (a brand's WMI, a fleet) with
  the pack families it may take. `Network.authorise(vin, family, wall_now)` answers None
  (may swap) or the reason it may not. With `[network] require_authorisation` off every
  vehicle may swap. Outside the list's validity (the station offline too long, or a list
  sent ahead of its valid_from) `[network] when_list_expired` decides: "refuse" every
  vehicle, or "allow_listed" vehicles go on swapping.
- Reservations (`reserve_pack`): a ready pack (slot and serial) kept for one VIN until a
  wall-clock expiry; selection gives it to that vehicle only.
- The power cap (`set_power_cap`): a cap below the configured grid ceiling
  (`charging.station_power_cap_kw`) and a daily schedule of windows in the station's local
  time (`station.timezone`); `Network.cap_at(wall_now)` is the lowest applicable, never
  above the ceiling.

The `parse_*` helpers check a command's arguments. The cloud link checks them against the
JSON Schema too, but the core trusts nobody: every value is bounded here, and a bad one
raises ArgsError with a reason that names it.
"""

from __future__ import annotations

import math
import re
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from station.config import StationConfig

VIN = re.compile(r"[A-HJ-NPR-Z0-9]{17}")  # ISO 3779: no I, O, Q
VIN_PREFIX = re.compile(r"[A-HJ-NPR-Z0-9]{1,16}")
RESERVATION_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
MAX_FAMILY = 250
MAX_ENTRIES = 5_000  # ~45 bytes each: a full list fits in cloud.max_command_bytes
MAX_FAMILIES_PER_ENTRY = 64
MAX_WINDOWS = 48
MAX_REASON_CHARS = 200
MAX_RESERVATION_S = 24 * 3600.0  # a pack kept longer than a day is a pack out of service
# RFC 3339 times are read between these years: anything else is a mistake, not a date
MIN_YEAR, MAX_YEAR = 2000, 2100


class ArgsError(ValueError):
    """A command argument out of its bounds; the message says which and why."""


# ---- time ----------------------------------------------------------------------------------
def parse_time(value: Any, name: str = "time") -> float:
    """An RFC 3339 time with its offset ("2026-11-30T23:59:59.123Z") -> UTC epoch seconds."""
    if not isinstance(value, str) or not 20 <= len(value) <= 35:
        raise ArgsError(f"{name} must be an RFC 3339 time like 2026-11-30T23:59:59.123Z")
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise ArgsError(f"{name} {value!r} is not an RFC 3339 time "
                        "(like 2026-11-30T23:59:59.123Z)") from None
    if "T" not in value.upper() or dt.tzinfo is None:
        raise ArgsError(f"{name} {value!r} must carry its UTC offset (\"Z\")")
    if not MIN_YEAR <= dt.year <= MAX_YEAR:
        raise ArgsError(f"{name} {value!r} is outside the years {MIN_YEAR}-{MAX_YEAR}")
    return dt.timestamp()


def format_time(t: float) -> str:
    """UTC epoch seconds -> RFC 3339 with milliseconds and "Z" (the wire's form)."""
    dt = datetime.fromtimestamp(t, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ArgsError(f"{name} must be a whole number {lo}-{hi}, not {value!r}"[:160])
    return value


def _number(value: Any, name: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not math.isfinite(value) or not lo <= value <= hi:
        raise ArgsError(f"{name} must be a number {lo:g}-{hi:g}, not {value!r}"[:160])
    return float(value)


def _keys(args: Mapping[str, Any], command: str, required: Iterable[str],
          optional: Iterable[str] = ()) -> None:
    if not isinstance(args, Mapping):
        raise ArgsError(f"{command}: the arguments must be an object")
    required, optional = set(required), set(optional)
    missing = sorted(required - set(args))
    extra = sorted(str(k)[:32] for k in set(args) - required - optional)
    if missing:
        raise ArgsError(f"{command}: missing argument(s): " + ", ".join(missing))
    if extra:
        raise ArgsError(f"{command}: unknown argument(s): " + ", ".join(extra[:5]))


def parse_vin(value: Any, name: str = "vin") -> str:
    if not isinstance(value, str) or not VIN.fullmatch(value):
        raise ArgsError(f"{name} must be a 17-character VIN (ISO 3779: A-Z without I, O, Q, "
                        f"and 0-9), not {str(value)[:40]!r}")
    return value


def parse_reason(value: Any, name: str = "reason") -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_REASON_CHARS:
        raise ArgsError(f"{name} must be text of 1-{MAX_REASON_CHARS} characters")
    return value.strip()


# ---- authorisation ---------------------------------------------------------------------
@dataclass(frozen=True)
class AuthEntry:
    families: frozenset[int]
    vin: str | None = None  # exactly one of vin, vin_prefix
    vin_prefix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        key = {"vin": self.vin} if self.vin is not None else {"vin_prefix": self.vin_prefix}
        return {**key, "families": sorted(self.families)}


@dataclass(frozen=True)
class AuthorisationList:
    version: int
    valid_from: float  # UTC epoch seconds
    valid_until: float
    entries: tuple[AuthEntry, ...]
    # exact VIN or prefix -> the families allowed (the union of its entries); built once
    _exact: dict[str, frozenset[int]] = field(default_factory=dict, repr=False, compare=False)
    _prefix: dict[str, frozenset[int]] = field(default_factory=dict, repr=False,
                                               compare=False)

    def __post_init__(self) -> None:
        for e in self.entries:
            index = self._exact if e.vin is not None else self._prefix
            key = e.vin if e.vin is not None else e.vin_prefix
            assert key is not None
            index[key] = index.get(key, frozenset()) | e.families

    def families_for(self, vin: str) -> frozenset[int] | None:
        """The families this VIN may take (by its own entry and every prefix entry that
        matches it), or None when no entry names it."""
        found: frozenset[int] | None = self._exact.get(vin)
        for n in range(1, min(len(vin), 16) + 1):
            fams = self._prefix.get(vin[:n])
            if fams is not None:
                found = fams if found is None else found | fams
        return found

    def valid_at(self, wall_now: float) -> bool:
        return self.valid_from <= wall_now < self.valid_until

    def as_dict(self) -> dict[str, Any]:
        """The command's own arguments (parse_authorisations reads it back)."""
        return {"version": self.version, "valid_from": format_time(self.valid_from),
                "valid_until": format_time(self.valid_until),
                "entries": [e.as_dict() for e in self.entries]}

    def summary(self) -> dict[str, Any]:
        return {"version": self.version, "valid_from": format_time(self.valid_from),
                "valid_until": format_time(self.valid_until), "entries": len(self.entries)}


def parse_authorisations(args: Mapping[str, Any]) -> AuthorisationList:
    """set_authorisations {version, valid_from, valid_until, entries: [{vin | vin_prefix,
    families}]} -> the list; raises ArgsError."""
    _keys(args, "set_authorisations", ("version", "valid_from", "valid_until", "entries"))
    version = _int(args["version"], "version", 1, 2**53)
    valid_from = parse_time(args["valid_from"], "valid_from")
    valid_until = parse_time(args["valid_until"], "valid_until")
    if valid_until <= valid_from:
        raise ArgsError(f"valid_until {args['valid_until']} must be after valid_from "
                        f"{args['valid_from']}")
    raw = args["entries"]
    if not isinstance(raw, list) or len(raw) > MAX_ENTRIES:
        raise ArgsError(f"entries must be a list of at most {MAX_ENTRIES} entries")
    entries = []
    for i, e in enumerate(raw):
        where = f"entries[{i}]"
        if not isinstance(e, Mapping) or "families" not in e or \
                len(set(e) & {"vin", "vin_prefix"}) != 1 or len(e) != 2:
            raise ArgsError(f"{where} must be {{vin, families}} or {{vin_prefix, families}}")
        fams = e["families"]
        if not isinstance(fams, list) or not 1 <= len(fams) <= MAX_FAMILIES_PER_ENTRY:
            raise ArgsError(f"{where}.families must list 1-{MAX_FAMILIES_PER_ENTRY} "
                            "pack families")
        families = frozenset(_int(f, f"{where}.families[]", 0, MAX_FAMILY) for f in fams)
        if "vin" in e:
            entries.append(AuthEntry(families, vin=parse_vin(e["vin"], f"{where}.vin")))
        else:
            p = e["vin_prefix"]
            if not isinstance(p, str) or not VIN_PREFIX.fullmatch(p):
                raise ArgsError(f"{where}.vin_prefix must be 1-16 VIN characters "
                                f"(A-Z without I, O, Q, and 0-9), not {str(p)[:40]!r}")
            entries.append(AuthEntry(families, vin_prefix=p))
    return AuthorisationList(version, valid_from, valid_until, tuple(entries))


# ---- reservations ----------------------------------------------------------------------
@dataclass(frozen=True)
class Reservation:
    reservation_id: str
    vin: str
    family: int  # the vehicle's pack family (compatible_families apply)
    min_soc_pct: float
    expires_at: float  # UTC epoch seconds
    slot: int  # the pack it keeps: this slot, while it holds this serial
    serial: int

    def as_dict(self) -> dict[str, Any]:
        return {"reservation_id": self.reservation_id, "vin": self.vin,
                "family": self.family, "min_soc_pct": self.min_soc_pct,
                "expires_at": format_time(self.expires_at), "slot": self.slot,
                "serial": self.serial}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Reservation:
        return cls(str(d["reservation_id"]), str(d["vin"]), int(d["family"]),
                   float(d["min_soc_pct"]), parse_time(d["expires_at"], "expires_at"),
                   int(d["slot"]), int(d["serial"]))


@dataclass(frozen=True)
class ReservationRequest:
    vin: str
    family: int
    min_soc_pct: float
    expires_at: float


def parse_reservation(args: Mapping[str, Any]) -> ReservationRequest:
    """reserve_pack {vin, family, min_soc_pct, expires_at}; raises ArgsError."""
    _keys(args, "reserve_pack", ("vin", "family", "min_soc_pct", "expires_at"))
    return ReservationRequest(parse_vin(args["vin"]),
                              _int(args["family"], "family", 0, MAX_FAMILY),
                              _number(args["min_soc_pct"], "min_soc_pct", 0.0, 100.0),
                              parse_time(args["expires_at"], "expires_at"))


def parse_reservation_id(args: Mapping[str, Any]) -> str:
    _keys(args, "cancel_reservation", ("reservation_id",))
    rid = args["reservation_id"]
    if not isinstance(rid, str) or not RESERVATION_ID.fullmatch(rid):
        raise ArgsError("reservation_id must be 1-64 characters of A-Z a-z 0-9 . _ : -")
    return rid


# ---- power cap -------------------------------------------------------------------------
@dataclass(frozen=True)
class CapWindow:
    start_min: int  # minutes after local midnight
    end_min: int  # end <= start: the window wraps midnight (equal: the whole day)
    cap_kw: float

    def covers(self, minute: float) -> bool:
        if self.start_min < self.end_min:
            return self.start_min <= minute < self.end_min
        return minute >= self.start_min or minute < self.end_min

    def as_dict(self) -> dict[str, Any]:
        return {"from": _hhmm(self.start_min), "to": _hhmm(self.end_min), "cap_kw": self.cap_kw}


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@dataclass(frozen=True)
class PowerCap:
    cap_kw: float | None = None  # None: the configured ceiling
    schedule: tuple[CapWindow, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The command's own arguments (parse_power_cap reads it back)."""
        return {"cap_kw": self.cap_kw, "schedule": [w.as_dict() for w in self.schedule]}


def parse_power_cap(args: Mapping[str, Any], ceiling_kw: float) -> PowerCap:
    """set_power_cap {cap_kw: 1..ceiling or null, schedule?: [{from, to, cap_kw}]}: the
    cloud may only lower the configured cap (the grid connection's); raises ArgsError."""
    _keys(args, "set_power_cap", ("cap_kw",), ("schedule",))
    raw_cap = args["cap_kw"]
    bound = f"cap_kw (1-{ceiling_kw:g} kW: charging.station_power_cap_kw is the ceiling)"
    cap = None if raw_cap is None else _number(raw_cap, bound, 1.0, ceiling_kw)
    raw = args.get("schedule", [])
    if not isinstance(raw, list) or len(raw) > MAX_WINDOWS:
        raise ArgsError(f"schedule must be a list of at most {MAX_WINDOWS} windows")
    windows = []
    for i, w in enumerate(raw):
        where = f"schedule[{i}]"
        if not isinstance(w, Mapping) or set(w) != {"from", "to", "cap_kw"}:
            raise ArgsError(f"{where} must be {{from, to, cap_kw}}")
        ends = []
        for key in ("from", "to"):
            m = HHMM.fullmatch(w[key]) if isinstance(w[key], str) else None
            if m is None:
                raise ArgsError(f"{where}.{key} must be a local time HH:MM (00:00-23:59)")
            ends.append(int(m[1]) * 60 + int(m[2]))
        windows.append(CapWindow(ends[0], ends[1],
                                 _number(w["cap_kw"], f"{where}.{bound}", 1.0, ceiling_kw)))
    return PowerCap(cap, tuple(windows))


# ---- maintenance, stop, hold -------------------------------------------------------------
def parse_maintenance(args: Mapping[str, Any]) -> tuple[int, str, str]:
    """slot_maintenance {slot: 1-255, action: lock | release, reason} -> (slot, action,
    reason); raises ArgsError."""
    _keys(args, "slot_maintenance", ("slot", "action", "reason"))
    slot = _int(args["slot"], "slot", 1, 255)
    action = args["action"]
    if action not in ("lock", "release"):
        raise ArgsError(f"action must be \"lock\" or \"release\", not {str(action)[:20]!r}")
    return slot, str(action), parse_reason(args["reason"])


def parse_optional_reason(args: Mapping[str, Any], command: str) -> str | None:
    """request_stop / request_hold {reason?}."""
    _keys(args, command, (), ("reason",))
    return parse_reason(args["reason"]) if "reason" in args else None


def parse_no_args(args: Mapping[str, Any], command: str) -> None:
    _keys(args, command, ())


# ---- the policy, as the core holds it ------------------------------------------------------
class Network:
    """What the network told this station (persisted in the journal, handed back at
    start-up), and the questions the core asks of it."""

    def __init__(self, cfg: StationConfig, authorisations: AuthorisationList | None = None,
                 power_cap: PowerCap | None = None,
                 reservations: Iterable[Reservation] = ()) -> None:
        self.cfg = cfg
        self.authorisations = authorisations
        self.power_cap = power_cap or PowerCap()
        self.reservations: dict[str, Reservation] = {r.reservation_id: r
                                                     for r in reservations}
        self.tz = zoneinfo.ZoneInfo(cfg.station.timezone)

    # -- who may swap
    def authorise(self, vin: str | None, family: int, wall_now: float | None) -> str | None:
        """None if this vehicle may swap for a pack of this family now, else why not."""
        net = self.cfg.network
        if not net.require_authorisation:
            return None
        if vin is None:
            return "waiting for the vehicle's VIN on CAN"
        if not VIN.fullmatch(vin):
            return f"vehicle VIN {vin[:20]!r} heard on CAN is not a valid VIN"
        auth = self.authorisations
        if auth is None:
            return "no authorisation list received"
        if wall_now is None or not auth.valid_at(wall_now):
            if wall_now is None:
                why = "no wall-clock time to judge it by"
            elif wall_now < auth.valid_from:
                why = f"not valid before {format_time(auth.valid_from)}"
            else:
                why = f"expired at {format_time(auth.valid_until)}"
            if net.when_list_expired == "refuse":
                return (f"authorisation list version {auth.version} {why}: every vehicle "
                        "refused (network.when_list_expired = refuse)")
            # allow_listed: the list still names who may swap
        fams = auth.families_for(vin)
        if fams is None or family not in fams:
            return f"vehicle {vin} not authorised for family {family}"
        return None

    @property
    def authorisation_version(self) -> int | None:
        return None if self.authorisations is None else self.authorisations.version

    # -- power
    @property
    def ceiling_kw(self) -> float:
        return self.cfg.charging.station_power_cap_kw

    def cap_at(self, wall_now: float | None) -> float:
        """The lowest applicable cap (kW): the ceiling, the network's cap, and every
        schedule window covering the local time. Without a wall time the lowest of them
        all (the grid's side is the safe side)."""
        cap = self.ceiling_kw
        if self.power_cap.cap_kw is not None:
            cap = min(cap, self.power_cap.cap_kw)
        if not self.power_cap.schedule:
            return cap
        if wall_now is None:
            return min(cap, *(w.cap_kw for w in self.power_cap.schedule))
        local = datetime.fromtimestamp(wall_now, self.tz)
        minute = local.hour * 60 + local.minute + local.second / 60.0
        for w in self.power_cap.schedule:
            if w.covers(minute):
                cap = min(cap, w.cap_kw)
        return cap

    # -- reservations
    def reservation_of(self, vin: str | None) -> Reservation | None:
        if vin is None:
            return None
        return next((r for r in self.reservations.values() if r.vin == vin), None)

    def reserved_slots(self, except_vin: str | None = None) -> dict[int, Reservation]:
        """Slots whose pack is kept for a vehicle other than `except_vin`."""
        return {r.slot: r for r in self.reservations.values() if r.vin != except_vin}

    def expired(self, wall_now: float | None) -> list[Reservation]:
        if wall_now is None:
            return []
        return [r for r in self.reservations.values() if wall_now >= r.expires_at]
