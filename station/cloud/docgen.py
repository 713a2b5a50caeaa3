"""docs/telemetry.md, generated from the shipped JSON Schemas (station/cloud/schemas) and the
topic tree, with the delivery and command contract as fixed prose: `python -m
station.cloud.docgen` writes it, `--check` exits 1 when the committed file differs (a test
does the same)."""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from station.cloud import topics
from station.cloud.messages import load_schema, schema_names

DOC: Final = Path(__file__).resolve().parents[2] / "docs" / "telemetry.md"

# (leaf, direction, QoS, retained, schema, when): the link publishes as this table says
TOPIC_ROWS: Final = (
    (topics.STATUS, "station -> back end", 1, True, "status",
     "birth on every connect; the will (offline) when the connection dies"),
    (topics.STATE, "station -> back end", 1, True, "state",
     "on every change, on connect, on `snapshot`"),
    (topics.RACK, "station -> back end", 0, True, "rack",
     "every `cloud.rack_period_s` (10 s), on a significant change, on `snapshot`"),
    (topics.EVENTS, "station -> back end", 1, False, "event",
     "every journaled event, in journal order, from the outbox"),
    (topics.SWAPS, "station -> back end", 1, False, "swap",
     "one record per finished swap, from the outbox"),
    (topics.COMMANDS, "back end -> station", 1, False, "command",
     "signed commands; the station subscribes to its own only"),
    (topics.RESPONSES, "station -> back end", 1, False, "response",
     "one answer per message on `commands`"),
)

INTRO: Final = """\
# Telemetry and commands: the station's MQTT contract

Generated from the JSON Schemas in `station/cloud/schemas/` (shipped in the package) and
the topic tree in `station/cloud/topics.py` by `python -m station.cloud.docgen`; a test
fails when this file and the schemas differ. The schemas are the contract: every message
the tests see is validated against its schema (`station.cloud.messages.validate`).

Messages are JSON objects in UTF-8, compact. Times are UTC, RFC 3339 with milliseconds
and "Z" (`2026-11-30T23:59:59.123Z`). Every message the station publishes carries
`schema` (its type and version, `swapnet.status/1`), `station_id` and `sent_at`. An
envelope never has a field its schema does not list; the `data` of an event and the
`args`/`result` objects may gain fields in a later release of the same version: ignore
what you do not know. An incompatible change is a new version under a new prefix
(`swapnet/v2`), which can run beside v1 while stations are upgraded.

## Topic tree

Every topic is `<prefix>/<station_id>/<leaf>`, prefix `swapnet/v1` (`cloud.topic_prefix`).
The station id is one topic level and the common name of the station's client
certificate: the broker's ACL lets a station publish only under its own id and subscribe
only to its own `commands`.

"""

CONTRACT: Final = """\
## Delivery: nothing lost, the journal is the outbox

What the back end may rely on:

- **At least once.** Events and swap records are published at QoS 1 from the journal's
  outbox: every event is journaled (SQLite, fsync) before anything else happens to it, and
  the cloud's delivery cursor moves only when the broker has acknowledged the publish
  (PUBACK). After a broker outage, a reconnect, a swapd restart or a SIGKILL, publishing
  resumes from the cursor. A message may therefore arrive more than once.
- **MQTT 5 where the broker offers it.** The station connects with MQTT 5; a broker that
  answers "unsupported protocol version" gets MQTT 3.1.1 from then on (logged as
  `cloud.mqtt311`). Under 3.1.1 a publication the broker's ACL refuses is acknowledged
  like any other, so it would count as delivered: run a broker that offers MQTT 5.
- **Deduplicate** events by (`station_id`, `event_id`) and swap records by `record_id`
  (the swap id, which starts with the station id). A message sent again is identical
  except `sent_at` and `replayed`.
- **In journal order.** Events go out in the order they were journaled; a swap record
  goes out with the `swap_ended` event it comes from (its `event_id`). Order holds within
  a topic: `swaps` and `events` are not ordered with each other.
- **Gaps are visible.** `seq` numbers the published events of one station contiguously
  from 1 and is persisted with the outbox cursor (the same event gets the same `seq`
  after a crash). After deduplication a missing `seq` is a lost event: raise it.
- **Replayed is history.** `replayed` is true for what was journaled before the current
  MQTT session came up (the backlog). A replayed message never overwrites a newer live
  value: the station's current state is the retained `state` and `rack`, not the last
  event received.
- **Now first.** On every connect the station publishes `status` (birth) and `state`
  first, then the backlog interleaved with live data, so a long backlog never hides what
  the station is doing now. While the backlog drains, at most `cloud.max_in_flight`
  messages await their acknowledgement.
- **Rack samples are not backlog.** While offline only the latest `rack` sample is kept;
  it is published on reconnect. Events, alarms and swap records are never dropped.
- **Retention.** swapd deletes no event from its journal (there is no pruning yet; any
  added later must stop at the cloud's cursor). A disk nearly full under the journal
  (below `cloud.disk_alarm_free_mb`, checked every 30 s) raises an alarm `disk_low`,
  journaled and published, with the number of events not yet delivered.
- **The station does not wait.** Swaps go on while the broker is down; what they journal
  is delivered when it is back.
- **Birth and will.** The birth (`status`, online true) carries a `session` number, one
  more per connection and persisted. The will the broker publishes when the connection
  dies has online false, reason "connection lost" and the same session as its birth: a
  will whose session is older than the last birth seen is stale (the station is already
  back) and must be ignored. Both are retained, so a new subscriber sees the last word.

## Commands: signed, checked, answered

The back end publishes commands to `<prefix>/<station_id>/commands` (QoS 1); the station
answers each on `<prefix>/<station_id>/responses` (the only topic the broker's ACL lets it
answer on; an MQTT 5 response topic naming another is not used), with the request's MQTT 5
correlation data when it had some.

The envelope: `command`, `args` (object), `request_id` (`[A-Za-z0-9._:-]{1,64}`, unique per
command), `station_id`, `issued_at`, `expires_at` (RFC 3339), `key_id`
(`[A-Za-z0-9._-]{1,64}`) and `signature`: base64 of the **Ed25519** signature over the
**RFC 8785** (JSON Canonicalization Scheme) bytes of the whole object without
`signature`. The station trusts the public keys in `cloud.trusted_keys_dir`, by key id
(a new key is added beside the old one, then the old one removed: rotation without a
gap).

Checks, in this order; the first that fails is the response's `code` (each rejection is
journaled as a `cloud_command_rejected` event, at most 60 a minute, and counted):

| order | code | when |
|---|---|---|
| 1 | `too_large` | more than `cloud.max_command_bytes` (default 256 KiB); not even decoded |
| 2 | `malformed_json` | not UTF-8, not JSON, not an object, a key twice in one object \
(which value was signed would be ambiguous), NaN or Infinity, an integer beyond \
+-(2^53-1) (JCS cannot carry it), a lone surrogate, nesting deeper than 32 |
| 3 | `schema` | not the envelope of `command.json` (a field missing, extra or of the \
wrong type or pattern, a time that is no date) |
| 4 | `unknown_key` | `key_id` names no key in `cloud.trusted_keys_dir` |
| 5 | `bad_signature` | the signature is not base64, not 64 bytes, or does not verify |
| 6 | `wrong_station` | `station_id` is another station's (a command replayed to a \
neighbour) |
| 7 | `not_yet_valid` | `issued_at` more than `cloud.clock_skew_s` ahead of the station's \
clock, or a lifetime (`expires_at` - `issued_at`) above `cloud.max_command_lifetime_s` |
| 8 | `expired` | `expires_at` <= now |
| 9 | `unknown_command` | not a command of the network nor of a local operator |
| 10 | `bad_args` | the arguments break that command's schema (`$defs/args.<command>`: \
every value bounded) |

Then the station's one command entry (the same as for `swapctl`): a `request_id` answered
before gets its first result again, with `repeated` true, from the journal; a command
reserved for a local operator is `not_permitted`; PackML, the interlocks or the core may
say no: `refused`, with the reason. An accepted command is `ok`. Every command and its
result is journaled (`command_received`, `command_accepted`, `command_refused` events).

The cloud may send `reserve_pack`, `cancel_reservation`, `set_authorisations`,
`set_power_cap`, `slot_maintenance`, `request_stop`, `request_hold` and `snapshot`. It can
stop or hold the station but never start motion: `reset`, `clear`, `unhold`, `start`,
`abort`, `suspend`, `unsuspend` and `pack_release` are `not_permitted` ("for a local
operator at the station", where the hazard zone can be seen).

"""


# ---- schema -> markdown ---------------------------------------------------------------------
def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target: dict[str, Any] = root.get("$defs", {}).get(ref.removeprefix("#/$defs/"), {})
        return {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _json(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return str(v)


def _range(lo: Any, hi: Any, unit: str = "") -> str:
    if lo is not None and hi is not None:
        return f"{lo}..{hi}{unit}"
    if unit:
        return f"at least {lo}{unit}" if lo is not None else f"at most {hi}{unit}"
    return f">= {lo}" if lo is not None else f"<= {hi}"


def _type(node: dict[str, Any], root: dict[str, Any]) -> str:
    """The type in words with its constraints: `integer 1..255`, `"a", "b", null`."""
    node = _resolve(node, root)
    if "const" in node:
        return f"`{_json(node['const'])}`"
    if "enum" in node:
        return ", ".join(f"`{_json(v)}`" for v in node["enum"])
    for key in ("oneOf", "anyOf"):
        alts = [_type(alt, root) for alt in node.get(key, ())]
        if alts and "any" not in alts:  # alternatives that only require fields: the type
            return " or ".join(alts)
    types = node.get("type", "object" if "properties" in node else "any")
    types = [types] if isinstance(types, str) else list(types)
    words = []
    for t in types:
        if t == "null":
            continue
        w = t
        if t == "array":
            items = node.get("items")
            w = f"array of {_type(items, root)}" if isinstance(items, dict) else "array"
            if "minItems" in node or "maxItems" in node:
                w += f" ({_range(node.get('minItems'), node.get('maxItems'), ' items')})"
        elif t == "string":
            if "format" in node:
                w += f" ({node['format']})"
            elif "pattern" in node:
                w += f" `{node['pattern']}`"
            if node.get("minLength") == 1 and "maxLength" not in node:
                w += ", not empty"
            elif "minLength" in node or "maxLength" in node:
                w += ", " + _range(node.get("minLength"), node.get("maxLength"), " chars")
        elif t in ("integer", "number"):
            lo, hi = node.get("minimum"), node.get("maximum")
            if lo is not None or hi is not None:
                w += " " + _range(lo, hi)
            if "exclusiveMinimum" in node:
                w += f" > {node['exclusiveMinimum']}"
            if "exclusiveMaximum" in node:
                w += f" < {node['exclusiveMaximum']}"
        words.append(w)
    text = " or ".join(words) or "null"
    return text + " or null" if "null" in types and words else text


def _rows(node: dict[str, Any], root: dict[str, Any], prefix: str) -> list[str]:
    """One table row per property, nested objects and arrays of objects flattened
    (`contracts.telemetry`, `slots[].soc_pct`)."""
    node = _resolve(node, root)
    required = set(node.get("required", ()))
    out = []
    for name, prop in node.get("properties", {}).items():
        prop = _resolve(prop, root)
        full = prefix + name
        out.append(f"| `{full}` | {_cell(_type(prop, root))} | "
                   f"{'yes' if name in required else 'no'} | "
                   f"{_cell(prop.get('description', ''))} |")
        if "properties" in prop:
            out += _rows(prop, root, full + ".")
        items = prop.get("items")
        if isinstance(items, dict) and "properties" in _resolve(items, root):
            out += _rows(items, root, full + "[].")
    return out


def _table(node: dict[str, Any], root: dict[str, Any]) -> list[str]:
    rows = _rows(node, root, "")
    if not rows:
        return ["No fields."]
    return ["| field | type | required | description |", "|---|---|---|---|", *rows]


_BRANCHES: Final = ("allOf", "anyOf", "oneOf", "if", "then", "else", "not")


def _inlined(node: Any, into: set[str]) -> set[str]:
    """Names of the $defs a property or an array's items refer to: their fields are in
    the table of the object that holds them already."""
    if isinstance(node, dict):
        subs = [*node.get("properties", {}).values(), node.get("items")]
        for sub in subs:
            if isinstance(sub, dict) and isinstance(sub.get("$ref"), str):
                into.add(sub["$ref"].removeprefix("#/$defs/"))
        for k, v in node.items():
            if k not in _BRANCHES:  # a conditional's fields are not in a table yet
                _inlined(v, into)
    elif isinstance(node, list):
        for v in node:
            _inlined(v, into)
    return into


def _defs_used(root: dict[str, Any]) -> list[str]:
    """$defs with a section of their own: objects not already flattened into a table
    (the event's data per kind, a command's arguments)."""
    inlined = _inlined(root, set())
    return [name for name, d in root.get("$defs", {}).items()
            if isinstance(d, dict) and d.get("type") == "object" and name not in inlined]


def schema_section(name: str) -> list[str]:
    s = load_schema(name)
    lines = [f"### {s.get('title', name)} (`{name}.json`)", "", s.get("description", ""), ""]
    lines += _table(s, s)
    for d in _defs_used(s):
        sub = s["$defs"][d]
        lines += ["", f"#### {sub.get('title', d)}", ""]
        if sub.get("description"):
            lines += [sub["description"], ""]
        lines += _table(sub, s)
    return [*lines, ""]


def topic_table() -> list[str]:
    lines = ["| leaf | direction | QoS | retained | schema | when |", "|---|---|---|---|---|---|"]
    for leaf, direction, qos, retained, schema, when in TOPIC_ROWS:
        lines.append(f"| `{leaf}` | {direction} | {qos} | {'yes' if retained else 'no'} | "
                     f"`{schema}.json` | {when} |")
    return [*lines, ""]


def generate() -> str:
    lines = [INTRO.rstrip("\n"), "", *topic_table(), CONTRACT.rstrip("\n"), "",
             "## Messages", "",
             "One section per schema file. Nested fields are flattened: `a.b` is field `b` "
             "of object `a`, `a[].b` field `b` of each element of array `a`. \"required\" "
             "means the key is always present; its value may still be null where the type "
             "says so.", ""]
    for name in schema_names():
        lines += schema_section(name)
    return "\n".join(lines).rstrip("\n") + "\n"


def check(path: Path = DOC) -> list[str]:
    """The differences between the committed doc and the generated one (a unified diff;
    empty when they agree)."""
    current = path.read_text("utf-8") if path.exists() else ""
    return list(difflib.unified_diff(current.splitlines(), generate().splitlines(),
                                     str(path), "generated", lineterm=""))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m station.cloud.docgen", description=__doc__)
    parser.add_argument("--out", type=Path, default=DOC, help="the file to write")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when the file differs from the schemas")
    args = parser.parse_args(argv)
    if args.check:
        diff = check(args.out)
        if diff:
            print("\n".join(diff[:200]), file=sys.stderr)
            print(f"{args.out} is out of date: run python -m station.cloud.docgen",
                  file=sys.stderr)
            return 1
        return 0
    args.out.write_text(generate(), "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
