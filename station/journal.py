"""The journal: every swap, step, fault, state change, command and pack command, in SQLite
(WAL), written before the controller acts on it.

One transaction per scan decision keeps the fsync count low (dead time matters) while
still committing each decision before its outputs reach the PLC.

The `events` table is also the outbox of every sink that must not lose an event (the cloud
link): each such sink has a delivery cursor, the last event id it has confirmed, and reads
the events after it. No second copy of the data is kept.

What the network told the station (the authorisation list, the power cap, the active
reservations: station/network.py) is kept beside the events it came with, and handed back
to the core at start-up (`authorisations`, `power_cap`, `active_reservations`).
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from station.events import (
    Alarm,
    AuthorisationsSet,
    CommandAccepted,
    CommandRefused,
    Event,
    Fault,
    MaintenanceStarted,
    PowerCapSet,
    ReservationEnded,
    ReservationMade,
    SlotLocked,
    SlotReleased,
    StepDone,
    StepStarted,
    SwapEnded,
    SwapStarted,
)
from station.network import (
    AuthorisationList,
    PowerCap,
    Reservation,
    parse_authorisations,
    parse_power_cap,
)
from station.pack_commands import PackCommandKind
from station.sequence import STEP_NAMES

SCHEMA = """
CREATE TABLE IF NOT EXISTS swaps (
    swap_id TEXT PRIMARY KEY,
    vehicle_token INTEGER,
    started_wall REAL, started_mono REAL, ended_mono REAL,
    outcome TEXT, reason TEXT, last_step TEXT,
    pack_out TEXT, pack_in TEXT, store_slot INTEGER, fetch_slot INTEGER
);
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    swap_id TEXT NOT NULL, step TEXT NOT NULL, command TEXT, seq INTEGER, param INTEGER,
    started_mono REAL, commanded_mono REAL, done_mono REAL, note TEXT
);
CREATE INDEX IF NOT EXISTS steps_by_swap ON steps (swap_id, step);
CREATE TABLE IF NOT EXISTS faults (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    wall REAL, mono REAL, swap_id TEXT, step TEXT, code TEXT, reason TEXT
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    wall REAL, mono REAL, kind TEXT, data TEXT
);
CREATE TABLE IF NOT EXISTS sink_cursors (
    sink TEXT PRIMARY KEY, event_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS lockouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    slot INTEGER NOT NULL, serial INTEGER, cause TEXT, reason TEXT, isolated INTEGER,
    locked_wall REAL, released_wall REAL, released_by TEXT, release_reason TEXT
);
CREATE TABLE IF NOT EXISTS commands (
    request_id TEXT PRIMARY KEY, command TEXT, origin TEXT, accepted INTEGER, reason TEXT,
    state TEXT, wall REAL, code TEXT, result TEXT
);
CREATE TABLE IF NOT EXISTS network_state (
    key TEXT PRIMARY KEY, value TEXT NOT NULL, wall REAL
);
CREATE TABLE IF NOT EXISTS reservations (
    reservation_id TEXT PRIMARY KEY, vin TEXT, family INTEGER, min_soc_pct REAL,
    expires_at TEXT, slot INTEGER, serial INTEGER, made_wall REAL,
    ended_wall REAL, outcome TEXT, swap_id TEXT
);
"""
# Columns added after a table was first created: a journal from before gets them at open.
ADDED_COLUMNS = (("commands", "code", "TEXT"), ("commands", "result", "TEXT"),
                 ("swaps", "vin", "TEXT"))


class Journal:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a power cut loses no committed record
        self.db.executescript(SCHEMA)
        for table, column, kind in ADDED_COLUMNS:
            have = {r["name"] for r in self.db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def close(self) -> None:
        self.db.close()

    # ---- writing ----------------------------------------------------------------------
    def record(self, events: Iterable[Event]) -> list[int]:
        """Write one decision's events in one transaction; returns their event ids."""
        events = list(events)
        if not events:
            return []
        wall = time.time()
        with self.db:  # BEGIN ... COMMIT
            self.db.execute("BEGIN")
            return [self._record_one(ev, wall) for ev in events]

    def _record_one(self, ev: Event, wall: float) -> int:
        d = ev.data
        t = d.get("t")
        cur = self.db.execute(
            "INSERT INTO events (wall, mono, kind, data) VALUES (?, ?, ?, ?)",
            (wall, t, ev.kind, json.dumps(d, default=str)),
        )
        event_id = int(cur.lastrowid or 0)
        self._index(ev, t, wall)
        return event_id

    def _index(self, ev: Event, t: float | None, wall: float) -> None:
        """The tables that recovery, the summary, billing and idempotent commands query,
        kept beside the event log."""
        x = self.db.execute
        match ev:
            case SwapStarted():
                x("INSERT INTO swaps (swap_id, vehicle_token, started_wall, started_mono, "
                  "pack_out, pack_in, store_slot, fetch_slot, vin) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (ev.swap_id, ev.vehicle_token, wall, t, json.dumps(ev.pack_out.as_dict()),
                   json.dumps(ev.pack_in.as_dict()), ev.store_slot, ev.fetch_slot, ev.vin))
            case StepStarted():
                x("INSERT INTO steps (swap_id, step, command, seq, param, started_mono, note)"
                  " VALUES (?, ?, ?, ?, ?, ?, ?)",
                  (ev.swap_id, ev.step, ev.command, ev.seq, ev.param, t,
                   "resumed" if ev.resumed else None))
                x("UPDATE swaps SET last_step = ? WHERE swap_id = ?", (ev.step, ev.swap_id))
            case StepDone():
                x(_LATEST.format(col="done_mono"), (t, ev.swap_id, ev.step))
            case MaintenanceStarted():
                # a PLC command like a step's: its number counts in last_command_seq
                x("INSERT INTO steps (swap_id, step, command, seq, param, started_mono, note)"
                  " VALUES (?, ?, ?, ?, ?, ?, ?)",
                  (MAINTENANCE_SWAP_ID, ev.command.lower(), ev.command, ev.seq, ev.param, t,
                   ev.source))
            case SwapEnded():
                x("UPDATE swaps SET ended_mono = ?, outcome = ?, reason = ? WHERE swap_id = ?",
                  (t, ev.outcome, ev.reason, ev.swap_id))
            case Alarm():
                x("INSERT INTO faults (wall, mono, swap_id, step, code, reason) "
                  "VALUES (?, ?, NULL, NULL, ?, ?)",
                  (wall, t, f"alarm_{ev.alarm}", f"{ev.reason} ({ev.action})"))
            case SlotLocked():
                x("INSERT INTO lockouts (slot, serial, cause, reason, isolated, locked_wall) "
                  "VALUES (?, ?, ?, ?, ?, ?)",
                  (ev.slot, ev.serial, ev.cause, ev.reason, int(ev.isolated), wall))
            case SlotReleased():
                x("UPDATE lockouts SET released_wall = ?, released_by = ?, release_reason = ? "
                  "WHERE slot = ? AND released_wall IS NULL",
                  (wall, ev.origin, ev.reason, ev.slot))
            case Fault():
                x("INSERT INTO faults (wall, mono, swap_id, step, code, reason) "
                  "VALUES (?, ?, ?, ?, ?, ?)",
                  (wall, t, ev.swap_id, ev.step, ev.code, ev.reason))
            case CommandAccepted():
                x("INSERT OR IGNORE INTO commands (request_id, command, origin, accepted, "
                  "reason, state, wall, code, result) VALUES (?, ?, ?, 1, NULL, ?, ?, 'ok', ?)",
                  (ev.request_id, ev.command, ev.origin, ev.state, wall,
                   None if ev.result is None else json.dumps(ev.result)))
            case CommandRefused():
                x("INSERT OR IGNORE INTO commands (request_id, command, origin, accepted, "
                  "reason, state, wall, code, result) VALUES (?, ?, ?, 0, ?, NULL, ?, ?, NULL)",
                  (ev.request_id, ev.command, ev.origin, ev.reason, wall, ev.code))
            case AuthorisationsSet():
                self._keep("authorisations", ev.full, wall)
            case PowerCapSet():
                self._keep("power_cap", {"cap_kw": ev.cap_kw, "schedule": ev.schedule}, wall)
            case ReservationMade():
                x("INSERT OR REPLACE INTO reservations (reservation_id, vin, family, "
                  "min_soc_pct, expires_at, slot, serial, made_wall) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  (ev.reservation_id, ev.vin, ev.family, ev.min_soc_pct, ev.expires_at,
                   ev.slot, ev.serial, wall))
            case ReservationEnded():
                x("UPDATE reservations SET ended_wall = ?, outcome = ?, swap_id = ? "
                  "WHERE reservation_id = ? AND ended_wall IS NULL",
                  (wall, ev.outcome, ev.swap_id, ev.reservation_id))
            case _:
                pass

    def _keep(self, key: str, value: dict[str, Any], wall: float) -> None:
        self.db.execute("INSERT INTO network_state (key, value, wall) VALUES (?, ?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
                        "wall = excluded.wall", (key, json.dumps(value), wall))

    def step_commanded(self, swap_id: str, step: str, t_write: float) -> None:
        """The PLC acknowledged the write of this step's command at t_write."""
        with self.db:
            self.db.execute(_LATEST.format(col="commanded_mono"), (t_write, swap_id, step))

    # ---- delivery cursors: the journal as the outbox of a sink -------------------------
    def cursor(self, sink: str) -> int:
        """The last event id `sink` has confirmed (0: none yet)."""
        row = self.db.execute("SELECT event_id FROM sink_cursors WHERE sink = ?",
                              (sink,)).fetchone()
        return 0 if row is None else int(row["event_id"])

    def confirm(self, sink: str, event_id: int) -> None:
        """`sink` has delivered every event up to event_id; a cursor never moves back."""
        with self.db:
            self.db.execute(
                "INSERT INTO sink_cursors (sink, event_id) VALUES (?, ?) ON CONFLICT(sink) "
                "DO UPDATE SET event_id = MAX(event_id, excluded.event_id)", (sink, event_id))

    def events_after(self, event_id: int, limit: int = 1000) -> list[sqlite3.Row]:
        """Journaled events after event_id, oldest first: (id, wall, mono, kind, data)."""
        return self.db.execute(
            "SELECT id, wall, mono, kind, data FROM events WHERE id > ? ORDER BY id LIMIT ?",
            (event_id, limit)).fetchall()

    def command_result(self, request_id: str) -> sqlite3.Row | None:
        """The recorded result of a command request, for an idempotent answer: command,
        accepted, reason, state, code (NULL before codes were kept), result (JSON or
        NULL)."""
        return self.db.execute("SELECT * FROM commands WHERE request_id = ?",
                               (request_id,)).fetchone()

    # ---- what the network told the station: handed to the core at start-up -------------
    def _kept(self, key: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT value FROM network_state WHERE key = ?",
                              (key,)).fetchone()
        return None if row is None else dict(json.loads(row["value"]))

    def authorisations(self) -> AuthorisationList | None:
        """The latest authorisation list accepted (valid or not: the core judges that)."""
        kept = self._kept("authorisations")
        return None if kept is None else parse_authorisations(kept)

    def power_cap(self) -> PowerCap | None:
        """The network's power cap and schedule last set; the core bounds it by the
        configured ceiling, whatever that is now."""
        kept = self._kept("power_cap")
        return None if kept is None else parse_power_cap(kept, ceiling_kw=float("inf"))

    def active_reservations(self) -> list[Reservation]:
        """Reservations neither used, cancelled nor lapsed (one expired while the daemon
        was down lapses, journaled, at the first scan)."""
        rows = self.db.execute("SELECT * FROM reservations WHERE ended_wall IS NULL "
                               "ORDER BY made_wall").fetchall()
        return [Reservation.from_dict(dict(r)) for r in rows]

    # ---- reading ----------------------------------------------------------------------
    def next_swap_number(self) -> int:
        row = self.db.execute("SELECT COUNT(*) AS n FROM swaps").fetchone()
        return int(row["n"]) + 1

    def last_command_seq(self) -> int | None:
        """The sequence number of the last PLC command journaled (journaled before it is
        written, so the PLC may never have seen it)."""
        row = self.db.execute(
            "SELECT seq FROM steps WHERE seq IS NOT NULL ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else int(row["seq"])

    def active_lockouts(self) -> dict[int, sqlite3.Row]:
        """Rack slots locked out and not released: slot -> its (latest) lockout row."""
        rows = self.db.execute(
            "SELECT * FROM lockouts WHERE released_wall IS NULL ORDER BY id").fetchall()
        return {int(r["slot"]): r for r in rows}

    def unfinished_swap(self) -> sqlite3.Row | None:
        return self.db.execute(
            "SELECT * FROM swaps WHERE outcome IS NULL ORDER BY rowid DESC LIMIT 1"
        ).fetchone()

    def last_state(self) -> str | None:
        """The PackML state the previous run last recorded."""
        row = self.db.execute(
            "SELECT data FROM events WHERE kind = 'state' ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else str(json.loads(row["data"])["new"])

    def last_unit_mode(self) -> str | None:
        """The PackML unit mode last set (Production, Maintenance); None: never changed."""
        row = self.db.execute(
            "SELECT data FROM events WHERE kind = 'unit_mode' ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return None if row is None else str(json.loads(row["data"])["mode"])

    def interrupted_swap(self) -> sqlite3.Row | None:
        """The last swap, if it ended before its end (aborted or stopped): what recovery
        needs to know of the packs it moved (its row: plan and last_step). The last one in
        the order recorded (rowid: swaps are only ever inserted, never replaced), not by
        wall time: a clock stepped back would give a later swap a smaller started_wall."""
        row = self.db.execute("SELECT * FROM swaps ORDER BY rowid DESC LIMIT 1").fetchone()
        if row is None or row["outcome"] in (None, "completed"):
            return None
        return row

    def pack_grants(self, serial: int, swap_id: str) -> list[tuple[float, float]]:
        """The charge currents granted to pack `serial` from the start of swap `swap_id` on,
        as journaled: [(wall time, current A)], first the grant in force when the swap
        started (at the swap's start), then each change after it. A command other than
        charge_enable grants 0 A. Empty: no such swap journaled."""
        start = self.db.execute(
            "SELECT id, wall FROM events WHERE kind = 'swap_started' AND "
            "json_extract(data, '$.swap_id') = ? ORDER BY id DESC LIMIT 1",
            (swap_id,)).fetchone()
        if start is None:
            return []
        query = ("SELECT wall, data FROM events WHERE kind = 'pack_command' AND id {} ? AND "
                 "json_extract(data, '$.serial') = ? ORDER BY id {}")
        before = self.db.execute(query.format("<", "DESC LIMIT 1"),
                                 (start["id"], serial)).fetchall()
        after = self.db.execute(query.format(">", "ASC"), (start["id"], serial)).fetchall()

        def amps(row: sqlite3.Row) -> float:
            d = json.loads(row["data"])
            return float(d["current_limit_a"]) if d["command"] == PackCommandKind.CHARGE_ENABLE \
                else 0.0

        grants = [(float(start["wall"]), amps(before[0]) if before else 0.0)]
        return grants + [(float(r["wall"]), amps(r)) for r in after]

    def swaps(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM swaps ORDER BY started_wall").fetchall()

    def steps(self, swap_id: str) -> list[sqlite3.Row]:
        return self.db.execute(
            "SELECT * FROM steps WHERE swap_id = ? ORDER BY id", (swap_id,)
        ).fetchall()

    def faults(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM faults ORDER BY id").fetchall()

    def summary(self, speed: float = 1.0) -> dict[str, Any]:
        """The run in numbers; durations in simulated seconds (real seconds x speed)."""
        swaps = self.swaps()
        completed = [s for s in swaps if s["outcome"] == "completed"]
        per_step: dict[str, list[float]] = {name: [] for name in STEP_NAMES}
        packs = []
        swap_seconds = []
        dead_time = []
        for s in swaps:
            steps = self.steps(s["swap_id"])
            for st in steps:
                if st["done_mono"] is not None and st["started_mono"] is not None:
                    per_step.setdefault(st["step"], []).append(
                        (st["done_mono"] - st["started_mono"]) * speed)
            dead = 0.0
            for prev, nxt in itertools.pairwise(steps):
                if prev["done_mono"] is not None and nxt["commanded_mono"] is not None:
                    dead += nxt["commanded_mono"] - prev["done_mono"]
            if s["outcome"] == "completed":
                swap_seconds.append((s["ended_mono"] - s["started_mono"]) * speed
                                    + _identify_seconds(steps) * speed)
                dead_time.append(dead)
            packs.append({
                "swap_id": s["swap_id"], "vehicle_token": s["vehicle_token"],
                "outcome": s["outcome"], "reason": s["reason"],
                "out": {**json.loads(s["pack_out"]), "stored_slot": s["store_slot"]},
                "in": {**json.loads(s["pack_in"]), "fetched_slot": s["fetch_slot"]},
            })
        steps_stats = {
            name: {"count": len(v), "min": min(v), "mean": statistics.fmean(v), "max": max(v)}
            for name, v in per_step.items() if v
        }
        return {
            "swaps_completed": len(completed),
            "swaps_aborted": sum(1 for s in swaps if s["outcome"] not in (None, "completed")),
            "swaps_unfinished": sum(1 for s in swaps if s["outcome"] is None),
            "swap_seconds": swap_seconds,
            "steps": steps_stats,
            "packs": packs,
            "faults": [dict(f) for f in self.faults()],
            "controller_dead_time_ms": [round(d * 1000, 3) for d in dead_time],
        }


MAINTENANCE_SWAP_ID = "maintenance"  # the steps rows of maintenance commands

_LATEST = (
    "UPDATE steps SET {col} = ? WHERE id = "
    "(SELECT MAX(id) FROM steps WHERE swap_id = ? AND step = ?)"
)


def _identify_seconds(steps: list[sqlite3.Row]) -> float:
    """Identify runs before the swap record starts; add it to the swap's duration."""
    for st in steps:
        if st["step"] == "identify" and st["done_mono"] is not None:
            return float(st["done_mono"] - st["started_mono"])
    return 0.0
