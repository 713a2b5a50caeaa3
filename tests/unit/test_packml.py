"""PackML transitions: the table says what is allowed; everything else is refused."""

from __future__ import annotations

import pytest

from station.packml import TRANSITIONS, Cmd, PackMLMachine, State, TransitionRefused


def test_tr88_state_numbers() -> None:
    assert {s.name: int(s) for s in State} == {
        "CLEARING": 1, "STOPPED": 2, "STARTING": 3, "IDLE": 4, "SUSPENDED": 5, "EXECUTE": 6,
        "STOPPING": 7, "ABORTING": 8, "ABORTED": 9, "HOLDING": 10, "HELD": 11,
        "UNHOLDING": 12, "SUSPENDING": 13, "UNSUSPENDING": 14, "RESETTING": 15,
        "COMPLETING": 16, "COMPLETE": 17,
    }


def test_normal_cycle() -> None:
    m = PackMLMachine()
    path = [Cmd.RESET, Cmd.SC, Cmd.START, Cmd.SC, Cmd.SC, Cmd.SC, Cmd.RESET, Cmd.SC]
    states = [m.fire(c) for c in path]
    assert states == [State.RESETTING, State.IDLE, State.STARTING, State.EXECUTE,
                      State.COMPLETING, State.COMPLETE, State.RESETTING, State.IDLE]


def test_hold_and_suspend_return_to_execute() -> None:
    m = PackMLMachine(State.EXECUTE)
    for c in (Cmd.HOLD, Cmd.SC, Cmd.UNHOLD, Cmd.SC, Cmd.SUSPEND, Cmd.SC, Cmd.UNSUSPEND, Cmd.SC):
        m.fire(c)
    assert m.state == State.EXECUTE


@pytest.mark.parametrize("state", [s for s in State if s not in (State.ABORTING, State.ABORTED)])
def test_abort_from_every_state_then_clear_to_stopped(state: State) -> None:
    m = PackMLMachine(state)
    assert m.fire(Cmd.ABORT) == State.ABORTING
    assert m.fire(Cmd.SC) == State.ABORTED
    assert m.fire(Cmd.CLEAR) == State.CLEARING
    assert m.fire(Cmd.SC) == State.STOPPED


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("cmd", list(Cmd))
def test_everything_not_in_the_table_is_refused(state: State, cmd: Cmd) -> None:
    m = PackMLMachine(state)
    if (state, cmd) in TRANSITIONS:
        assert m.fire(cmd) == TRANSITIONS[(state, cmd)]
    else:
        with pytest.raises(TransitionRefused):
            m.fire(cmd)
        assert m.state == state


def test_no_start_from_aborted_or_stopped() -> None:
    for s in (State.ABORTED, State.STOPPED, State.HELD):
        assert not PackMLMachine(s).allowed(Cmd.START)
