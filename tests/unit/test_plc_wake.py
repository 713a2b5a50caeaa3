"""Which PLC reads wake the scan (issue 11, CAN ingest cost): every read is folded into the
process image and stamped, but only one that can change a decision wakes the scan at once
(an input changed, the first read after a connection, a read after a gap, a state not yet
scanned); an unchanged read waits for the scan's tick, which judges whatever is only time
(staleness, heartbeat, timeouts)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from station.config import JournalSection, StationConfig
from station.daemon import Daemon
from station.packml import State
from tests.unit.core_harness import ScriptedPlc
from tests.unit.test_daemon_apply import LinkDouble


@pytest.fixture
async def daemon(tmp_path: Path) -> Any:
    cfg = StationConfig(journal=JournalSection(path=tmp_path / "j.sqlite"))
    d = Daemon(cfg, link=LinkDouble([]))
    yield d
    await asyncio.sleep(0.01)
    for t in list(d._background):
        t.cancel()
    d.journal.close()


def read(d: Daemon, values: dict[str, Any], t: float) -> bool:
    """One read at t: did it wake the scan? (the event cleared, as the scan loop does)"""
    d._wake.clear()
    d._on_inputs(dict(values), t)
    woke = d._wake.is_set()
    d._wake.clear()
    assert d.image.plc == values and d.image.plc_read_at == t  # stamped on every read
    return woke


async def test_an_unchanged_read_does_not_wake_the_scan_a_changed_one_does(
        daemon: Daemon) -> None:
    plc = ScriptedPlc().image.plc
    poll = daemon.cfg.plc.link_section().update_period_s
    assert read(daemon, plc, 10.0)  # the first read
    await daemon.scan()
    assert not read(daemon, plc, 10.0 + poll)  # nothing changed: the tick judges the time
    assert not read(daemon, plc, 10.0 + 2 * poll)
    beat = dict(plc, plc_heartbeat=int(plc.get("plc_heartbeat", 0) or 0) + 1)
    assert read(daemon, beat, 10.0 + 3 * poll)  # an input changed: at once
    assert not read(daemon, beat, 10.0 + 4 * poll)
    assert read(daemon, dict(beat, estop_ok=not beat.get("estop_ok")), 10.0 + 5 * poll)


async def test_the_first_read_after_a_connection_and_a_read_after_a_gap_wake_it(
        daemon: Daemon) -> None:
    plc = ScriptedPlc().image.plc
    poll = daemon.cfg.plc.link_section().update_period_s
    assert read(daemon, plc, 10.0)
    await daemon.scan()
    assert not read(daemon, plc, 10.0 + poll)
    daemon._on_connection(False)
    daemon._on_connection(True)
    assert read(daemon, plc, 10.0 + 2 * poll)  # first after the reconnection, unchanged
    assert not read(daemon, plc, 10.0 + 3 * poll)
    assert read(daemon, plc, 10.0 + 6 * poll)  # two reads missed: the staleness may end
    assert not read(daemon, plc, 10.0 + 7 * poll)


async def test_a_state_not_yet_scanned_wakes_it_on_the_next_read(daemon: Daemon) -> None:
    """A transition (the last scan's, or a command's) goes on at the next read, as before:
    an unchanged read wakes the scan until a scan has begun in the new state."""
    plc = ScriptedPlc().image.plc
    poll = daemon.cfg.plc.link_section().update_period_s
    assert daemon.core.state == State.STOPPED and daemon._reset_pending
    t0 = daemon.clock()  # the reset judges the read's age
    assert read(daemon, plc, t0)
    await daemon.scan()  # the start-up reset: Stopped -> Resetting
    assert daemon.core.state == State.RESETTING
    assert read(daemon, plc, t0 + poll)
    await daemon.scan()  # Resetting -> Idle
    assert daemon.core.state == State.IDLE
    assert read(daemon, plc, t0 + 2 * poll)
    await daemon.scan()
    assert daemon.core.state == State.IDLE
    assert not read(daemon, plc, t0 + 3 * poll)
