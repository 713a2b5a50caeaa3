"""The observer with the real daemon driving the simulator over Modbus TCP and CAN: a whole
swap, and an e-stop in the middle of one, leave no safety invariant broken."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.conftest import Station

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("station", [{"vehicles": 1}], indirect=True)
async def test_a_swap_by_the_daemon_breaks_no_invariant(station: Station) -> None:
    await station.wait_for(lambda: len(station.ended()) >= 1, timeout=40)
    assert [e["outcome"] for e in station.ended()] == ["completed"], station.ended()
    assert station.sim.observer.violations == []


@pytest.mark.parametrize("station", [{"vehicles": 1}], indirect=True)
async def test_an_estop_mid_swap_stops_motion_and_breaks_no_invariant(
    station: Station,
) -> None:
    sim = station.sim
    await station.wait_for(lambda: any(r.name == "UNLOCK" for r in sim.command_log),
                           timeout=30)
    await station.sim_sleep()
    sim.faults.set("estop")
    unlock = next(r for r in sim.command_log if r.name == "UNLOCK")
    await station.wait_for(lambda: unlock.status != 1, timeout=5)
    assert unlock.error_code == 6  # the sim PLC stopped it by itself
    before = sim.truth()
    await asyncio.sleep(0.3)  # the daemon reacts as it likes; nothing may move meanwhile
    after = sim.truth()
    assert (before["shuttle_mm"], before["bolts"]) == (after["shuttle_mm"], after["bolts"])
    sim.faults.clear("estop")
    assert sim.observer.violations == []
