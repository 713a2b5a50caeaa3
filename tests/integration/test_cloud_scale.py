"""The load test, small (issue 8, "Scale"): 20 stations' real cloud links in one process,
fed synthetic events at 2 events/s each for 10 s, against a real mosquitto on loopback, a
back end subscribed in another process. Nothing lost, no gap in any station's seq after
deduplication, every station's birth seen. Timings are printed, never asserted (the full
figures: bench/cloud_scale.py, docs/scaling.md)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from sim_hw.broker import find_mosquitto

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import cloud_scale

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed")

STATIONS, SECONDS, RATE = 20, 10.0, 2.0


async def test_twenty_stations_lose_nothing(tmp_path: Path) -> None:
    r = await asyncio.to_thread(cloud_scale.run_scale, STATIONS, SECONDS, RATE, 1, "normal",
                                tmp_path)
    cloud_scale.report(r)  # shown with -s or on failure
    expected = STATIONS * int(SECONDS * RATE)
    assert r.total_journaled == expected
    assert len(r.journaled) == STATIONS
    assert r.delivered == r.total_journaled, f"lost {r.total_journaled - r.delivered}"
    assert r.gaps() == {}
    assert set(r.backend["births"]) == {cloud_scale.station_id(i) for i in range(STATIONS)}
    assert all(not g["errors"] and all(v == 0 for v in g["unacked"].values())
               for g in r.groups), r.groups
    assert r.backend["wills"] == {}  # no link lost its connection during the run
