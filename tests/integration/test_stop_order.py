"""Issue 7, item 14: a rising stop request reaches the PLC before its decision is
journaled, whatever stop it follows: a hold (category 2) from Execute, an abort (category 1)
from Execute, and an abort while Holding (category 1 over 2). Watched from the simulated
PLC's side over real Modbus TCP: the moment it takes the new stop_request, against the
moment the journal commits the decision's state change."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sim_hw.mechanics import CONTRACT
from station.packml import Cmd, State
from station.rig import Rig

WAIT_S = 20.0
CODES = {CONTRACT.encode_enum("stop_request", n): n for n in ("none", "cat1", "cat2")}


class Order:
    """One list of what happened, in order: ("plc", stop name) when the PLC takes a new
    stop_request, ("journal", state) when a decision changing the state is committed."""

    def __init__(self, rig: Rig) -> None:
        self.seen: list[tuple[str, str]] = []
        model, journal = rig.sim.model, rig.daemon.journal
        take, record = model.set_outputs, journal.record
        self._last: str | None = None

        def set_outputs(values: dict[str, Any], now: float, real: float | None = None) -> None:
            stop = CODES.get(int(values.get("stop_request", -1)))
            if stop is not None and stop != self._last:
                self._last = stop
                self.seen.append(("plc", stop))
            take(values, now, real)

        def journal_record(events: Any) -> list[int]:
            events = list(events)
            ids = record(events)
            self.seen += [("journal", e.data["new"]) for e in events
                          if e.kind == "state"]
            return ids

        model.set_outputs = set_outputs  # type: ignore[method-assign]
        journal.record = journal_record  # type: ignore[method-assign]

    def index(self, *items: tuple[str, str]) -> int:
        """Where the first of `items` happened."""
        at = [i for i, x in enumerate(self.seen) if x in items]
        assert at, (items, self.seen)
        return at[0]


async def to_unlock(rig: Rig) -> Order:
    core = rig.core
    await rig.wait_for(lambda: core.ready_to_start, WAIT_S, what="a vehicle")
    await rig.command(Cmd.START)
    await rig.wait_for(lambda: core.step is not None and core.step.name == "unlock", WAIT_S,
                       what="unlock")
    return Order(rig)


@pytest.fixture
async def rig() -> Any:
    async with Rig(speed=50.0, vehicles=1, name="stops",
                   config={"operation": {"auto_start": False}}) as r:
        yield r


async def test_a_hold_reaches_the_plc_before_its_record(rig: Rig) -> None:
    order = await to_unlock(rig)
    await rig.command(Cmd.HOLD)
    await rig.wait_for(lambda: rig.core.state == State.HELD, WAIT_S, what="Held")
    assert order.index(("plc", "cat2")) < order.index(("journal", "Holding")), order.seen


async def test_an_abort_reaches_the_plc_before_its_record(rig: Rig) -> None:
    order = await to_unlock(rig)
    await rig.command(Cmd.ABORT)
    await rig.wait_for(lambda: rig.core.state == State.ABORTED, WAIT_S, what="Aborted")
    assert order.index(("plc", "cat1")) < order.index(("journal", "Aborting")), order.seen


async def test_an_abort_while_holding_reaches_the_plc_before_its_record(rig: Rig) -> None:
    order = await to_unlock(rig)
    core, image = rig.core, rig.daemon.image
    await rig.wait_for(lambda: image.plc["cmd_ack_seq"] == core.seq
                       and image.plc["cmd_status"] == "busy",
                       WAIT_S, what="the PLC running UNLOCK")  # Holding lasts till it stops
    # The category-1 stop follows the category-2 one at once: the abort is taken while the
    # hold's stop is still on its way.
    await asyncio.gather(rig.command(Cmd.HOLD), rig.command(Cmd.ABORT))
    await rig.wait_for(lambda: rig.core.state == State.ABORTED, WAIT_S, what="Aborted")
    def aborting() -> list[dict[str, Any]]:
        return [e.data for e in rig.events if e.kind == "state" and e.data["new"] == "Aborting"]

    await rig.wait_for(aborting, WAIT_S, what="the event (sinks run after the journal)")
    assert aborting()[0]["old"] == "Holding", aborting()
    # The hold's record waits for a stop at least as strong at the PLC (the abort's cat1 may
    # overtake the hold's cat2 there); the abort's record for its cat1.
    stop = order.index(("plc", "cat2"), ("plc", "cat1"))
    assert stop < order.index(("journal", "Holding")), order.seen
    assert order.index(("plc", "cat1")) < order.index(("journal", "Aborting")), order.seen
    assert order.index(("journal", "Holding")) < order.index(("journal", "Aborting"))
    assert rig.sim.observer.violations == []
