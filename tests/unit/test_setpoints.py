"""The PLC's set-points against the configuration (station/setpoints.py)."""

from __future__ import annotations

from typing import Any

from sim_hw.config import SimConfig
from sim_hw.mechanics import StationModel
from station.config import StationConfig
from station.setpoints import check_setpoints, setpoint_mismatch


def published() -> dict[str, Any]:
    return StationModel(SimConfig()).setpoints()


def test_the_simulators_setpoints_fit_the_default_configuration() -> None:
    cfg = StationConfig()
    assert setpoint_mismatch(published(), cfg) is None
    assert all(c.ok for c in check_setpoints(published(), cfg))


def test_a_swap_height_off_by_more_than_half_a_millimetre_names_both_values() -> None:
    plc = published() | {"setpoint_swap_height": 520.0}
    why = setpoint_mismatch(plc, StationConfig())
    assert why == "setpoint_swap_height 520 mm (PLC) != sequence.swap_height_mm 500 mm"
    assert setpoint_mismatch(published() | {"setpoint_swap_height": 500.4},
                             StationConfig()) is None


def test_a_plc_tolerance_wider_than_the_controllers_is_a_mismatch() -> None:
    plc = published() | {"setpoint_position_tolerance": 6.0}
    why = setpoint_mismatch(plc, StationConfig())
    assert why == ("setpoint_position_tolerance 6 mm (PLC) wider than "
                   "sequence.position_tolerance_mm 5 mm")
    # a zero tolerance is no tolerance a PLC can stop within: not reported
    assert setpoint_mismatch(published() | {"setpoint_height_tolerance": 0.0},
                             StationConfig()) is not None


def test_a_bolt_window_must_lie_inside_the_controllers() -> None:
    cfg = StationConfig()
    assert setpoint_mismatch(published() | {"setpoint_lock_torque": [105.0, 125.0]},
                             cfg) == ("setpoint_lock_torque 105-125 N*m (PLC) not inside "
                                      "sequence.lock_torque_nm 110-130 N*m")
    assert setpoint_mismatch(published() | {"setpoint_unlock_angle": [760.0, 680.0]},
                             cfg) is not None  # upside down
    assert setpoint_mismatch(published() | {"setpoint_lock_angle": [80.0, 100.0]},
                             cfg) is None  # the same window is inside


def test_a_setpoint_not_reported_or_not_a_number_is_a_mismatch() -> None:
    plc = published()
    del plc["setpoint_shuttle_car_position"]
    assert setpoint_mismatch(plc, StationConfig()) == (
        "setpoint_shuttle_car_position not reported (PLC) != interlocks.shuttle_car_mm 3000 mm")
    for bad in (True, "500", None, [1.0], [1.0, "x"]):
        assert setpoint_mismatch(published() | {"setpoint_swap_height": bad,
                                                "setpoint_lock_torque": bad},
                                 StationConfig()) is not None


def test_every_mismatch_is_named() -> None:
    plc = published() | {"setpoint_swap_height": 400.0, "setpoint_lock_angle": [0.0, 1.0]}
    why = setpoint_mismatch(plc, StationConfig())
    assert why is not None and why.count(";") == 1
    assert "setpoint_swap_height" in why and "setpoint_lock_angle" in why


def test_height_and_tolerance_compose_every_height_the_plc_calls_done_counts_as_lifted() -> None:
    # each alone is within its rule, together the PLC may stop LIFT at 505.4 mm
    plc = published() | {"setpoint_swap_height": 500.5, "setpoint_height_tolerance": 5.0}
    why = setpoint_mismatch(plc, StationConfig())
    assert why == ("setpoint_swap_height +- setpoint_height_tolerance 495.5-505.5 mm (PLC) "
                   "not inside sequence.swap_height_mm +- height_tolerance_mm 495-505 mm")
    assert setpoint_mismatch(published() | {"setpoint_swap_height": 500.4,
                                            "setpoint_height_tolerance": 4.5},
                             StationConfig()) is None
