"""The command envelope: every rejection code, the order of the checks, and that no input
makes parse_command raise.

Each single-fault message below is a valid command with exactly one thing wrong, so
without the check for its code it would be accepted: each test fails without its check."""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from station.cloud.envelope import (
    CLOUD_COMMANDS,
    CODES,
    LOCAL_OPERATOR_COMMANDS,
    MAX_DEPTH,
    MAX_REASON_CHARS,
    CloudCommand,
    Rejection,
    command_schema,
    parse_command,
)
from station.cloud.signing import Keyring, sign_command

NOW = 1_796_083_200.0  # 2026-12-01T00:00:00Z
STATION = "PSS-0001"
KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
RING = Keyring({"ops-1": KEY.public_key()})
LIFETIME, SKEW = 3600.0, 30.0


def stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def body(**over: Any) -> dict[str, Any]:
    b = {"command": "slot_maintenance",
         "args": {"slot": 3, "action": "lock", "reason": "bolt sensor replaced"},
         "request_id": "req-1", "station_id": STATION, "issued_at": stamp(NOW - 5),
         "expires_at": stamp(NOW + 55)}
    b.update(over)
    return b


def signed(obj: dict[str, Any], key_id: str = "ops-1",
           key: Ed25519PrivateKey = KEY) -> dict[str, Any]:
    return sign_command(obj, key_id, key)


def encode(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def parse(payload: bytes, max_bytes: int = 65536) -> CloudCommand | Rejection:
    return parse_command(payload, station_id=STATION, keyring=RING, now_wall=NOW,
                         max_bytes=max_bytes, max_lifetime_s=LIFETIME, clock_skew_s=SKEW)


def code(payload: bytes, max_bytes: int = 65536) -> str:
    r = parse(payload, max_bytes)
    return r.code if isinstance(r, Rejection) else "ok"


# ---- accepted --------------------------------------------------------------------------------
def test_a_valid_command_is_accepted() -> None:
    r = parse(encode(signed(body())))
    assert r == CloudCommand("req-1", "slot_maintenance",
                             {"slot": 3, "action": "lock", "reason": "bolt sensor replaced"},
                             NOW - 5, NOW + 55, "ops-1")


def test_times_with_offsets_and_any_fraction() -> None:
    r = parse(encode(signed(body(issued_at="2026-12-01T00:59:55+01:00",
                                 expires_at="2026-11-30T19:00:55.000000000-05:00"))))
    assert isinstance(r, CloudCommand)
    assert (r.issued_at, r.expires_at) == (NOW - 5, NOW + 55)


@pytest.mark.parametrize("command", sorted(LOCAL_OPERATOR_COMMANDS))
def test_local_operator_commands_pass_to_the_command_entry(command: str) -> None:
    """not_permitted comes after replay, at the command entry: the envelope lets them by."""
    r = parse(encode(signed(body(command=command, args={"anything": [1]}))))
    assert isinstance(r, CloudCommand) and r.command == command


VALID_ARGS: dict[str, dict[str, Any]] = {
    "reserve_pack": {"vin": "LSJA24U66MS000001", "family": 25, "min_soc_pct": 80,
                     "expires_at": "2026-12-01T01:00:00.000Z"},
    "cancel_reservation": {"reservation_id": "res-7"},
    "set_authorisations": {
        "version": 3, "valid_from": "2026-12-01T00:00:00Z",
        "valid_until": "2026-12-08T00:00:00Z",
        "entries": [{"vin": "LSJA24U66MS000001", "families": [25]},
                    {"vin_prefix": "LRW", "families": [20, 21]}]},
    "set_power_cap": {"cap_kw": 300.5,
                      "schedule": [{"from": "17:00", "to": "21:00", "cap_kw": 150},
                                   {"from": "23:30", "to": "06:00", "cap_kw": 400}]},
    "slot_maintenance": {"slot": 255, "action": "release", "reason": "cleared"},
    "request_stop": {"reason": "grid emergency"},
    "request_hold": {},
    "snapshot": {},
}


def test_valid_args_cover_every_cloud_command() -> None:
    assert set(VALID_ARGS) == set(CLOUD_COMMANDS)
    assert {k.removeprefix("args.") for k in command_schema()["$defs"]
            if k.startswith("args.")} == set(CLOUD_COMMANDS)


@pytest.mark.parametrize("command", CLOUD_COMMANDS)
def test_every_cloud_command_with_valid_args(command: str) -> None:
    r = parse(encode(signed(body(command=command, args=VALID_ARGS[command]))), 1 << 20)
    assert isinstance(r, CloudCommand), r
    assert r.args == VALID_ARGS[command]
    extra = {**VALID_ARGS[command], "extra": 1}
    assert code(encode(signed(body(command=command, args=extra)))) == "bad_args"


def test_set_power_cap_null_goes_back_to_the_config() -> None:
    assert isinstance(parse(encode(signed(body(command="set_power_cap",
                                               args={"cap_kw": None})))), CloudCommand)


# ---- one test per code -----------------------------------------------------------------------
def test_too_large() -> None:
    ok = encode(signed(body()))
    padded = ok + b" " * (2048 - len(ok))  # valid JSON, valid signature: only too long
    assert code(padded, max_bytes=4096) == "ok"
    r = parse(padded, max_bytes=2047)
    assert isinstance(r, Rejection)
    assert (r.code, r.size, r.request_id) == ("too_large", 2048, None)
    assert "2048 bytes" in r.reason and "2047" in r.reason
    assert code(b"x" * (1 << 20), max_bytes=65536) == "too_large"  # 1 MB: not even decoded


@pytest.mark.parametrize("payload, why", [
    (b"\xff\xfe{}", "not UTF-8"),
    (b'{"command": "snap', "not JSON"),
    (b"", "not JSON"),
    (b'\xef\xbb\xbf{"a": 1}', "not JSON"),  # a UTF-8 BOM
    (b'{"a": NaN}', "NaN is not a JSON number"),
    (b'{"a": -Infinity}', "-Infinity is not a JSON number"),
    (b'{"a": 1e400}', "overflows"),
    (b'{"a": 9007199254740992}', "2**53"),
    (b'{"a": -9007199254740992}', "2**53"),
    (b'{"a": ' + b"9" * 5000 + b"}", "2**53"),
    (b'{"a": "\\ud800"}', "lone surrogate"),
    (b'{"\\udfff": 1}', "lone surrogate"),
    (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "nested deeper"),
    (b"[" * 100_000, "nested deeper"),
    (b'{"a": ' * 100_000, "nested deeper"),
])
def test_malformed_json(payload: bytes, why: str) -> None:
    r = parse(payload, max_bytes=1 << 20)
    assert isinstance(r, Rejection) and r.code == "malformed_json", r
    assert why in r.reason and r.size == len(payload)


def test_malformed_json_duplicate_keys_are_refused_even_when_equal() -> None:
    """The rule for duplicate keys: refused, whatever the values. Here both values are the
    same, so only the duplicate rule refuses it."""
    text = json.dumps(signed(body()))
    dup = '{"station_id": "' + STATION + '", ' + text[1:]
    assert code(text.encode()) == "ok"
    r = parse(dup.encode())
    assert isinstance(r, Rejection) and r.code == "malformed_json"
    assert r.reason == "duplicate key 'station_id'"


def test_integers_at_the_edge_of_json_are_taken() -> None:
    cmd = signed(body(command="set_authorisations",
                      args={**VALID_ARGS["set_authorisations"], "version": 2**53 - 1}))
    assert code(encode(cmd)) == "ok"


@pytest.mark.parametrize("mutate, why", [
    (lambda b: [b], "a command is a JSON object, not list"),
    (lambda b: "text", "not str"),
    (lambda b: None, "not NoneType"),
    (lambda b: {**b, "extra": 1}, "Additional properties"),
    (lambda b: {k: v for k, v in b.items() if k != "signature"}, "'signature' is a required"),
    (lambda b: {k: v for k, v in b.items() if k != "args"}, "'args' is a required"),
    (lambda b: {**b, "args": []}, "args: [] is not of type 'object'"),
    (lambda b: {**b, "request_id": "has space"}, "request_id"),
    (lambda b: {**b, "request_id": "r" * 65}, "request_id"),
    (lambda b: {**b, "key_id": "a/b"}, "key_id"),
    (lambda b: {**b, "command": 7}, "command"),
    (lambda b: {**b, "issued_at": "2026-12-01 00:00:00"}, "issued_at"),
    (lambda b: {**b, "issued_at": "2026-02-30T00:00:00Z"}, "issued_at: '2026-02-30T00:00:00Z' "
                                                          "is not a valid time"),
    (lambda b: {**b, "expires_at": "2026-12-01T00:00:60Z"}, "expires_at"),
    (lambda b: {**b, "signature": "A" * 129}, "signature"),
    (lambda b: {**b, "signature": 5}, "signature"),
])
def test_schema(mutate: Callable[[dict[str, Any]], Any], why: str) -> None:
    # signed after the change (but key_id and signature, which signing sets): only the
    # schema check can refuse it
    changed = mutate(body())
    if why in ("signature", "key_id", "'signature' is a required"):
        changed = mutate(signed(body()))
    elif isinstance(changed, dict):
        changed = signed(changed)
    r = parse(encode(changed))
    assert isinstance(r, Rejection) and r.code == "schema", r
    assert why in r.reason


def test_schema_refusal_still_names_the_readable_ids() -> None:
    r = parse(encode(signed(body(extra=1))))
    assert isinstance(r, Rejection)
    assert (r.code, r.request_id, r.command, r.key_id) == ("schema", "req-1",
                                                          "slot_maintenance", "ops-1")


def test_unknown_key() -> None:
    r = parse(encode(signed(body(), key_id="ops-9")))
    assert isinstance(r, Rejection) and r.code == "unknown_key"
    assert r.key_id == "ops-9" and "ops-9" in r.reason


@pytest.mark.parametrize("mutate", [
    lambda s: {**s, "signature": signed(body(), key=OTHER)["signature"]},  # another key
    lambda s: {**s, "signature": "!" * 88},  # not base64
    lambda s: {**s, "signature": "QUJD"},  # base64 of 3 bytes
    lambda s: {**s, "request_id": "req-2"},  # changed after signing
    lambda s: {**s, "args": {**s["args"], "slot": 4}},
])
def test_bad_signature(mutate: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    assert code(encode(mutate(signed(body())))) == "bad_signature"


def test_wrong_station() -> None:
    r = parse(encode(signed(body(station_id="PSS-0002"))))
    assert isinstance(r, Rejection) and r.code == "wrong_station"
    assert "PSS-0002" in r.reason


def test_not_yet_valid_issued_in_the_future() -> None:
    at_edge = body(issued_at=stamp(NOW + SKEW), expires_at=stamp(NOW + SKEW + 60))
    assert code(encode(signed(at_edge))) == "ok"
    ahead = body(issued_at=stamp(NOW + SKEW + 1), expires_at=stamp(NOW + SKEW + 60))
    r = parse(encode(signed(ahead)))
    assert isinstance(r, Rejection) and r.code == "not_yet_valid"
    assert "ahead of the station's clock" in r.reason


def test_not_yet_valid_lifetime_too_long() -> None:
    at_edge = body(issued_at=stamp(NOW - 10), expires_at=stamp(NOW - 10 + LIFETIME))
    assert code(encode(signed(at_edge))) == "ok"
    long = body(issued_at=stamp(NOW - 10), expires_at=stamp(NOW - 10 + LIFETIME + 1))
    r = parse(encode(signed(long)))
    assert isinstance(r, Rejection) and r.code == "not_yet_valid" and "lifetime" in r.reason


def test_expired() -> None:
    assert code(encode(signed(body(issued_at=stamp(NOW - 60),
                                   expires_at=stamp(NOW + 0.001))))) == "ok"
    r = parse(encode(signed(body(issued_at=stamp(NOW - 60), expires_at=stamp(NOW)))))
    assert isinstance(r, Rejection) and r.code == "expired"


@pytest.mark.parametrize("command", ["fly", "state_complete", "pack_unlock", "reserve"])
def test_unknown_command(command: str) -> None:
    r = parse(encode(signed(body(command=command, args={}))))
    assert isinstance(r, Rejection) and r.code == "unknown_command"
    assert "request_stop" in r.reason


BAD_ARGS: list[tuple[str, dict[str, Any]]] = [
    ("reserve_pack", {**VALID_ARGS["reserve_pack"], "vin": "LSJA24U66MS00000I"}),  # I
    ("reserve_pack", {**VALID_ARGS["reserve_pack"], "vin": "LSJA24U66MS00001"}),  # 16
    ("reserve_pack", {**VALID_ARGS["reserve_pack"], "family": 251}),
    ("reserve_pack", {**VALID_ARGS["reserve_pack"], "family": 25.0}),
    ("reserve_pack", {**VALID_ARGS["reserve_pack"], "family": True}),
    ("reserve_pack", {**VALID_ARGS["reserve_pack"], "min_soc_pct": 100.5}),
    ("reserve_pack", {**VALID_ARGS["reserve_pack"], "expires_at": "tomorrow"}),
    ("reserve_pack", {**VALID_ARGS["reserve_pack"], "expires_at": "2026-13-01T00:00:00Z"}),
    ("reserve_pack", {k: v for k, v in VALID_ARGS["reserve_pack"].items() if k != "vin"}),
    ("cancel_reservation", {"reservation_id": ""}),
    ("set_authorisations", {**VALID_ARGS["set_authorisations"], "version": 0}),
    ("set_authorisations", {**VALID_ARGS["set_authorisations"],
                            "valid_until": "2026-11-30T00:00:00Z"}),  # before valid_from
    ("set_authorisations", {**VALID_ARGS["set_authorisations"],
                            "entries": [{"families": [1]}]}),  # neither vin nor prefix
    ("set_authorisations", {**VALID_ARGS["set_authorisations"], "entries": [
        {"vin": "LSJA24U66MS000001", "vin_prefix": "LSJ", "families": [1]}]}),  # both
    ("set_authorisations", {**VALID_ARGS["set_authorisations"], "entries": [
        {"vin_prefix": "LSJA24U66MS000001", "families": [1]}]}),  # prefix of 17
    ("set_authorisations", {**VALID_ARGS["set_authorisations"], "entries": [
        {"vin": "LSJA24U66MS000001", "families": []}]}),
    ("set_authorisations", {**VALID_ARGS["set_authorisations"], "entries": [
        {"vin": "LSJA24U66MS000001", "families": list(range(65))}]}),
    ("set_authorisations", {**VALID_ARGS["set_authorisations"],
                            "entries": [{"vin_prefix": "L", "families": [1]}] * 20001}),
    ("set_power_cap", {"cap_kw": 0.5}),
    ("set_power_cap", {"cap_kw": 20001}),
    ("set_power_cap", {"schedule": []}),  # cap_kw is required (null: the config's)
    ("set_power_cap", {"cap_kw": 100, "schedule": [{"from": "24:00", "to": "06:00",
                                                     "cap_kw": 50}]}),
    ("set_power_cap", {"cap_kw": 100, "schedule": [{"from": "7:00", "to": "08:00",
                                                     "cap_kw": 50}]}),
    ("set_power_cap", {"cap_kw": 100, "schedule": [{"from": "06:00", "to": "08:00",
                                                     "cap_kw": 50}] * 49}),
    ("slot_maintenance", {"slot": 0, "action": "lock", "reason": "x"}),
    ("slot_maintenance", {"slot": 256, "action": "lock", "reason": "x"}),
    ("slot_maintenance", {"slot": 1, "action": "unlock", "reason": "x"}),
    ("slot_maintenance", {"slot": 1, "action": "lock", "reason": ""}),
    ("slot_maintenance", {"slot": 1, "action": "lock", "reason": "   "}),
    ("slot_maintenance", {"slot": 1, "action": "lock", "reason": "x" * 201}),
    ("slot_maintenance", {"slot": 1, "action": "lock"}),
    ("request_stop", {"reason": 5}),
    ("request_hold", {"why": "x"}),
    ("snapshot", {"now": True}),
]


@pytest.mark.parametrize("command, args", BAD_ARGS,
                         ids=[f"{c}-{i}" for i, (c, _) in enumerate(BAD_ARGS)])
def test_bad_args(command: str, args: dict[str, Any]) -> None:
    r = parse(encode(signed(body(command=command, args=args))), 1 << 20)
    assert isinstance(r, Rejection) and r.code == "bad_args", r
    assert r.reason.startswith(f"{command}: ") and len(r.reason) <= MAX_REASON_CHARS


def test_bounds_at_their_edges_are_taken() -> None:
    for command, args in [
        ("reserve_pack", {**VALID_ARGS["reserve_pack"], "family": 0, "min_soc_pct": 0}),
        ("reserve_pack", {**VALID_ARGS["reserve_pack"], "family": 250, "min_soc_pct": 100}),
        ("slot_maintenance", {"slot": 1, "action": "lock", "reason": "x" * 200}),
        ("set_power_cap", {"cap_kw": 1, "schedule": [{"from": "23:59", "to": "00:00",
                                                       "cap_kw": 20000}] * 48}),
        ("set_authorisations", {**VALID_ARGS["set_authorisations"], "entries": [
            {"vin_prefix": "LSJA24U66MS00000", "families": list(range(64))}]}),
    ]:
        assert code(encode(signed(body(command=command, args=args)))) == "ok", (command, args)


def test_a_full_authorisation_list_fits_the_default_size() -> None:
    from station.config import CloudSection
    from station.network import MAX_ENTRIES

    args = {**VALID_ARGS["set_authorisations"],
            "entries": [{"vin": "LSJA24U67MS123456", "families": [25]}] * MAX_ENTRIES}
    payload = encode(signed(body(command="set_authorisations", args=args)))
    assert code(payload, max_bytes=CloudSection().max_command_bytes) == "ok"
    args["entries"] = args["entries"] + args["entries"][:1]
    payload = encode(signed(body(command="set_authorisations", args=args)))
    assert code(payload, max_bytes=CloudSection().max_command_bytes) == "bad_args"


# ---- the order -------------------------------------------------------------------------------
# Each fault alone makes a valid command fail with its code. Applied together, the first in
# CODES order decides.
Fault = Callable[[dict[str, Any]], None]
BODY_FAULTS: dict[str, Fault] = {
    "schema": lambda b: b.update(extra=1),
    "wrong_station": lambda b: b.update(station_id="PSS-0002"),
    # expired before not_yet_valid: the lifetime is measured back from expires_at
    "expired": lambda b: b.update(issued_at=stamp(NOW - 61), expires_at=stamp(NOW - 1)),
    "not_yet_valid": lambda b: b.update(
        issued_at=stamp(datetime.fromisoformat(b["expires_at"]).timestamp() - 2 * LIFETIME)),
    "unknown_command": lambda b: b.update(command="fly"),
    "bad_args": lambda b: b.update(args={**b["args"], "slot": 0}),
}
BODY_ORDER = ["schema", "wrong_station", "expired", "not_yet_valid", "unknown_command",
              "bad_args"]


def build(faults: set[str]) -> bytes:
    b = body()
    if "bad_args" in faults:  # before unknown_command replaces the command
        BODY_FAULTS["bad_args"](b)
    for name in BODY_ORDER:
        if name in faults and name != "bad_args":
            BODY_FAULTS[name](b)
    s = signed(b, key_id="ops-9" if "unknown_key" in faults else "ops-1")
    if "bad_signature" in faults:
        s["signature"] = signed(b, key=OTHER, key_id=s["key_id"])["signature"]
    text = json.dumps(s)
    if "malformed_json" in faults:
        text = '{"args": {}, ' + text[1:]
    data = text.encode()
    if "too_large" in faults:
        data += b" " * 5000
    return data


def test_each_fault_alone_gives_its_code() -> None:
    assert code(build(set()), max_bytes=4096) == "ok"
    for name in CODES:
        assert code(build({name}), max_bytes=4096) == name


@pytest.mark.parametrize("first, later", list(itertools.combinations(CODES, 2)))
def test_the_earlier_check_decides(first: str, later: str) -> None:
    assert code(build({first, later}), max_bytes=4096) == first


def test_all_faults_at_once_peel_off_in_order() -> None:
    faults = set(CODES)
    for name in CODES:
        assert code(build(faults), max_bytes=4096) == name
        faults.discard(name)
    assert code(build(faults), max_bytes=4096) == "ok"


# ---- never raises ----------------------------------------------------------------------------
def _check_answer(r: object, size: int) -> None:
    assert isinstance(r, CloudCommand | Rejection)
    if isinstance(r, Rejection):
        assert r.code in CODES and r.size == size
        assert isinstance(r.reason, str) and 0 < len(r.reason) <= MAX_REASON_CHARS


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=30,
)
FIELDS = ["command", "args", "request_id", "station_id", "issued_at", "expires_at", "key_id",
          "signature"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(data: bytes) -> None:
    _check_answer(parse(data), len(data))


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_random_json_never_raises(value: Any) -> None:
    data = json.dumps(value).encode()
    _check_answer(parse(data, 1 << 20), len(data))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([*CLOUD_COMMANDS, "reset", "fly"]),
       st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=3),
       st.dictionaries(st.text(max_size=12), json_values, max_size=4),
       st.booleans())
def test_random_envelopes_never_raise(command: str, replace: dict[str, Any],
                                      args: dict[str, Any], resign: bool) -> None:
    """Near-valid commands: random args, some fields replaced by random JSON, signed again
    or not (so the later checks see random values too)."""
    obj = {**body(command=command, args=args), **replace}
    if resign:
        with contextlib.suppress(ValueError):  # JCS cannot carry NaN, 2**60: unsigned
            obj = signed(obj)
    try:
        data = json.dumps(obj).encode()
    except (ValueError, RecursionError):
        return
    _check_answer(parse(data, 1 << 20), len(data))


@pytest.mark.parametrize("data", [
    b"\x00" * 10, b"null", b"true", b"0", b'"x"', b"[]", b"{}", b"1e999", b"-0",
    json.dumps({f: None for f in FIELDS}).encode(),
    json.dumps({f: [] for f in FIELDS}).encode(),
    json.dumps({f: {} for f in FIELDS}).encode(),
    b'{"command": "x"' + b', "command": "x"' * 1000 + b"}",
])
def test_odd_inputs_never_raise(data: bytes) -> None:
    _check_answer(parse(data, 1 << 20), len(data))


def test_a_one_megabyte_payload_inside_the_limit_is_judged_quickly() -> None:
    args = {"reason": "x" * (1 << 20)}
    data = encode(signed(body(command="request_stop", args=args)))
    r = parse(data, max_bytes=2 << 20)
    assert isinstance(r, Rejection) and r.code == "bad_args"
    assert len(r.reason) <= MAX_REASON_CHARS
