"""The event bus: the journal first, sinks in order, a slow sink never delays publishing,
and a durable sink resumes from its delivery cursor in the journal."""

from __future__ import annotations

import asyncio
from pathlib import Path

from station.eventbus import EventBus
from station.events import EVENT_TYPES, Fault, Inhibit, StateChanged
from station.journal import Journal


def ev(i: int) -> Inhibit:
    return Inhibit(t=float(i), reason=f"r{i}", vehicle_token=i)


async def test_journal_first_then_live_sinks_in_order(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    bus = EventBus(journal)
    seen: list[float] = []
    journal_rows_at_delivery: list[int] = []

    def sink(e: object) -> None:
        journal_rows_at_delivery.append(len(journal.events_after(0)))
        seen.append(e.t)  # type: ignore[attr-defined]

    bus.subscribe("s", sink)
    bus.start()
    ids = bus.publish([ev(1), ev(2), ev(3)])
    assert ids == [1, 2, 3]
    await asyncio.sleep(0.05)
    assert seen == [1.0, 2.0, 3.0]
    assert min(journal_rows_at_delivery) == 3  # journaled before any sink saw them
    await bus.close()


async def test_a_slow_sink_never_delays_publish(tmp_path: Path) -> None:
    bus = EventBus(Journal(tmp_path / "j.sqlite"), max_queue=5)
    gate = asyncio.Event()

    async def slow(e: object) -> None:
        await gate.wait()

    bus.subscribe("slow", slow)
    bus.start()
    for i in range(20):
        bus.publish([ev(i)])  # returns at once although the sink is stuck
    await asyncio.sleep(0)
    assert bus.stats()["slow"] >= 14  # a live sink drops its oldest, counted
    gate.set()
    await bus.close()


async def test_a_failing_sink_does_not_stop_the_others(tmp_path: Path) -> None:
    bus = EventBus(Journal(tmp_path / "j.sqlite"))
    got: list[float] = []

    def broken(e: object) -> None:
        raise RuntimeError("bug")

    bus.subscribe("broken", broken)
    bus.subscribe("ok", lambda e: got.append(e.t))  # type: ignore[attr-defined,func-returns-value]
    bus.start()
    bus.publish([ev(1), ev(2)])
    await asyncio.sleep(0.05)
    assert got == [1.0, 2.0]
    await bus.close()


async def test_durable_sink_resumes_from_its_cursor_and_retries(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    bus = EventBus(journal)
    delivered: list[int] = []
    fail_once = {3}

    async def outbox(event_id: int, kind: str, data: dict) -> None:
        if event_id in fail_once:
            fail_once.discard(event_id)
            raise ConnectionError("broker away")
        delivered.append(event_id)

    bus.subscribe_durable("telemetry", outbox, retry_s=0.01)
    bus.start()
    bus.publish([ev(1), ev(2), ev(3), ev(4)])
    for _ in range(100):
        if len(delivered) == 4:
            break
        await asyncio.sleep(0.01)
    assert delivered == [1, 2, 3, 4]  # in journal order, event 3 again after its failure
    assert journal.cursor("telemetry") == 4
    await bus.close()
    journal.close()
    # a restart: only what came after the cursor is delivered
    journal = Journal(path)
    bus = EventBus(journal)
    again: list[int] = []

    async def outbox2(event_id: int, kind: str, data: dict) -> None:
        again.append(event_id)

    journal.record([ev(5)])
    bus.subscribe_durable("telemetry", outbox2)
    bus.start()
    await asyncio.sleep(0.05)
    assert again == [5]
    await bus.close()


def test_cursor_never_moves_back(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite")
    assert j.cursor("x") == 0
    j.confirm("x", 7)
    j.confirm("x", 3)
    assert j.cursor("x") == 7 and j.cursor("y") == 0


def test_every_event_kind_is_typed_and_unique() -> None:
    assert EVENT_TYPES["state"] is StateChanged and EVENT_TYPES["fault"] is Fault
    assert len(EVENT_TYPES) == len({c.kind for c in EVENT_TYPES.values()})
    e = Fault(t=1.0, code="x", reason="y", swap_id=None, step=None)
    assert e.data == {"t": 1.0, "code": "x", "reason": "y", "swap_id": None, "step": None}
