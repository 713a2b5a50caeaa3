"""Property test: random fault schedules over several swaps against the simulator. Whatever
the schedule, the simulator's independent observer sees no unsafe motion, and every swap
either completes or ends (or stays) in Held/Aborted with a reason."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from station.core import CommandRefused
from station.packml import Cmd, State
from station.rig import Rig

SPEED = 100.0
SWAPS = 3
# Faults that need no target, or whose default target is meaningful at any moment.
FAULTS = ["estop", "safety_plc_fault", "light_curtain", "door_open", "smoke", "vehicle_moved",
          "lift_overtravel", "shuttle_misplaced", "bolt_torque_fail", "bolt_not_reported",
          "pack_over_temp", "pack_fault", "pack_insulation_low", "plc_silent", "can_silent"]

schedule_st = st.lists(
    st.tuples(st.sampled_from(FAULTS),
              st.floats(min_value=0.0, max_value=2.5),  # when, real seconds from start
              st.floats(min_value=0.05, max_value=1.0)),  # for how long
    min_size=1, max_size=4,
)


async def run_schedule(schedule: list[tuple[str, float, float]]) -> dict[str, Any]:
    # The rig's journal and log live in its own temporary directory (kept until the test
    # ends, so that a failing example's artifacts can be saved).
    async with Rig(speed=SPEED, vehicles=SWAPS, name="rf") as rig:
        sim, daemon, events = rig.sim, rig.daemon, rig.events
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        pending = sorted(schedule, key=lambda f: f[1])
        active: dict[str, float] = {}
        while loop.time() - t0 < 10.0:
            now = loop.time() - t0
            while pending and pending[0][1] <= now:
                name, _, dur = pending.pop(0)
                sim.faults.set(name)
                active[name] = now + dur
            for name, until in list(active.items()):
                if now >= until:
                    sim.faults.clear(name)
                    del active[name]
            ended = rig.ended()
            state = daemon.core.state
            if state == State.ABORTED or len(ended) >= SWAPS:
                break  # an abort needs people; or all swaps done
            if state == State.HELD and not active and not pending and \
                    not daemon.core.active_interlocks:
                with contextlib.suppress(CommandRefused):
                    await daemon.command(Cmd.UNHOLD, origin="test operator")
            await asyncio.sleep(0.01)
        return {"events": events, "state": daemon.core.state, "reason": daemon.core.reason,
                "violations": list(sim.observer.violations)}


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(schedule=schedule_st)
def test_random_fault_schedules_stay_safe_and_explained(
        schedule: list[tuple[str, float, float]]) -> None:
    r = asyncio.run(run_schedule(schedule))
    assert r["violations"] == [], r["violations"]
    for e in r["events"]:
        if e.kind == "swap_ended" and e.data["outcome"] != "completed":
            assert e.data["reason"], e.data
    if r["state"] in (State.HELD, State.ABORTED):
        assert r["reason"], r
