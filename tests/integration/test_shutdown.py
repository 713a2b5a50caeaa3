"""Issue 7, item 15: a graceful stop is deterministic. One of 33 SIGTERM stops logged
`swapd.stop_stuck tasks=["scan"]`: the stop cancelled the scan task wherever it was, and a
cancellation that does not come out of the scan as a CancelledError (a 3.11 wait_for loses
one, a library turns one into its own error, which the scan loop's `except Exception`
takes for a failed scan) left the loop running on. Now the scan is never cancelled: it is
told to stop and ends by itself between two decisions, the last one journaled; then the
links and the writes in flight are cancelled, and everything is awaited in a fixed order."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

import station.daemon as daemon_module
from station.rig import Rig


class LogRecorder:
    """The daemon's logger, recording the events it logs."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.events: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if name not in ("debug", "info", "warning", "error", "exception"):
            return method

        def record(event: str, *args: Any, **kw: Any) -> Any:
            self.events.append(event)
            return method(event, *args, **kw)

        return record


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> LogRecorder:
    rec = LogRecorder(daemon_module.log)
    monkeypatch.setattr(daemon_module, "log", rec)
    return rec


def scan_task() -> asyncio.Task[Any]:
    return next(t for t in asyncio.all_tasks() if t.get_name() == "scan")


async def test_a_cancellation_lost_in_the_scan_no_longer_leaves_it_running(
        logs: LogRecorder) -> None:
    """The race, provoked: the stop comes while the scan waits on something that turns
    its cancellation into an error (as a wait_for on 3.11 can lose it)."""
    async with Rig(speed=50.0, vehicles=1, name="lossy") as rig:
        daemon = rig.daemon
        await rig.wait_for(lambda: daemon.image.plc_read_at is not None, 20.0,
                           what="the first PLC read")
        scan, inside, lossy = scan_task(), asyncio.Event(), [True]
        real_scan = daemon.scan

        async def scan_with_a_lossy_wait() -> None:
            if lossy.pop() if lossy else False:
                inside.set()
                try:
                    await asyncio.sleep(0.5)
                except asyncio.CancelledError:
                    raise RuntimeError("cancelled inside a library call") from None
            await real_scan()

        daemon.scan = scan_with_a_lossy_wait
        await asyncio.wait_for(inside.wait(), 5.0)
        t0 = time.monotonic()
        await rig.stop()
        took = time.monotonic() - t0
        faults = [e.data["code"] for e in rig.events if e.kind == "fault"]
    assert "swapd.stop_stuck" not in logs.events, logs.events
    assert "scan.failed" not in logs.events and "internal_error" not in faults
    assert scan.done() and not scan.cancelled()  # it ended by itself
    assert took < 3.0, took
    assert logs.events[-1] == "swapd.stopped"


async def test_stops_at_random_moments_end_every_task_in_order(logs: LogRecorder) -> None:
    rng = random.Random(2026_11_30)
    for i in range(10):
        async with Rig(speed=50.0, vehicles=0, name=f"stop{i}") as rig:
            await asyncio.sleep(rng.uniform(0.0, 1.5))  # idle, identifying or mid-swap
            scan = scan_task()
            background = set(rig.daemon._background)
            t0 = time.monotonic()
            await rig.stop()
            took = time.monotonic() - t0
            assert "swapd.stop_stuck" not in logs.events, (i, logs.events)
            assert scan.done() and not scan.cancelled(), i
            assert all(t.done() for t in background | rig.daemon._background), i
            assert took < 3.0, (i, took)
            assert logs.events[-1] == "swapd.stopped", i
