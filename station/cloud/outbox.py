"""The cloud link's place in the journal: how far the broker has acknowledged, and the
numbers the back end sees.

The events themselves stay where they are (the journal's `events` table is the outbox: no
second copy). This table keeps, in one row, the last event id the broker acknowledged,
the per-station sequence number `seq` given to it, and the MQTT session number (one more
per connection, Sparkplug's bdSeq: it ties a will to its birth). Event id and seq move
together in one transaction, so after a crash the same event gets the same seq again.

The table has its own connection to the journal's file, with synchronous=NORMAL: under
WAL a commit then costs no fsync, so moving the cursor (up to five times a second during a
replay) never stalls the event loop the scan runs in. A cursor update lost to a power cut
only means those events are sent again, marked replayed, and the back end drops them by
event id; the journal's own records keep synchronous=FULL.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS cloud_outbox (
    sink TEXT PRIMARY KEY, event_id INTEGER NOT NULL, seq INTEGER NOT NULL,
    session INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class Cursor:
    event_id: int  # the last event the broker acknowledged (0: none)
    seq: int  # the seq it was published with (0: none)


class Outbox:
    def __init__(self, journal_path: str | Path, sink: str = "cloud") -> None:
        self.sink = sink
        self.db = sqlite3.connect(str(journal_path), isolation_level=None, timeout=10.0)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.db.execute("INSERT OR IGNORE INTO cloud_outbox (sink, event_id, seq, session) "
                        "VALUES (?, 0, 0, 0)", (sink,))

    def close(self) -> None:
        self.db.close()

    def cursor(self) -> Cursor:
        row = self.db.execute("SELECT event_id, seq FROM cloud_outbox WHERE sink = ?",
                              (self.sink,)).fetchone()
        return Cursor(int(row[0]), int(row[1]))

    def confirm(self, c: Cursor) -> None:
        """The broker has acknowledged every event up to c.event_id; never moves back."""
        with self.db:
            self.db.execute(
                "UPDATE cloud_outbox SET event_id = ?, seq = ? WHERE sink = ? AND event_id < ?",
                (c.event_id, c.seq, self.sink, c.event_id))

    def next_session(self) -> int:
        """The number of the connection about to be made (persisted before it is made, so
        its will and its birth carry the same number)."""
        with self.db:
            self.db.execute("UPDATE cloud_outbox SET session = session + 1 WHERE sink = ?",
                            (self.sink,))
            row = self.db.execute("SELECT session FROM cloud_outbox WHERE sink = ?",
                                  (self.sink,)).fetchone()
        return int(row[0])

    def backlog(self) -> int:
        """Events journaled and not yet acknowledged by the broker."""
        c = self.cursor()
        row = self.db.execute("SELECT COUNT(*) FROM events WHERE id > ?",
                              (c.event_id,)).fetchone()
        return int(row[0])

    def last_event_id(self) -> int:
        row = self.db.execute("SELECT MAX(id) FROM events").fetchone()
        return int(row[0] or 0)
