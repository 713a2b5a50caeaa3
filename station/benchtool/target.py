"""What a target offers the runner: the station to run a scenario on.

Both targets talk to swapd the same way, through its local API (status, the journal's
events, operator commands): the runner sees a simulated station and a real bench alike.
They differ in how the station is set up and how faults are made:

- `sim` (sim_target.py) starts the simulator and swapd (the shared rig), set up as the
  scenario says, and injects faults into the simulator;
- `bench` (bench_target.py) attaches to a running station's swapd and makes faults through
  a fault adapter named in the bench config (a Modbus TCP relay module, or a prompt).

A target that cannot do what an action needs says why (`cannot`): the runner then reports
the scenario as not run, with that reason, before starting it.
"""

from __future__ import annotations

from typing import Any, Protocol

from station.benchtool.scenario import Action, Scenario


class TargetError(RuntimeError):
    """The target failed (not the station under test): the scenario is an error."""


DOWN = "(swapd down)"  # the state the timeline shows while swapd is not running


def down_status(why: str) -> dict[str, Any]:
    return {"packml_state": DOWN, "step": None, "reason": why, "down": True}


class Target(Protocol):
    name: str  # "sim" or "bench"

    @property
    def speed(self) -> float:
        """Station seconds per real second (the simulator's speed; 1 on a bench)."""
        ...

    def cannot(self, scenario: Scenario) -> str | None:
        """Why this target cannot run the scenario (a fault it cannot make, a set-up it
        cannot give, an action it has no means for), or None."""
        ...

    async def start(self, scenario: Scenario) -> None:
        """Bring the station up in the scenario's set-up (sim), or attach to it and check
        it (bench). After this, status() answers."""
        ...

    async def stop(self) -> None:
        """Stop what start() started; clear every fault this target made."""
        ...

    async def status(self) -> dict[str, Any]:
        """swapd's status (what `swapctl status --json` shows); `down_status()` while
        swapd is not running (killed by the scenario, restarting)."""
        ...

    async def events_after(self, event_id: int) -> list[dict[str, Any]]:
        """The journal's events after this id, oldest first: {id, wall, t, kind, data}."""
        ...

    async def operator(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        """An operator command through the local API; the API's answer (ok, error...)."""
        ...

    async def cloud(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        """A signed cloud command through the broker; the station's response."""
        ...

    async def act(self, action: Action) -> str:
        """Carry out a fault, broker, PLC or swapd action; a one-line label of what was
        done (for the report's markers)."""
        ...

    async def telemetry(self) -> list[dict[str, Any]]:
        """The messages the station published since start: {topic, leaf, payload}."""
        ...

    async def ground_truth(self) -> dict[str, Any] | None:
        """The simulator's truth (where each pack really is, observer violations); None
        on a bench."""
        ...

    def log_tail(self) -> str:
        """The end of swapd's log, for a failed scenario's report."""
        ...
