"""Interlocks as a table: condition, where it applies, reaction, hazard.

Evaluated by the core on every change of the process image and on every tick, before any
command is written. A tripped interlock in a state where it applies makes the core react
(abort the swap with a category-1 stop, or refuse to start / finish resetting).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from station.config import StationConfig
from station.image import ProcessImage
from station.packml import State


class Reaction(Enum):
    ABORT = "abort"  # category-1 stop requested from the PLC; Aborted until an operator clears
    INHIBIT = "inhibit"  # no start, no reset completion, while the condition holds


@dataclass(frozen=True)
class Inputs:
    image: ProcessImage
    cfg: StationConfig
    now: float
    plc_heartbeat_changed_at: float | None


@dataclass(frozen=True)
class Interlock:
    id: str
    hazard: str
    tripped: Callable[[Inputs], bool]
    abort_in: frozenset[State]  # states where it aborts
    inhibit_in: frozenset[State]  # states where it only holds the machine back

    def reaction(self, state: State) -> Reaction | None:
        if state in self.abort_in:
            return Reaction.ABORT
        if state in self.inhibit_in:
            return Reaction.INHIBIT
        return None


MOTION = frozenset({
    State.STARTING, State.EXECUTE, State.COMPLETING, State.HOLDING, State.UNHOLDING,
    State.SUSPENDING, State.UNSUSPENDING,
})
AT_REST = frozenset({State.IDLE, State.RESETTING, State.COMPLETE, State.CLEARING})


def _plc_stale(i: Inputs) -> bool:
    t = i.image.plc_read_at
    return t is None or i.now - t > i.cfg.plc.stale_after_s


def _plc_heartbeat_lost(i: Inputs) -> bool:
    t = i.plc_heartbeat_changed_at
    return t is None or i.now - t > i.cfg.plc.stale_after_s * 2


def _flag_false(name: str) -> Callable[[Inputs], bool]:
    return lambda i: not i.image.plc.get(name, False)


INTERLOCKS: tuple[Interlock, ...] = (
    Interlock("plc_inputs_stale", "controller blind to the machine: PLC inputs older than "
              "plc.stale_after_s", _plc_stale, MOTION, AT_REST),
    Interlock("plc_heartbeat_lost", "PLC program not running: heartbeat counter frozen",
              _plc_heartbeat_lost, MOTION, AT_REST),
    Interlock("estop_open", "emergency stop pressed or e-stop chain open",
              _flag_false("estop_ok"), MOTION, AT_REST),
    Interlock("safety_plc_fault", "safety PLC reports a fault: the safety barrier is not "
              "guaranteed", _flag_false("safety_plc_ok"), MOTION, AT_REST),
    Interlock("light_curtain_breached", "person or object in the swap area while machinery "
              "moves", _flag_false("light_curtain_clear"), MOTION, AT_REST),
    Interlock("door_open", "station door open: access to moving machinery",
              _flag_false("doors_closed"), MOTION, AT_REST),
    Interlock("smoke_detected", "smoke or fire in the station", _flag_false("smoke_clear"),
              MOTION, AT_REST),
)


def evaluate(inputs: Inputs, state: State) -> list[tuple[Interlock, Reaction]]:
    """The interlocks tripped now that apply in this state, with their reactions."""
    out = []
    for il in INTERLOCKS:
        reaction = il.reaction(state)
        if reaction is not None and il.tripped(inputs):
            out.append((il, reaction))
    return out


def table_markdown() -> str:
    """docs/interlocks.md, generated from INTERLOCKS (a test keeps the file in step)."""

    def states(s: frozenset[State]) -> str:
        return ", ".join(x.label for x in sorted(s))

    lines = [
        "# Interlocks",
        "",
        "Generated from `station/interlocks.py` by `python -m station.interlocks`; "
        "a test fails when this file and the table differ.",
        "",
        "The controller is supervision, not the safety barrier: the safety PLC and its relays "
        "are. Each interlock below is evaluated on every change of the process image and on "
        "every scan tick (at least every 50 ms), before any command is written. "
        "**abort**: category-1 stop requested from the PLC (`stop_request` = 1), the swap ends "
        "as aborted, PackML goes Aborting -> Aborted and stays there until an operator clears "
        "it (Clear is refused while the condition still holds), then Reset. "
        "**inhibit**: no swap starts and a reset does not complete while the condition holds.",
        "",
        "| id | hazard | abort in | inhibit in |",
        "|---|---|---|---|",
    ]
    for il in INTERLOCKS:
        lines.append(f"| `{il.id}` | {il.hazard} | {states(il.abort_in)} | "
                     f"{states(il.inhibit_in)} |")
    lines += [
        "",
        "Swap-step failures (also aborts, with the step and the reason journaled): a step "
        "over its timeout (`step_timeout`), the PLC not echoing a command's sequence number "
        "within `sequence.handshake_timeout_s` (`plc_no_answer`), the PLC reporting an error "
        "(`plc_error`), the PLC reporting done while the sensors disagree "
        "(`sensor_disagrees`), a bolt outside its torque/angle window after LOCK "
        "(`lock_failed`), and the installed pack failing the post-swap BMS check "
        "(`check_failed`).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    from pathlib import Path

    Path("docs/interlocks.md").write_text(table_markdown())
