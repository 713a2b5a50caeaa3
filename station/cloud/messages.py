"""The telemetry messages as dicts, one builder per message type, and their schemas.

Pure: no I/O besides reading the shipped schema files once. The schemas
(station/cloud/schemas/*.json) are the contract; docs/telemetry.md is generated from them
(`python -m station.cloud.docgen`). Times on the wire are UTC RFC 3339 with milliseconds
and "Z"; the station's clocks are epoch seconds (`wall`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import jsonschema
from pydantic import BaseModel

if TYPE_CHECKING:
    import sqlite3

# a row of the journal's swaps table, or a mapping with its columns (tests, tools)
SwapRow: TypeAlias = "Mapping[str, Any] | sqlite3.Row"

TELEMETRY_VERSION: Final = "1"
SCHEMA_PACKAGE: Final = "station.cloud.schemas"
# the message types of this module, in the order the docs list them
MESSAGE_TYPES: Final = ("status", "state", "rack", "event", "swap")
CONNECTION_LOST: Final = "connection lost"  # the will's reason

_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


class MessageInvalid(ValueError):
    """A message does not match its schema; the text names the schema, where and what."""


def schema_id(name: str) -> str:
    return f"swapnet.{name}/{TELEMETRY_VERSION}"


def utc(wall: float) -> str:
    """Epoch seconds -> "2026-11-30T23:59:59.123Z" (to the nearest millisecond)."""
    ms = round(wall * 1000)
    t = datetime.fromtimestamp(ms // 1000, UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def config_hash(cfg: BaseModel) -> str:
    """Hex SHA-256 of the configuration's JSON form, keys sorted: the same configuration
    gives the same hash on every station and every run."""
    text = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _envelope(name: str, station_id: str, sent_wall: float) -> dict[str, Any]:
    return {"schema": schema_id(name), "station_id": station_id, "sent_at": utc(sent_wall)}


def status_message(station_id: str, online: bool, session: int, software_version: str,
                   config_hash: str, contracts: Mapping[str, str], started_wall: float,
                   sent_wall: float, reason: str | None = None) -> dict[str, Any]:
    """The birth (online, reason None), the will (offline, the same session as its birth,
    reason CONNECTION_LOST) or a clean goodbye (offline, its reason)."""
    return {**_envelope("status", station_id, sent_wall),
            "online": online, "session": session, "software_version": software_version,
            "config_hash": config_hash,
            "contracts": {**contracts, "telemetry": TELEMETRY_VERSION},
            "started_at": utc(started_wall), "reason": reason}


def state_message(station_id: str, status: Mapping[str, Any], sent_wall: float
                  ) -> dict[str, Any]:
    """From StationCore.status(): the keys the schema has (the others are for swapctl);
    power_cap_kw and authorisation_version are None when the core does not report them."""
    return {**_envelope("state", station_id, sent_wall),
            "packml_state": status["packml_state"],
            "packml_state_number": status["packml_state_number"],
            "step": status.get("step"),
            "swap_id": status.get("swap_id"),
            "active_interlocks": list(status.get("active_interlocks", ())),
            "reason": status.get("reason"),
            "start_inhibited": status.get("start_inhibited"),
            # JSON object keys are strings; the core's are slot numbers
            "locked_out_slots": {str(k): v
                                 for k, v in (status.get("locked_out_slots") or {}).items()},
            "power_cap_kw": status.get("power_cap_kw"),
            "authorisation_version": status.get("authorisation_version")}


_SLOT_KEYS: Final = ("slot", "occupied", "serial", "chemistry", "family", "soc_pct", "soh_pct",
                     "min_cell_temp_c", "max_cell_temp_c", "state", "granted_power_kw",
                     "reason", "reserved_for")


def rack_message(station_id: str, body: Mapping[str, Any], sent_wall: float
                 ) -> dict[str, Any]:
    """From StationCore.rack_status(): power_kw, power_cap_kw and every slot (a key the
    schema does not have is left out; a missing one fails validation)."""
    return {**_envelope("rack", station_id, sent_wall),
            "power_kw": body["power_kw"], "power_cap_kw": body["power_cap_kw"],
            "slots": [{k: s[k] for k in _SLOT_KEYS if k in s} for s in body["slots"]]}


def event_message(station_id: str, event_id: int, seq: int, kind: str,
                  data: Mapping[str, Any], journaled_wall: float, replayed: bool,
                  sent_wall: float) -> dict[str, Any]:
    """One journaled event; its monotonic "t" means nothing off the station and is left
    out (`at` is its wall time)."""
    return {**_envelope("event", station_id, sent_wall),
            "event_id": event_id, "seq": seq, "kind": kind, "at": utc(journaled_wall),
            "replayed": replayed, "data": {k: v for k, v in data.items() if k != "t"}}


def _col(row: SwapRow, name: str) -> Any:
    """A column of a journal row (sqlite3.Row or a mapping), None when the row has none:
    a journal from before the column existed."""
    try:
        return row[name]
    except (KeyError, IndexError):
        return None


def _pack(raw: Any) -> dict[str, Any]:
    p = json.loads(raw) if isinstance(raw, str | bytes) else dict(raw)
    return {"serial": p["serial"], "chemistry": p["chemistry"], "family": p["family"],
            "soc_pct": p["soc_pct"], "soh_pct": p.get("soh_pct"),
            "rated_energy_kwh": p.get("rated_energy_kwh")}


def handed_energy_kwh(outcome: str, pack_in: Mapping[str, Any], pack_out: Mapping[str, Any]
                      ) -> float | None:
    """Energy the vehicle left with minus what it brought (kWh): only a completed swap
    hands any over; None when a rated energy is unknown (never a guess on a bill)."""
    if outcome != "completed":
        return 0.0
    e_in, e_out = pack_in.get("rated_energy_kwh"), pack_out.get("rated_energy_kwh")
    if e_in is None or e_out is None:
        return None
    return round(e_in * pack_in["soc_pct"] / 100 - e_out * pack_out["soc_pct"] / 100, 3)


def swap_record(station_id: str, swap_row: SwapRow, ended_wall: float, event_id: int,
                replayed: bool, sent_wall: float) -> dict[str, Any]:
    """The billing record of a finished swap from its journal row (the swaps table: a
    sqlite3.Row or a mapping) and the wall time of its swap_ended event."""
    pack_out, pack_in = _pack(swap_row["pack_out"]), _pack(swap_row["pack_in"])
    outcome = swap_row["outcome"]
    started = float(swap_row["started_wall"])
    return {**_envelope("swap", station_id, sent_wall),
            "record_id": swap_row["swap_id"], "event_id": event_id, "replayed": replayed,
            "vehicle": {"vin": _col(swap_row, "vin"), "token": swap_row["vehicle_token"]},
            "pack_out": pack_out, "pack_in": pack_in,
            "energy_kwh": handed_energy_kwh(outcome, pack_in, pack_out),
            "started_at": utc(started), "ended_at": utc(ended_wall),
            # a wall clock stepped back by NTP must not bill a negative duration
            "duration_s": round(max(0.0, ended_wall - started), 3),
            "outcome": outcome, "reason": swap_row["reason"],
            "store_slot": swap_row["store_slot"], "fetch_slot": swap_row["fetch_slot"]}


# ---- schemas ------------------------------------------------------------------------------
def schema_names() -> list[str]:
    """Every shipped schema, this module's message types first, then the others sorted."""
    names = sorted(f.name.removesuffix(".json")
                   for f in resources.files(SCHEMA_PACKAGE).iterdir()
                   if f.name.endswith(".json"))
    return [n for n in MESSAGE_TYPES if n in names] + [n for n in names
                                                       if n not in MESSAGE_TYPES]


@cache
def load_schema(name: str) -> dict[str, Any]:
    text = resources.files(SCHEMA_PACKAGE).joinpath(f"{name}.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


_FORMATS = jsonschema.FormatChecker()


@_FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    """RFC 3339 as the station writes it (UTC, milliseconds, "Z") and a real date.
    jsonschema checks date-time only with an extra package: this is the check we want."""
    if not isinstance(value, str):
        return True
    if not _TIME.fullmatch(value):
        return False
    datetime.fromisoformat(value)  # 2026-02-30 raises ValueError
    return True


@cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=_FORMATS)


def validate(schema_name: str, message: Any) -> None:
    """Raise MessageInvalid naming every place the message breaks its schema."""
    errors = sorted(_validator(schema_name).iter_errors(message),
                    key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"/{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:10]]
        more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
        raise MessageInvalid(f"{schema_name} message does not match {schema_id(schema_name)}"
                             f": " + "; ".join(lines) + more)


def encode(message: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON; NaN or infinity is an error, not invalid JSON on the wire."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")
