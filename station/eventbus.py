"""Publish/subscribe inside the daemon: every decision's events reach their sinks in order.

The journal comes first and synchronously: it is the record, and nothing is commanded that
is not journaled. Every other sink (logs, the demo's progress view, telemetry, metrics)
runs in its own task behind its own queue, so a slow sink never delays the scan.

Two kinds of sink:
- a *live* sink gets events from memory; if it falls more than `max_queue` behind, the
  oldest are dropped and counted (a progress view, a log: losing a line beats stalling);
- a *durable* sink reads from the journal after its delivery cursor and confirms each
  event it has delivered (the journal is its outbox: after a restart or a broker outage it
  resumes where it stopped, and nothing is kept twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog

from station.events import Event
from station.journal import Journal

log = structlog.get_logger("swapd.events")

LiveSink = Callable[[Event], Awaitable[None] | None]
DurableSink = Callable[[int, str, dict[str, Any]], Awaitable[None]]
"""Called with (journal event id, kind, data); returning confirms the event."""


@dataclass
class _Live:
    name: str
    sink: LiveSink
    queue: asyncio.Queue[Event]
    dropped: int = 0


@dataclass
class _Durable:
    name: str
    sink: DurableSink
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    retry_s: float = 1.0


class EventBus:
    def __init__(self, journal: Journal, max_queue: int = 10_000) -> None:
        self.journal = journal
        self.max_queue = max_queue
        self._live: list[_Live] = []
        self._durable: list[_Durable] = []
        self._tasks: list[asyncio.Task[None]] = []

    def subscribe(self, name: str, sink: LiveSink) -> None:
        self._live.append(_Live(name, sink, asyncio.Queue()))

    def subscribe_durable(self, name: str, sink: DurableSink, retry_s: float = 1.0) -> None:
        self._durable.append(_Durable(name, sink, retry_s=retry_s))

    def publish(self, events: Iterable[Event]) -> list[int]:
        """Journal the events (one transaction), then queue them for every sink."""
        events = list(events)
        ids = self.journal.record(events)
        self.dispatch(events)
        return ids

    def dispatch(self, events: list[Event]) -> None:
        """Queue already journaled events for the sinks. The daemon calls it after it has
        set its command going, so no sink runs between the journal and the PLC write."""
        if not events:
            return
        for s in self._live:
            for ev in events:
                if s.queue.qsize() >= self.max_queue:
                    s.queue.get_nowait()
                    s.dropped += 1
                s.queue.put_nowait(ev)
        for d in self._durable:
            d.wake.set()

    def start(self) -> None:
        for s in self._live:
            self._tasks.append(asyncio.create_task(self._run_live(s), name=f"sink:{s.name}"))
        for d in self._durable:
            self._tasks.append(asyncio.create_task(self._run_durable(d),
                                                   name=f"sink:{d.name}"))

    async def close(self, drain_s: float = 1.0) -> None:
        """Let the live sinks catch up (bounded), then stop every sink task."""
        loop = asyncio.get_running_loop()
        end = loop.time() + drain_s
        while any(not s.queue.empty() for s in self._live) and loop.time() < end:
            await asyncio.sleep(0.01)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()

    def stats(self) -> dict[str, int]:
        return {s.name: s.dropped for s in self._live}

    async def _run_live(self, s: _Live) -> None:
        while True:
            ev = await s.queue.get()
            try:
                result = s.sink(ev)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # one sink's bug must not stop the others or the scan
                log.exception("sink.failed", sink=s.name, kind=ev.kind)

    async def _run_durable(self, d: _Durable) -> None:
        while True:
            rows = self.journal.events_after(self.journal.cursor(d.name), limit=500)
            if not rows:
                d.wake.clear()
                await d.wake.wait()
                continue
            for row in rows:
                try:
                    await d.sink(int(row["id"]), str(row["kind"]), json.loads(row["data"]))
                except Exception as exc:  # not confirmed: delivered again after a pause
                    log.warning("sink.retry", sink=d.name, event_id=row["id"],
                                error=f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(d.retry_s)
                    break
                self.journal.confirm(d.name, int(row["id"]))
