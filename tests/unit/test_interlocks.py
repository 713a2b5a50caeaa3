"""Each interlock of the table, in motion and at rest: removing one fails its test."""

from __future__ import annotations

import pytest

from station.core import CommandRefused
from station.interlocks import INTERLOCKS
from station.packml import Cmd, State
from station.sequence import SEQUENCE
from tests.unit.core_harness import ScriptedPlc, make_run

FLAG_OF = {
    "estop_open": "estop_ok", "safety_plc_fault": "safety_plc_ok",
    "light_curtain_breached": "light_curtain_clear", "door_open": "doors_closed",
    "smoke_detected": "smoke_clear",
}


def trip(plc: ScriptedPlc, il_id: str) -> None:
    if il_id in FLAG_OF:
        plc.image.plc[FLAG_OF[il_id]] = False
    elif il_id == "plc_inputs_stale":
        plc.freeze = True
    elif il_id == "plc_heartbeat_lost":
        plc.freeze_heartbeat = True
    else:
        raise AssertionError(f"no test trigger for interlock {il_id}")


def test_every_interlock_has_a_trigger_here() -> None:
    assert {il.id for il in INTERLOCKS} == {*FLAG_OF, "plc_inputs_stale", "plc_heartbeat_lost"}


@pytest.mark.parametrize("il_id", [il.id for il in INTERLOCKS])
@pytest.mark.parametrize("step", ["position", "unlock", "fetch", "lock", "lower"])
def test_interlock_aborts_swap_in_motion(il_id: str, step: str) -> None:
    cmd = next(s.command for s in SEQUENCE if s.name == step)
    run = make_run(behaviour={cmd: "busy"})  # the PLC is mid-motion when the fault comes
    run.until(lambda: run.core.step is not None and run.core.step.name == step)
    trip(run.plc, il_id)
    run.until(lambda: run.core.state == State.ABORTED)
    fault = run.kinds("fault")[0]
    assert fault["code"] == il_id and fault["step"] == step
    assert run.core.reason.startswith(f"interlock {il_id}")
    assert run.core.outputs["stop_request"] == 1
    assert run.kinds("swap_ended")[0]["outcome"] == "aborted"


@pytest.mark.parametrize("il_id", [il.id for il in INTERLOCKS])
def test_interlock_at_rest_inhibits_start_and_blocks_reset(il_id: str) -> None:
    def tripped(plc: ScriptedPlc) -> None:
        plc.image.plc["vehicle_present"] = False

    run = make_run(prepare=tripped)
    assert run.core.state == State.IDLE
    trip(run.plc, il_id)
    run.until(lambda: il_id in run.core.active_interlocks, limit=100)
    run.plc.image.plc.update(vehicle_present=True, vehicle_token=9)  # a car arrives
    run.step(n=40)
    assert run.core.state == State.IDLE and not run.kinds("swap_started")
    assert il_id in run.core.active_interlocks
    run.cmd(Cmd.ABORT)
    run.step(n=3)
    with pytest.raises(CommandRefused, match=il_id):
        run.cmd(Cmd.CLEAR)
