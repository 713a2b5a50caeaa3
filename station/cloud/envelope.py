"""A message on the station's command topic -> a checked cloud command, or why not.

Pure: no I/O, no clock of its own (the caller passes the wall time), and it never raises,
whatever the bytes: the answer to noise is a Rejection with a code and a reason, which the
link journals (CloudCommandRejected), counts and publishes on the responses topic.

The checks run in this order, the first failure deciding the code (a later check never
runs on what an earlier one refused, so the signature is verified only on a well-formed
envelope, and nothing is believed of a command before its signature is):

 1. too_large        more than max_bytes bytes (not even decoded)
 2. malformed_json   not UTF-8, not JSON, or JSON this station does not take (below)
 3. schema           not the envelope of schemas/command.json, or a time that is no date
 4. unknown_key      key_id names no key in the keyring
 5. bad_signature    the signature is not base64, the wrong length, or does not verify
 6. wrong_station    station_id is another station's
 7. not_yet_valid    issued_at > now + clock_skew_s, or expires_at - issued_at >
                     max_lifetime_s (a command may not be signed to live longer)
 8. expired          expires_at <= now
 9. unknown_command  neither a cloud command nor a local operator's (below)
10. bad_args         args not the command's $defs/args.<command> schema

Replay (the same request id: the first result again) and not_permitted (a local operator's
command from the cloud) are the command entry's, after these: a local operator's command
is therefore returned as a CloudCommand with its args unchecked.

JSON this station does not take (malformed_json), each a rule of I-JSON (RFC 7493) or of
signing: a key twice in one object (which value was signed is ambiguous: refused, never
the last one winning); NaN, Infinity, or a number that overflows to one; an integer beyond
+-(2**53 - 1) (JCS cannot canonicalise it); a string with a lone surrogate; nesting deeper
than MAX_DEPTH.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any, Final

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from station.cloud.signing import BadSignature, Keyring, UnknownKey
from station.local_api import DuplicateKey, no_duplicate_keys

MAX_DEPTH: Final = 32  # the deepest command (set_authorisations) is 4 levels
MAX_REASON_CHARS: Final = 200
_INT_LIMIT: Final = 2**53 - 1

# The cloud's commands (args: $defs/args.<name> in schemas/command.json).
CLOUD_COMMANDS: Final = (
    "reserve_pack", "cancel_reservation", "set_authorisations", "set_power_cap",
    "slot_maintenance", "request_stop", "request_hold", "snapshot",
)
# Commands that exist, but for a local operator at the station only: they pass these
# checks so that the command entry answers them not_permitted (after replay).
# (The bare stop and hold words too: the cloud sends request_stop and request_hold.)
LOCAL_OPERATOR_COMMANDS: Final = frozenset({
    "reset", "clear", "unhold", "start", "abort", "suspend", "unsuspend", "pack_release",
    "stop", "hold",
})

CODES: Final = (
    "too_large", "malformed_json", "schema", "unknown_key", "bad_signature", "wrong_station",
    "not_yet_valid", "expired", "unknown_command", "bad_args",
)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_COMMAND = re.compile(r"[a-z][a-z0-9_]{0,31}")


@dataclass(frozen=True)
class CloudCommand:
    request_id: str
    command: str
    args: dict[str, Any]
    issued_at: float  # UTC epoch seconds
    expires_at: float
    key_id: str


@dataclass(frozen=True)
class Rejection:
    code: str  # one of CODES
    reason: str  # at most MAX_REASON_CHARS, what the sender can fix
    request_id: str | None  # as read from the message (unverified), when well-formed
    command: str | None
    key_id: str | None
    size: int  # bytes


class _Refused(ValueError):
    """Raised inside the JSON decoder's hooks: JSON this station does not take."""


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _int(text: str) -> int:
    # the length check first: int() of a long digit string costs quadratic time
    if len(text.lstrip("-")) > 16 or abs(n := int(text)) > _INT_LIMIT:
        raise _Refused("an integer beyond +-(2**53 - 1)")
    return n


def _float(text: str) -> float:
    f = float(text)
    if not math.isfinite(f):
        raise _Refused(f"number {_short(text, 40)} overflows")
    return f


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _reason(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS - 3] + "..."


def _shape_problem(obj: Any) -> str | None:
    """Too deep, or a string UTF-8 cannot carry (a lone surrogate from a \\ud800 escape)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels"
        if isinstance(node, dict):
            for k, v in node.items():
                if not _utf8(k):
                    return "a key with a lone surrogate"
                stack.append((v, depth + 1))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
        elif isinstance(node, str) and not _utf8(node):
            return "a string with a lone surrogate"
    return None


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _load_json(payload: bytes) -> tuple[Any, str | None]:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 (byte {exc.start})"
    try:
        obj = json.loads(text, object_pairs_hook=no_duplicate_keys, parse_constant=_constant,
                         parse_int=_int, parse_float=_float)
    except (_Refused, DuplicateKey) as exc:
        return None, str(exc)
    except RecursionError:
        return None, f"nested deeper than {MAX_DEPTH} levels"
    except ValueError as exc:  # JSONDecodeError, and int()'s digit limit
        return None, f"not JSON: {exc}"
    problem = _shape_problem(obj)
    return (None, problem) if problem else (obj, None)


def _schema_file(name: str) -> dict[str, Any]:
    text = resources.files("station.cloud.schemas").joinpath(name).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _strict_integers() -> type[Any]:
    # 20.0 is an "integer" to JSON Schema; here an integer is written without a fraction, so
    # what the core receives as a slot or a family is an int.
    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _c, x: isinstance(x, int) and not isinstance(x, bool))
    return jsonschema.validators.extend(base, type_checker=checker)


@cache
def command_schema() -> dict[str, Any]:
    return _schema_file("command.json")


@cache
def _validators() -> tuple[Any, dict[str, Any]]:
    schema = command_schema()
    cls = _strict_integers()
    envelope = cls({k: v for k, v in schema.items() if k != "$defs"})
    args = {name: cls({"$ref": f"#/$defs/args.{name}", "$defs": schema["$defs"]})
            for name in CLOUD_COMMANDS}
    return envelope, args


def _first_error(validator: Any, obj: Any) -> str | None:
    error: ValidationError | None = best_match(validator.iter_errors(obj))
    if error is None:
        return None
    where = ".".join(str(p) for p in error.absolute_path)
    message = error.message if len(error.message) <= 160 else error.message[:157] + "..."
    return f"{where}: {message}" if where else message


def parse_time(text: str) -> float | None:
    """UTC epoch seconds of an RFC 3339 time the schema's pattern let through, or None
    when it is no date (2026-02-30, 24:00:00, a leap second)."""
    try:
        return datetime.fromisoformat(text).timestamp()
    except (ValueError, OverflowError):
        return None


def _args_problem(command: str, args: Mapping[str, Any]) -> str | None:
    """What the args schema cannot say: real dates, and a list valid for some time."""
    for key in ("expires_at", "valid_from", "valid_until"):
        if key in args and parse_time(args[key]) is None:
            return f"{key}: {_short(args[key])} is not a valid time"
    if command == "set_authorisations":
        start, end = parse_time(args["valid_from"]), parse_time(args["valid_until"])
        if start is not None and end is not None and end <= start:
            return "valid_until must be after valid_from"
    return None


def parse_command(payload: bytes, *, station_id: str, keyring: Keyring, now_wall: float,
                  max_bytes: int, max_lifetime_s: float,
                  clock_skew_s: float) -> CloudCommand | Rejection:
    """Check one message from the commands topic (the order is the module's docstring's).
    Never raises."""
    size = len(payload)
    ids: dict[str, str | None] = {"request_id": None, "command": None, "key_id": None}

    def reject(code: str, reason: str) -> Rejection:
        return Rejection(code, _reason(reason), ids["request_id"], ids["command"],
                         ids["key_id"], size)

    if size > max_bytes:
        return reject("too_large", f"{size} bytes; a command is at most {max_bytes}")
    obj, problem = _load_json(bytes(payload))
    if problem is not None:
        return reject("malformed_json", problem)
    if not isinstance(obj, dict):
        return reject("schema", f"a command is a JSON object, not {type(obj).__name__}")
    for key, pattern in (("request_id", _REQUEST_ID), ("command", _COMMAND),
                         ("key_id", _KEY_ID)):
        value = obj.get(key)
        if isinstance(value, str) and pattern.fullmatch(value):
            ids[key] = value
    envelope, args_validators = _validators()
    error = _first_error(envelope, obj)
    if error is not None:
        return reject("schema", error)
    issued_at, expires_at = parse_time(obj["issued_at"]), parse_time(obj["expires_at"])
    if issued_at is None or expires_at is None:
        which = "issued_at" if issued_at is None else "expires_at"
        return reject("schema", f"{which}: {_short(obj[which])} is not a valid time")
    try:
        key_id = keyring.verify(obj)
    except UnknownKey:
        return reject("unknown_key", f"key id {obj['key_id']!r} is not trusted by this "
                      "station")
    except BadSignature as exc:
        return reject("bad_signature", str(exc))
    if obj["station_id"] != station_id:
        return reject("wrong_station", f"for station {obj['station_id']!r}, this is "
                      f"{station_id!r}")
    if issued_at > now_wall + clock_skew_s:
        return reject("not_yet_valid", f"issued_at {obj['issued_at']} is "
                      f"{issued_at - now_wall:.0f} s ahead of the station's clock (skew "
                      f"allowed: {clock_skew_s:g} s)")
    if expires_at - issued_at > max_lifetime_s:
        return reject("not_yet_valid", f"lifetime {expires_at - issued_at:.0f} s exceeds "
                      f"{max_lifetime_s:g} s")
    if expires_at <= now_wall:
        return reject("expired", f"expired at {obj['expires_at']} "
                      f"({now_wall - expires_at:.0f} s ago by the station's clock)")
    command: str = obj["command"]
    args: dict[str, Any] = obj["args"]
    if command in CLOUD_COMMANDS:
        error = _first_error(args_validators[command], args) or _args_problem(command, args)
        if error is not None:
            return reject("bad_args", f"{command}: {error}")
    elif command not in LOCAL_OPERATOR_COMMANDS:
        return reject("unknown_command", f"unknown command {command!r}; the cloud may send: "
                      + ", ".join(CLOUD_COMMANDS))
    return CloudCommand(obj["request_id"], command, args, issued_at, expires_at, key_id)
