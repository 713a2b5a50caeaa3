"""The journal records a swap from the core's events and computes the summary from them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from station.journal import Journal
from tests.unit.core_harness import make_run


def test_journal_of_a_scripted_swap(tmp_path: Path) -> None:
    run = make_run()
    run.until(lambda: bool(run.kinds("swap_ended")))
    j = Journal(tmp_path / "j.sqlite")
    j.record(run.events)
    swaps = j.swaps()
    assert len(swaps) == 1 and swaps[0]["outcome"] == "completed"
    steps = j.steps(swaps[0]["swap_id"])
    assert next(s["step"] for s in steps) == "identify"
    assert all(s["done_mono"] is not None for s in steps)
    s = j.summary(speed=10.0)
    assert s["swaps_completed"] == 1 and s["swaps_aborted"] == 0
    assert s["steps"]["lift"]["count"] == 1
    assert s["packs"][0]["in"]["serial"] == 1002 and s["packs"][0]["out"]["stored_slot"] == 4
    assert j.next_swap_number() == 2 and j.unfinished_swap() is None
    assert j.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_unfinished_swap_is_found_after_a_crash(tmp_path: Path) -> None:
    run = make_run()
    run.until(lambda: run.core.step is not None and run.core.step.name == "unlock")
    j = Journal(tmp_path / "j.sqlite")
    j.record(run.events)
    j.close()  # the process dies here
    j2 = Journal(tmp_path / "j.sqlite")
    row = j2.unfinished_swap()
    assert row is not None and row["last_step"] == "unlock"


def test_a_restart_never_reuses_a_journaled_sequence_number(tmp_path: Path) -> None:
    """Killed after journaling a command but before the PLC got it: the PLC's ack is one
    behind the journal. The restarted core must number its next command past both, or the
    journal holds two different commands under one sequence number (seen in the kill test)."""
    from station.core import StationCore
    from station.daemon import resume_point
    from station.packml import Cmd, State
    from tests.unit.core_harness import Run

    run = make_run()
    run.until(lambda: run.core.step is not None and run.core.step.name == "unlock")
    j = Journal(tmp_path / "j.sqlite")
    j.record(run.events)
    sent = run.core.seq
    assert sent is not None
    run.plc.image.plc["cmd_ack_seq"] = sent - 1  # the write never reached the PLC
    run.plc.image.plc["cmd_status"] = "done"
    run.plc.last_seq = sent - 1
    j.close()

    j2 = Journal(tmp_path / "j.sqlite")
    swap = j2.unfinished_swap()
    assert swap is not None
    assert j2.last_command_seq() == sent
    core = StationCore(run.core.cfg, next_swap_number=j2.next_swap_number(),
                       resume=resume_point(swap, j2.steps(swap["swap_id"])),
                       last_seq=j2.last_command_seq())
    again = Run(core, run.plc, now=run.now)
    again.step(n=2)
    assert core.state == State.HELD
    again.cmd(Cmd.UNHOLD)
    again.step(n=3)
    j2.record(again.events)
    seqs = [r["seq"] for r in j2.steps(swap["swap_id"]) if r["seq"] is not None]
    assert len(seqs) == len(set(seqs)), seqs
    assert core.seq not in (sent, sent - 1)


def test_a_restart_mid_swap_keeps_the_vin_and_the_rated_energies(tmp_path: Path) -> None:
    """The swap record after a restart mid-swap still names the vehicle and can still be
    billed: the resumed plan is the journaled one, VIN and rated energies included."""
    from station.daemon import resume_point
    from station.events import SwapStarted

    run = make_run()
    run.until(lambda: run.core.step is not None and run.core.step.name == "unlock")
    started = next(e for e in run.events if isinstance(e, SwapStarted))
    j = Journal(tmp_path / "j.sqlite")
    j.record([dataclasses.replace(started, vin="LSJA24U67MS123456")])
    swap = j.unfinished_swap()
    assert swap is not None
    plan = resume_point(swap, j.steps(swap["swap_id"])).plan
    assert plan.vin == "LSJA24U67MS123456"
    assert plan.pack_in == started.pack_in and plan.pack_out == started.pack_out


def test_a_journal_from_before_the_network_gains_its_columns(tmp_path: Path) -> None:
    """Codes, results and the swap's VIN were added later: an older journal opens, and a
    command recorded before them answers with a code all the same."""
    import sqlite3

    from station.events import CommandAccepted, CommandRefused

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE commands (request_id TEXT PRIMARY KEY, command TEXT, origin TEXT, "
        "accepted INTEGER, reason TEXT, state TEXT, wall REAL);"
        "INSERT INTO commands VALUES ('old-1', 'stop', 'local: x', 0, 'no', NULL, 1.0);"
        "CREATE TABLE swaps (swap_id TEXT PRIMARY KEY, vehicle_token INTEGER, "
        "started_wall REAL, started_mono REAL, ended_mono REAL, outcome TEXT, reason TEXT, "
        "last_step TEXT, pack_out TEXT, pack_in TEXT, store_slot INTEGER, "
        "fetch_slot INTEGER);")
    db.commit()
    db.close()
    j = Journal(path)
    old = j.command_result("old-1")
    assert old is not None and old["code"] is None and old["result"] is None
    j.record([CommandAccepted(t=1.0, request_id="r-1", command="reserve_pack", origin="cloud",
                              state="Idle", result={"reservation_id": "x", "slot": 2,
                                                    "serial": 5}),
              CommandRefused(t=1.0, request_id="r-2", command="reset", origin="cloud",
                             reason="for a local operator", code="not_permitted")])
    r1, r2 = j.command_result("r-1"), j.command_result("r-2")
    assert r1 is not None and r1["code"] == "ok" and '"slot": 2' in r1["result"]
    assert r2 is not None and r2["code"] == "not_permitted" and r2["result"] is None
    run = make_run()
    run.until(lambda: bool(run.kinds("swap_started")))
    j.record(run.events)
    assert j.swaps()[0]["vin"] is None  # the column is there; this car said none


def test_the_interrupted_swap_is_the_last_begun_even_if_the_clock_stepped_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recovery asks the journal which swap was interrupted: the last one begun, in the
    order the journal recorded them, not by wall time (a clock stepped back between two
    swaps gives the later one a smaller wall time)."""
    import station.journal as journal_mod
    from station.events import SwapEnded, SwapStarted
    from station.plan import PackInfo

    walls = iter([2000.0, 2000.0, 1000.0, 1000.0, 900.0, 800.0])  # NTP stepped the clock back
    monkeypatch.setattr(journal_mod.time, "time", lambda: next(walls))
    j = Journal(tmp_path / "j.sqlite")
    pack = PackInfo(500, 20, "nmc", 20.0)
    for n, (outcome, token) in enumerate((("aborted", 7), ("stopped", 8)), start=1):
        sid = f"S-{n:06d}"
        j.record([SwapStarted(t=float(n), swap_id=sid, vehicle_token=token, pack_out=pack,
                              pack_in=pack, store_slot=4, fetch_slot=1, origin="test")])
        j.record([SwapEnded(t=float(n) + 0.5, swap_id=sid, outcome=outcome, reason="stop",
                            step="store")])
    row = j.interrupted_swap()
    assert row is not None and row["swap_id"] == "S-000002" and row["vehicle_token"] == 8
    for n in (3, 4):  # two swaps begun and never ended (the process died twice)
        j.record([SwapStarted(t=float(n), swap_id=f"S-{n:06d}", vehicle_token=n, pack_out=pack,
                              pack_in=pack, store_slot=4, fetch_slot=1, origin="test")])
    unfinished = j.unfinished_swap()
    assert unfinished is not None and unfinished["swap_id"] == "S-000004"
