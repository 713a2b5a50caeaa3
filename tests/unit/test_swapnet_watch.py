"""What `swapnet watch` prints of an event: enough to follow a station without --json."""

from __future__ import annotations

from station.cloud.swapnet import _event_detail


def test_an_event_line_names_the_step_state_alarm_and_why() -> None:
    assert _event_detail({"swap_id": "S-1", "step": "lift", "command": "LIFT"}) == \
        ": lift, LIFT"
    assert _event_detail({"old": "Execute", "new": "Aborted", "reason": "interlock estop"}) \
        == ": Aborted, interlock estop"
    assert _event_detail({"alarm": "over_temp", "reason": "pack 7 at 71 C"}) == \
        ": over_temp, pack 7 at 71 C"
    assert _event_detail({"reason": None, "vehicle_token": 3}) == ""
    assert _event_detail("not an object") == ""
    assert len(_event_detail({"reason": "x" * 1000})) == 2 + 160
