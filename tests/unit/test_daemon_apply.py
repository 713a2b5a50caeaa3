"""The daemon's apply with a PLC link double that records, in one list with the journal's
commits, when outputs are set, when a write starts and when the PLC acknowledges it
(issue 7, item 14): a rising stop is acknowledged before its decision is journaled; a PLC
that does not answer holds the record back a moment only; decisions taken while a stop is
on its way are journaled in the order they were taken, and none of them lowers the stop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Self

import pytest

from drivers.plc.link import PlcLink
from station.config import JournalSection, StationConfig
from station.core import Decision
from station.daemon import STOP_ACK_WAIT_S, Daemon
from station.events import Inhibit
from station.image import StopRequest


class LinkDouble(PlcLink):
    def __init__(self, log: list[tuple[str, Any]]) -> None:
        super().__init__()
        self.log = log
        self.desired: dict[str, Any] = {}
        self.answering = True
        self.turns = 3  # scheduling turns a write takes to be acknowledged

    @classmethod
    def from_config(cls, plc: Any, section: Any, contract: Any, clock: Any) -> Self:
        raise NotImplementedError

    @property
    def connected(self) -> bool:
        return True

    async def run(self) -> None:
        await asyncio.Event().wait()

    def set_outputs(self, values: dict[str, Any]) -> None:
        self.desired.update(values)
        self.log.append(("set", str(values.get("stop_request"))))

    async def write_now(self) -> float | None:
        stop = str(self.desired.get("stop_request"))
        self.log.append(("write", stop))
        if not self.answering:
            await asyncio.Event().wait()
        for _ in range(self.turns):
            await asyncio.sleep(0)
        self.log.append(("ack", stop))
        return time.monotonic()

    async def probe(self) -> list[str]:
        return []

    async def close(self) -> None:
        pass


@pytest.fixture
async def daemon(tmp_path: Path) -> Any:
    log: list[tuple[str, Any]] = []
    cfg = StationConfig(journal=JournalSection(path=tmp_path / "j.sqlite"))
    link = LinkDouble(log)
    d = Daemon(cfg, link=link)
    record = d.journal.record

    def journal_record(events: Any) -> list[int]:
        events = list(events)
        log.append(("journal", [getattr(e, "reason", e.kind) for e in events]))
        return record(events)

    d.journal.record = journal_record  # type: ignore[method-assign]
    d.log = log
    yield d
    await asyncio.sleep(0.01)
    for t in list(d._background):
        t.cancel()
    d.journal.close()


def decision(stop: StopRequest, name: str) -> Decision:
    outputs = {"cmd_code": "NONE", "cmd_param1": 0, "cmd_param2": 0, "cmd_seq": 0,
               "stop_request": stop}
    return Decision(events=[Inhibit(t=0.0, reason=name, vehicle_token=0)], outputs=outputs)


async def test_a_stop_is_acknowledged_before_its_record(daemon: Any) -> None:
    await daemon.apply(decision(StopRequest.CAT2, "hold"))
    await daemon.apply(decision(StopRequest.CAT1, "abort while holding"))
    assert daemon.log == [
        ("set", "cat2"), ("write", "cat2"), ("ack", "cat2"), ("journal", ["hold"]),
        ("set", "cat1"), ("write", "cat1"), ("ack", "cat1"), ("journal", ["abort while holding"]),
    ]


async def test_a_plc_that_does_not_answer_holds_the_record_back_a_moment_only(
        daemon: Any) -> None:
    daemon.link.answering = False
    t0 = time.monotonic()
    await daemon.apply(decision(StopRequest.CAT1, "abort"))
    took = time.monotonic() - t0
    assert daemon.log == [("set", "cat1"), ("write", "cat1"), ("journal", ["abort"])]
    assert STOP_ACK_WAIT_S * 0.9 <= took < STOP_ACK_WAIT_S + 0.5


async def test_decisions_meanwhile_keep_their_order_and_never_lower_the_stop(
        daemon: Any) -> None:
    daemon.link.turns = 10
    hold = asyncio.ensure_future(daemon.apply(decision(StopRequest.CAT2, "hold")))
    await asyncio.sleep(0)  # the hold's stop is on its way
    # taken while the hold was in Holding: its output snapshot still says cat2
    scan = asyncio.ensure_future(daemon.apply(decision(StopRequest.CAT2, "scan in holding")))
    abort = asyncio.ensure_future(daemon.apply(decision(StopRequest.CAT1, "abort")))
    await asyncio.gather(hold, scan, abort)
    records = [x[1][0] for x in daemon.log if x[0] == "journal"]
    assert records == ["hold", "scan in holding", "abort"]
    assert daemon.link.desired["stop_request"] == StopRequest.CAT1  # never lowered again
    assert daemon.log.index(("set", "cat1")) < daemon.log.index(("journal", ["abort"]))


async def test_without_a_stop_nothing_waits(daemon: Any) -> None:
    d = Decision(events=[Inhibit(t=0.0, reason="plain", vehicle_token=0)])
    coro = daemon.apply(d)
    with pytest.raises(StopIteration):
        coro.send(None)  # ran to its end without suspending: no scheduling turn given away
    assert daemon.log == [("journal", ["plain"])]


async def test_the_reset_at_start_up_is_refused_away_from_home_and_the_status_says_why(
        daemon: Any) -> None:
    """Issue 7, item 6: `reset_on_start` goes through the same refusal; the daemon stays
    Stopped with a reason, never Idle in front of a lifted car."""
    from station.packml import State
    from tests.unit.core_harness import ScriptedPlc

    assert daemon._reset_pending
    plc = dict(ScriptedPlc().image.plc, lift_height=500, bolts_tight=0)
    daemon._on_inputs(plc, daemon.clock())
    await daemon.scan()
    assert daemon.core.state == State.STOPPED
    assert daemon.core.reason == (
        "start-up reset refused: machine away from home: car lifted at 500 mm, 0 of 10 "
        "bolts tight; check the machine, then reset")
    assert daemon.core.status()["start_inhibited"] == (
        "machine away from home: car lifted at 500 mm, 0 of 10 bolts tight")
