"""The journal records a swap from the core's events and computes the summary from them."""

from __future__ import annotations

from pathlib import Path

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
