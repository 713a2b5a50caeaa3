"""The journal: every swap, step, fault and state change, in SQLite (WAL), written before
the controller acts on it.

One transaction per scan decision keeps the fsync count low (dead time matters) while
still committing each decision before its outputs reach the PLC.
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

from station.core import Event
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
"""


class Journal:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a power cut loses no committed record
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # ---- writing ----------------------------------------------------------------------
    def record(self, events: Iterable[Event]) -> None:
        """Write one decision's events in one transaction."""
        events = list(events)
        if not events:
            return
        wall = time.time()
        with self.db:  # BEGIN ... COMMIT
            self.db.execute("BEGIN")
            for ev in events:
                self._record_one(ev, wall)

    def _record_one(self, ev: Event, wall: float) -> None:
        d = ev.data
        t = d.get("t")
        self.db.execute(
            "INSERT INTO events (wall, mono, kind, data) VALUES (?, ?, ?, ?)",
            (wall, t, ev.kind, json.dumps(d, default=str)),
        )
        if ev.kind == "swap_started":
            self.db.execute(
                "INSERT INTO swaps (swap_id, vehicle_token, started_wall, started_mono, "
                "pack_out, pack_in, store_slot, fetch_slot) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (d["swap_id"], d["vehicle_token"], wall, t, json.dumps(d["pack_out"]),
                 json.dumps(d["pack_in"]), d["store_slot"], d["fetch_slot"]),
            )
        elif ev.kind == "step_started":
            self.db.execute(
                "INSERT INTO steps (swap_id, step, command, seq, param, started_mono, note)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (d["swap_id"], d["step"], d.get("command"), d.get("seq"), d.get("param"), t,
                 "resumed" if d.get("resumed") else None),
            )
            self.db.execute("UPDATE swaps SET last_step = ? WHERE swap_id = ?",
                            (d["step"], d["swap_id"]))
        elif ev.kind == "step_done":
            self.db.execute(_LATEST.format(col="done_mono"), (t, d["swap_id"], d["step"]))
        elif ev.kind == "swap_ended":
            self.db.execute(
                "UPDATE swaps SET ended_mono = ?, outcome = ?, reason = ? WHERE swap_id = ?",
                (t, d["outcome"], d.get("reason"), d["swap_id"]),
            )
        elif ev.kind == "alarm":
            self.db.execute(
                "INSERT INTO faults (wall, mono, swap_id, step, code, reason) "
                "VALUES (?, ?, NULL, NULL, ?, ?)",
                (wall, t, f"alarm_{d['kind']}", f"{d['reason']} ({d['action']})"),
            )
        elif ev.kind == "fault":
            self.db.execute(
                "INSERT INTO faults (wall, mono, swap_id, step, code, reason) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (wall, t, d.get("swap_id"), d.get("step"), d["code"], d["reason"]),
            )

    def step_commanded(self, swap_id: str, step: str, t_write: float) -> None:
        """The PLC acknowledged the write of this step's command at t_write."""
        with self.db:
            self.db.execute(_LATEST.format(col="commanded_mono"), (t_write, swap_id, step))

    # ---- reading ----------------------------------------------------------------------
    def next_swap_number(self) -> int:
        row = self.db.execute("SELECT COUNT(*) AS n FROM swaps").fetchone()
        return int(row["n"]) + 1

    def unfinished_swap(self) -> sqlite3.Row | None:
        return self.db.execute(
            "SELECT * FROM swaps WHERE outcome IS NULL ORDER BY started_wall DESC LIMIT 1"
        ).fetchone()

    def last_state(self) -> str | None:
        """The PackML state the previous run last recorded."""
        row = self.db.execute(
            "SELECT data FROM events WHERE kind = 'state' ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else str(json.loads(row["data"])["new"])

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
