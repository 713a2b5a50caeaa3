"""The telemetry schemas are the contract: valid schemas, builders whose messages match
them, broken messages refused, docs/telemetry.md generated from them, the swap record's
arithmetic."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sqlite3
import types
import typing
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from station.cloud import docgen, messages, topics
from station.cloud.messages import MessageInvalid, validate
from station.config import StationConfig
from station.events import EVENT_TYPES, SwapStarted
from station.journal import Journal
from station.plan import PackInfo
from tests.unit.core_harness import make_run

STATION = "PSS-TEST-0001"
T0 = 1_796_083_199.123  # 2026-11-30T23:59:59.123Z
CONTRACTS = {"plc_contract": "1.0", "can_protocol": "1.2"}


def _status(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(station_id=STATION, online=True, session=7,
                                software_version="0.1.0",
                                config_hash=messages.config_hash(StationConfig()),
                                contracts=CONTRACTS, started_wall=T0 - 3600, sent_wall=T0)
    args.update(kw)
    return messages.status_message(**args)


def _slot(n: int, **kw: Any) -> dict[str, Any]:
    s = dict(slot=n, occupied=True, serial=1000 + n, chemistry="nmc", family=20, soc_pct=81.5,
             soh_pct=96.0, min_cell_temp_c=24.0, max_cell_temp_c=27.5, state="charging",
             granted_power_kw=30.0, reason=None, reserved_for=None)
    s.update(kw)
    return s


def _rack() -> dict[str, Any]:
    body = {"power_kw": 30.0, "power_cap_kw": 200.0,
            "slots": [_slot(1), _slot(2, occupied=False, serial=None, chemistry=None,
                                     family=None, soc_pct=None, soh_pct=None,
                                     min_cell_temp_c=None, max_cell_temp_c=None,
                                     state="empty", granted_power_kw=0.0),
                      _slot(3, state="ready", granted_power_kw=0.0,
                            reserved_for="LSJA24U96MS123456")]}
    return messages.rack_message(STATION, body, T0)


def _row(**kw: Any) -> dict[str, Any]:
    out = {"serial": 11, "family": 20, "chemistry": "nmc", "soc_pct": 20.0, "soh_pct": 91.0,
           "slot": None, "rated_energy_kwh": 70.0}
    inn = {"serial": 22, "family": 20, "chemistry": "nmc", "soc_pct": 95.0, "soh_pct": None,
           "slot": 4, "rated_energy_kwh": 75.0}
    row: dict[str, Any] = dict(swap_id=f"{STATION}-000042", vehicle_token=3, started_wall=T0,
                               pack_out=json.dumps(out), pack_in=json.dumps(inn), store_slot=2,
                               fetch_slot=4, outcome="completed", reason=None)
    row.update(kw)
    return row


def _swap(row: dict[str, Any] | None = None, ended: float = T0 + 143.5) -> dict[str, Any]:
    return messages.swap_record(STATION, row or _row(), ended, 99, False, T0 + 144)


def _examples() -> dict[str, dict[str, Any]]:
    return {
        "status": _status(),
        "state": messages.state_message(STATION, make_run().core.status(), T0),
        "rack": _rack(),
        "event": messages.event_message(
            STATION, 5, 5, "swap_ended", {"t": 12.5, "swap_id": f"{STATION}-000001",
                                          "outcome": "aborted", "reason": "lift timeout",
                                          "step": "lift"}, T0 - 1, True, T0),
        "swap": _swap(),
    }


# ---- the schema files --------------------------------------------------------------------
def test_the_five_message_schemas_are_shipped_first() -> None:
    names = messages.schema_names()
    assert names[:5] == ["status", "state", "rack", "event", "swap"]
    assert names[5:] == sorted(names[5:])


@pytest.mark.parametrize("name", messages.schema_names())
def test_every_schema_is_a_valid_draft_2020_12_schema(name: str) -> None:
    schema = messages.load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema.get("title") and schema.get("description"), name


def _properties(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(node, dict):
        for k, v in node.get("properties", {}).items():
            found.append((f"{path}.{k}", v))
        for k, v in node.items():
            if k not in ("allOf", "if", "then"):  # the event's conditionals only point
                found += _properties(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _properties(v, f"{path}[{i}]")
    return found


@pytest.mark.parametrize("name", messages.MESSAGE_TYPES)
def test_every_property_is_described_and_envelopes_are_closed(name: str) -> None:
    schema = messages.load_schema(name)
    undescribed = [p for p, v in _properties(schema)
                   if "$ref" not in v and not v.get("description")]
    assert not undescribed, undescribed
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == set(schema["properties"])
    assert schema["properties"]["schema"]["const"] == f"swapnet.{name}/1"


# ---- the builders' messages match --------------------------------------------------------
@pytest.mark.parametrize("name", messages.MESSAGE_TYPES)
def test_built_messages_validate(name: str) -> None:
    msg = _examples()[name]
    validate(name, msg)
    assert json.loads(messages.encode(msg)) == msg


def test_the_will_is_the_birth_offline_with_its_session() -> None:
    birth, will = _status(), _status(online=False, reason=messages.CONNECTION_LOST)
    validate("status", will)
    assert (will["online"], will["session"], will["reason"]) == (False, birth["session"],
                                                                  "connection lost")
    assert birth["contracts"] == {**CONTRACTS, "telemetry": "1"}


def test_state_ignores_keys_the_schema_lacks_and_fills_the_optional_ones() -> None:
    status = make_run().core.status() | {"power_cap_kw": 150.0, "authorisation_version": 3,
                                         "locked_out_slots": {4: "thermal event"}}
    msg = messages.state_message(STATION, status, T0)
    validate("state", msg)
    assert msg["locked_out_slots"] == {"4": "thermal event"}
    assert (msg["power_cap_kw"], msg["authorisation_version"]) == (150.0, 3)
    bare = {k: v for k, v in status.items() if k not in ("power_cap_kw",
                                                           "authorisation_version")}
    msg = messages.state_message(STATION, bare, T0)
    assert (msg["power_cap_kw"], msg["authorisation_version"]) == (None, None)
    assert "untrusted_packs" not in msg and "charging_power_kw" not in msg


def test_rack_leaves_out_slot_keys_the_schema_lacks() -> None:
    body = {"power_kw": 0.0, "power_cap_kw": 200.0, "slots": [_slot(1, debug="x")]}
    msg = messages.rack_message(STATION, body, T0)
    validate("rack", msg)
    assert "debug" not in msg["slots"][0]


def test_the_core_rack_body_validates_through_a_swap() -> None:
    run = make_run()
    for _ in range(40):
        validate("rack", messages.rack_message(
            STATION, run.core.rack_status(run.plc.image, run.now), T0))
        run.step(n=25)


def test_every_event_and_the_record_of_a_real_swap_validate(tmp_path: Path) -> None:
    """A swap through the scripted PLC, journaled: every event the journal holds, and the
    swap record from its swaps row (a sqlite3.Row), match their schemas."""
    run = make_run()
    run.until(lambda: bool(run.kinds("swap_ended")))
    journal = Journal(tmp_path / "journal.db")
    try:
        journal.record(run.events)
        rows = journal.events_after(0, limit=100_000)
        assert {r["kind"] for r in rows} >= {"state", "swap_started", "step_started",
                                             "step_done", "swap_ended"}
        for seq, r in enumerate(rows, 1):
            msg = messages.event_message(STATION, r["id"], seq, r["kind"],
                                         json.loads(r["data"]), r["wall"], False, T0)
            validate("event", msg)
            assert "t" not in msg["data"]
        ended = next(r for r in rows if r["kind"] == "swap_ended")
        (swap,) = journal.swaps()
        assert isinstance(swap, sqlite3.Row)
        rec = messages.swap_record(STATION, swap, ended["wall"], ended["id"], True, T0)
        validate("swap", rec)
        vin = dict(swap).get("vin")  # a column issue 8 adds
        assert rec["vehicle"]["vin"] == vin and rec["outcome"] == "completed"
    finally:
        journal.close()


# ---- broken messages fail ----------------------------------------------------------------
def _broken(name: str, change: Any) -> dict[str, Any]:
    msg = copy.deepcopy(_examples()[name])
    change(msg)
    return msg


BROKEN = {
    "missing field": ("status", lambda m: m.pop("session"), "session"),
    "wrong type": ("state", lambda m: m.update(packml_state_number="4"), "packml_state_number"),
    "null not allowed": ("swap", lambda m: m.update(outcome=None), "outcome"),
    "extra field": ("event", lambda m: m.update(debug=1), "debug"),
    "time without milliseconds": ("status", lambda m: m.update(sent_at="2026-11-30T23:59:59Z"),
                                  "sent_at"),
    "time not UTC": ("swap", lambda m: m.update(ended_at="2026-11-30T23:59:59.123+01:00"),
                     "ended_at"),
    "no such date": ("event", lambda m: m.update(at="2026-02-30T10:00:00.000Z"), "at"),
    "bad slot state": ("rack", lambda m: m["slots"][0].update(state="on_fire"), "state"),
    "extra slot field": ("rack", lambda m: m["slots"][0].update(temp=1), "temp"),
    "bad station id": ("rack", lambda m: m.update(station_id="A/B"), "station_id"),
    "bad VIN": ("swap", lambda m: m["vehicle"].update(vin="LSJA24U96MS12345O"), "vin"),
    "wrong schema version": ("state", lambda m: m.update(schema="swapnet.state/2"), "schema"),
    "unknown event kind": ("event", lambda m: m.update(kind="coffee"), "kind"),
    "event data missing a field": ("event", lambda m: m["data"].pop("outcome"), "outcome"),
    "event data of the wrong type": ("event", lambda m: m["data"].update(step="sideways"),
                                     "step"),
    "seq from 0": ("event", lambda m: m.update(seq=0), "seq"),
    "bad telemetry version": ("status", lambda m: m["contracts"].update(telemetry="2"),
                              "telemetry"),
    "soc over 100": ("swap", lambda m: m["pack_in"].update(soc_pct=101), "soc_pct"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_messages_fail_naming_the_place(case: str) -> None:
    name, change, where = BROKEN[case]
    with pytest.raises(MessageInvalid, match=where):
        validate(name, _broken(name, change))


def test_a_message_that_is_not_an_object_fails() -> None:
    with pytest.raises(MessageInvalid, match=r"swapnet\.swap/1"):
        validate("swap", [])


# ---- event data per kind follows station/events.py ---------------------------------------
_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean",
               type(None): "null", dict: "object", list: "array", PackInfo: "object"}


def _json_types(annotation: Any) -> set[str]:
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) or \
        typing.get_origin(annotation) is typing.Union else (annotation,)
    return {_JSON_TYPES[typing.get_origin(a) or a] for a in args}


def _values(cls: type) -> dict[str, Any]:
    """Some value for each field without a default: enough to build the event."""
    sample = {"string": "x", "integer": 1, "number": 1.0, "boolean": False, "object": {},
              "array": [], "null": None}
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name == "t" or f.default is not dataclasses.MISSING \
                or f.default_factory is not dataclasses.MISSING:
            continue
        out[f.name] = PackInfo(1, 20, "nmc", 50.0) if hints[f.name] is PackInfo \
            else sample[sorted(_json_types(hints[f.name]))[0]]
    return out


def test_event_kinds_are_the_journal_kinds() -> None:
    schema = messages.load_schema("event")
    assert schema["properties"]["kind"]["enum"] == list(EVENT_TYPES)  # the same order
    cases = {c["if"]["properties"]["kind"]["const"] for c in schema["allOf"]}
    assert cases == set(EVENT_TYPES) == set(schema["$defs"])


@pytest.mark.parametrize("kind", sorted(EVENT_TYPES))
def test_event_data_schema_has_every_field_of_its_class(kind: str) -> None:
    """Every field of the event's data, typed as its class says; required unless it has a
    default (a field added later: events journaled before it lack it)."""
    cls = EVENT_TYPES[kind]
    data = messages.load_schema("event")["$defs"][kind]
    hints = typing.get_type_hints(cls)
    fields = {f: hints[f] for f in cls(t=0.0, **_values(cls)).data if f != "t"}
    assert set(fields) == set(data["properties"])
    assert set(data["required"]) == {
        f.name for f in dataclasses.fields(cls) if f.name in fields
        and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    for name, hint in fields.items():
        prop = data["properties"][name]
        declared = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
        assert set(declared) == _json_types(hint), (kind, name)


def test_pack_info_in_swap_started_validates() -> None:
    pack = PackInfo(serial=1, family=20, chemistry="lfp", soc_pct=12.5)
    ev = SwapStarted(t=3.0, swap_id=f"{STATION}-000001", vehicle_token=1, pack_out=pack,
                     pack_in=PackInfo(2, 20, "lfp", 97.0, 99.0, 5), store_slot=3, fetch_slot=5,
                     origin="local")
    validate("event", messages.event_message(STATION, 1, 1, ev.kind, ev.data, T0, False, T0))


# ---- the swap record's arithmetic --------------------------------------------------------
def test_completed_swap_hands_over_the_energy_difference() -> None:
    rec = _swap()
    assert rec["energy_kwh"] == pytest.approx(75.0 * 0.95 - 70.0 * 0.20)  # 57.25
    assert rec["duration_s"] == 143.5
    assert rec["started_at"] == "2026-11-30T23:59:59.123Z"
    assert rec["ended_at"] == "2026-12-01T00:02:22.623Z"
    assert rec["record_id"] == f"{STATION}-000042" and rec["event_id"] == 99
    assert rec["pack_out"] == {"serial": 11, "chemistry": "nmc", "family": 20,
                               "soc_pct": 20.0, "soh_pct": 91.0, "rated_energy_kwh": 70.0}


@pytest.mark.parametrize("outcome", ["aborted", "stopped"])
def test_a_swap_that_did_not_complete_hands_over_nothing(outcome: str) -> None:
    rec = _swap(_row(outcome=outcome, reason="lift timeout"))
    validate("swap", rec)
    assert rec["energy_kwh"] == 0.0 and rec["reason"] == "lift timeout"


def test_unknown_rated_energy_gives_no_energy_rather_than_a_guess() -> None:
    pack_in = json.loads(_row()["pack_in"])
    del pack_in["rated_energy_kwh"]
    rec = _swap(_row(pack_in=json.dumps(pack_in)))
    validate("swap", rec)
    assert rec["energy_kwh"] is None and rec["pack_in"]["rated_energy_kwh"] is None
    assert _swap(_row(outcome="aborted", pack_in=json.dumps(pack_in)))["energy_kwh"] == 0.0


def test_vin_is_taken_when_the_journal_has_the_column() -> None:
    rec = _swap(_row(vin="LSJA24U96MS123456"))
    validate("swap", rec)
    assert rec["vehicle"] == {"vin": "LSJA24U96MS123456", "token": 3}
    assert _swap()["vehicle"]["vin"] is None


def test_a_wall_clock_stepped_back_never_gives_a_negative_duration() -> None:
    rec = _swap(ended=T0 - 5)
    validate("swap", rec)
    assert rec["duration_s"] == 0.0


# ---- small helpers -----------------------------------------------------------------------
def test_utc_is_rfc3339_with_milliseconds_and_z() -> None:
    assert messages.utc(T0) == "2026-11-30T23:59:59.123Z"
    assert messages.utc(0) == "1970-01-01T00:00:00.000Z"
    assert messages.utc(1.0005) == "1970-01-01T00:00:01.000Z"  # float 1.000499...
    assert messages.utc(59.9996) == "1970-01-01T00:01:00.000Z"


def test_config_hash_is_stable_and_follows_the_config() -> None:
    a, b = StationConfig(), StationConfig()
    assert messages.config_hash(a) == messages.config_hash(b)
    assert len(messages.config_hash(a)) == 64
    other = StationConfig.model_validate({"station": {"id": "PSS-OTHER-0002"}})
    assert messages.config_hash(other) != messages.config_hash(a)


def test_encode_is_compact_utf8_and_refuses_nan() -> None:
    assert messages.encode({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()
    with pytest.raises(ValueError):
        messages.encode({"x": math.nan})


# ---- docs/telemetry.md -------------------------------------------------------------------
def test_committed_doc_is_generated_from_the_schemas() -> None:
    diff = docgen.check()
    assert not diff, ("docs/telemetry.md is out of date: run python -m station.cloud.docgen"
                      "\n" + "\n".join(diff[:40]))


def test_a_schema_change_changes_the_doc(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    doc = tmp_path / "telemetry.md"
    assert docgen.main(["--out", str(doc), "--check"]) == 1
    assert docgen.main(["--out", str(doc)]) == 0
    assert docgen.check(doc) == []
    real = messages.load_schema

    def changed(name: str) -> dict[str, Any]:
        s = copy.deepcopy(real(name))
        if name == "rack":
            s["properties"]["power_kw"]["description"] = "changed"
        return s

    monkeypatch.setattr(docgen, "load_schema", changed)
    assert docgen.check(doc) and docgen.main(["--out", str(doc), "--check"]) == 1


def test_doc_has_every_schema_topic_field_and_event_kind() -> None:
    text = docgen.generate()
    for name in messages.schema_names():
        assert f"(`{name}.json`)" in text
        for prop in messages.load_schema(name).get("properties", {}):
            assert f"`{prop}`" in text
    for leaf in (*topics.STATION_LEAVES, topics.COMMANDS):
        assert f"| `{leaf}` |" in text
    assert {row[0] for row in docgen.TOPIC_ROWS} == {*topics.STATION_LEAVES, topics.COMMANDS}
    for kind in EVENT_TYPES:
        assert f"#### data of `{kind}`" in text
    for phrase in ("(`station_id`, `event_id`)", "`record_id`", "RFC 8785", "Ed25519",
                   "same session", "not backlog", "replayed", "`not_permitted`",
                   "`bad_signature`"):
        assert phrase in text, phrase
