"""The PackML state machine (ISA-TR88.00.02) the station exposes as its mode.

Pure data and one small class: which command moves which state where. Acting states
(Resetting, Starting, Completing, Holding, ...) end with a State Complete (SC) that the
core fires once the state's work is done.
"""

from __future__ import annotations

from enum import Enum, IntEnum


class State(IntEnum):
    """PackML states with their TR88 numbers."""

    CLEARING = 1
    STOPPED = 2
    STARTING = 3
    IDLE = 4
    SUSPENDED = 5
    EXECUTE = 6
    STOPPING = 7
    ABORTING = 8
    ABORTED = 9
    HOLDING = 10
    HELD = 11
    UNHOLDING = 12
    SUSPENDING = 13
    UNSUSPENDING = 14
    RESETTING = 15
    COMPLETING = 16
    COMPLETE = 17

    @property
    def label(self) -> str:
        return self.name.capitalize()


class Cmd(Enum):
    RESET = "reset"
    START = "start"
    STOP = "stop"
    HOLD = "hold"
    UNHOLD = "unhold"
    SUSPEND = "suspend"
    UNSUSPEND = "unsuspend"
    ABORT = "abort"
    CLEAR = "clear"
    SC = "state_complete"


S = State
_STOPPABLE = {
    S.IDLE, S.STARTING, S.EXECUTE, S.COMPLETING, S.COMPLETE, S.RESETTING, S.HOLDING,
    S.HELD, S.UNHOLDING, S.SUSPENDING, S.SUSPENDED, S.UNSUSPENDING,
}

TRANSITIONS: dict[tuple[State, Cmd], State] = {
    (S.STOPPED, Cmd.RESET): S.RESETTING,
    (S.RESETTING, Cmd.SC): S.IDLE,
    (S.IDLE, Cmd.START): S.STARTING,
    (S.STARTING, Cmd.SC): S.EXECUTE,
    (S.EXECUTE, Cmd.SC): S.COMPLETING,
    (S.COMPLETING, Cmd.SC): S.COMPLETE,
    (S.COMPLETE, Cmd.RESET): S.RESETTING,
    (S.EXECUTE, Cmd.HOLD): S.HOLDING,
    (S.HOLDING, Cmd.SC): S.HELD,
    (S.HELD, Cmd.UNHOLD): S.UNHOLDING,
    (S.UNHOLDING, Cmd.SC): S.EXECUTE,
    (S.EXECUTE, Cmd.SUSPEND): S.SUSPENDING,
    (S.SUSPENDING, Cmd.SC): S.SUSPENDED,
    (S.SUSPENDED, Cmd.UNSUSPEND): S.UNSUSPENDING,
    (S.UNSUSPENDING, Cmd.SC): S.EXECUTE,
    (S.STOPPING, Cmd.SC): S.STOPPED,
    (S.ABORTING, Cmd.SC): S.ABORTED,
    (S.ABORTED, Cmd.CLEAR): S.CLEARING,
    (S.CLEARING, Cmd.SC): S.STOPPED,
}
for _s in _STOPPABLE:
    TRANSITIONS[(_s, Cmd.STOP)] = S.STOPPING
for _s in State:
    if _s not in (S.ABORTING, S.ABORTED):
        TRANSITIONS[(_s, Cmd.ABORT)] = S.ABORTING


class TransitionRefused(ValueError):
    def __init__(self, state: State, cmd: Cmd) -> None:
        super().__init__(f"{cmd.value} is not allowed in {state.label}")
        self.state = state
        self.cmd = cmd


class PackMLMachine:
    def __init__(self, state: State = State.STOPPED) -> None:
        self.state = state

    def allowed(self, cmd: Cmd) -> bool:
        return (self.state, cmd) in TRANSITIONS

    def fire(self, cmd: Cmd) -> State:
        nxt = TRANSITIONS.get((self.state, cmd))
        if nxt is None:
            raise TransitionRefused(self.state, cmd)
        self.state = nxt
        return nxt
