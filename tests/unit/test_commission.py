"""The commissioning report's judge and renderers (station/commission.py), without a PLC:
observations made up here, every section's PASS and FAIL."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from drivers.plc.contract import load_contract
from station.commission import (
    InputSeen,
    Observation,
    RoundTrip,
    _next_seq,
    build_report,
    exit_code,
    format_value,
    render,
)
from station.config import SequenceSection, StationConfig
from station.setpoints import check_setpoints

CONTRACT = load_contract()
T0 = 1000.0


def plc_inputs() -> dict[str, Any]:
    values: dict[str, Any] = {}
    for sig in CONTRACT.inputs():
        v: Any = False if sig.type == "bool" else 0.0 if sig.type == "float" else 0
        if sig.enum is not None:
            v = CONTRACT.enums[sig.enum].values[0].name
        values[sig.name] = [v] * sig.count if sig.count > 1 else v
    values.update(estop_ok=True, safety_plc_ok=True, light_curtain_clear=True,
                  doors_closed=True, smoke_clear=True, cmd_status="done",
                  setpoint_swap_height=500.0, setpoint_height_tolerance=0.5,
                  setpoint_position_tolerance=2.0, setpoint_shuttle_car_position=3000.0,
                  setpoint_unlock_torque=[85.0, 95.0], setpoint_unlock_angle=[700.0, 740.0],
                  setpoint_lock_torque=[117.0, 123.0], setpoint_lock_angle=[86.0, 94.0])
    return values


def good(cfg: StationConfig | None = None, **changes: Any) -> Observation:
    values = plc_inputs()
    obs = Observation(
        station_id="PSS-TEST-0001", station_name="Test station",
        endpoint="modbus://10.0.0.5:502", protocol="modbus", contract_version="1.1",
        swapd_version="0.1.0", date="2026-01-01T00:00:00+00:00", watched_s=5.0,
        heartbeat_period_s=0.1, wrote=["stop_request cat2"],
        inputs={n: InputSeen(v, T0, T0 + 4.98) for n, v in values.items()},
        ended_at=T0 + 5.0, started_at=T0,
        plc_heartbeat=[(T0 + 0.05 * i, i) for i in range(100)],
        ctrl_writes=[T0 + 0.1 * i for i in range(50)], ctrl_write_errors=0,
        round_trips=[RoundTrip(s, ack_ms=2.0, echo_ms=10.0 + s, done_ms=10.0 + s,
                               status="done", stop_restored=True) for s in (1, 2, 3)],
        setpoints=check_setpoints(values, cfg or StationConfig()))
    return replace(obs, **changes)


def sections(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in report["sections"]}


def test_a_good_observation_passes_every_section() -> None:
    report = build_report(good(), CONTRACT)
    assert report["verdict"] == "PASS" and exit_code(report) == 0
    s = sections(report)
    assert list(s) == ["inputs", "heartbeat", "round_trip", "setpoints"]
    assert all(x["verdict"] == "PASS" for x in s.values())
    assert report["plc"] == {"endpoint": "modbus://10.0.0.5:502", "protocol": "modbus",
                             "contract_version": "1.1"}
    rows = {r["signal"]: r for r in s["inputs"]["rows"]}
    assert rows["cmd_status"]["value"] == "done"
    assert rows["bolt_torque[12]"]["value"] == "12 x 0"
    assert rows["setpoint_swap_height"]["unit"] == "mm"
    assert rows["estop_ok"]["age_s"] == 5.0 and rows["estop_ok"]["changes"] == 0
    hb = s["heartbeat"]["plc"]
    assert hb["changes"] == 99 and hb["rate_per_s"] == 20.0
    assert s["round_trip"]["stats"]["echo_ms"] == {"min": 11.0, "median": 12.0, "max": 13.0,
                                                   "n": 3}


def test_inputs_fail_when_one_was_never_read_or_has_an_unknown_code() -> None:
    obs = good()
    del obs.inputs["smoke_clear"]
    report = build_report(obs, CONTRACT)
    s = sections(report)["inputs"]
    assert s["verdict"] == "FAIL" and report["verdict"] == "FAIL" and exit_code(report) == 2
    assert "never read: smoke_clear" in s["lines"]
    assert {r["signal"]: r for r in s["rows"]}["smoke_clear"]["value"] is None

    obs = good()
    obs.inputs["cmd_error_code"] = InputSeen("unknown_9", T0, T0)
    s = sections(build_report(obs, CONTRACT))["inputs"]
    assert s["verdict"] == "FAIL"
    assert any("cmd_error_code = unknown_9" in line for line in s["lines"])


def test_a_frozen_plc_heartbeat_fails() -> None:
    s = sections(build_report(good(plc_heartbeat=[(T0, 7)]), CONTRACT))["heartbeat"]
    assert s["verdict"] == "FAIL"
    assert "never changed" in s["lines"][0] and "value 7" in s["lines"][0]
    # counting, then silent for longer than the contract's timeout until the end
    frozen = [(T0 + 0.05 * i, i) for i in range(40)]  # last change at 1.95 s of 5 s
    s = sections(build_report(good(plc_heartbeat=frozen), CONTRACT))["heartbeat"]
    assert s["verdict"] == "FAIL" and s["plc"]["largest_gap_ms"] == 3050.0


def test_a_slow_plc_heartbeat_within_the_timeout_passes_with_a_note() -> None:
    slow = [(T0 + 0.2 * i, i) for i in range(26)]
    s = sections(build_report(good(plc_heartbeat=slow), CONTRACT))["heartbeat"]
    assert s["verdict"] == "PASS"
    assert any("longer than the 100 ms period" in line for line in s["lines"])


def test_heartbeat_wraps_at_65535() -> None:
    hb = [(T0, 65534), (T0 + 0.05, 65535), (T0 + 0.1, 0), (T0 + 0.15, 1)]
    obs = good(plc_heartbeat=hb, ended_at=T0 + 0.2)
    s = sections(build_report(obs, CONTRACT))["heartbeat"]
    assert s["plc"]["rate_per_s"] == 20.0


def test_ctrl_heartbeat_fails_without_acknowledged_writes() -> None:
    s = sections(build_report(good(ctrl_writes=[], ctrl_write_errors=4), CONTRACT))["heartbeat"]
    assert s["verdict"] == "FAIL"
    assert any("no write acknowledged" in line and "4 write errors" in line
               for line in s["lines"])


def test_a_refused_noop_fails_naming_the_error_and_the_open_safety_input() -> None:
    trip = RoundTrip(4, ack_ms=2.0, echo_ms=9.0, done_ms=9.0, status="error",
                     error="refused", safety_open=["estop_ok"], stop_restored=True)
    report = build_report(good(round_trips=[trip]), CONTRACT)
    s = sections(report)
    assert s["round_trip"]["verdict"] == "FAIL"
    text = "\n".join(s["round_trip"]["lines"])
    assert "[FAIL] seq 4:" in text and "error refused seen 9.0 ms" in text
    assert "safety chain open: estop_ok" in text
    # nothing done: the PLC's view of ctrl_heartbeat is not confirmed either
    assert s["heartbeat"]["verdict"] == "FAIL"
    assert any("not confirmed" in line for line in s["heartbeat"]["lines"])


def test_a_late_echo_a_missing_echo_and_an_unacknowledged_write_fail() -> None:
    late = RoundTrip(1, ack_ms=2.0, echo_ms=2500.0, done_ms=2500.0, status="done",
                     stop_restored=True)
    silent = RoundTrip(2, ack_ms=2.0, stop_restored=True)
    unwritten = RoundTrip(3, problem="the write of NOOP seq 3 was not acknowledged by the PLC")
    for trip, words in ((late, "later than the contract's 2000 ms"),
                        (silent, "did not echo cmd_seq 2 within 2000 ms"),
                        (unwritten, "not acknowledged")):
        others = [RoundTrip(9, ack_ms=1.0, echo_ms=5.0, done_ms=5.0, status="done",
                            stop_restored=True)]
        s = sections(build_report(good(round_trips=[*others, trip]), CONTRACT))["round_trip"]
        assert s["verdict"] == "FAIL", words
        assert any(words in line for line in s["lines"]), (words, s["lines"])
    # stop_request not put back: a failure too
    trip = RoundTrip(1, ack_ms=2.0, echo_ms=5.0, done_ms=5.0, status="done")
    s = sections(build_report(good(round_trips=[trip]), CONTRACT))["round_trip"]
    assert s["verdict"] == "FAIL"
    assert any("stop_request cat2 was not acknowledged again" in x for x in s["lines"])


def test_a_setpoint_mismatch_fails_with_both_values() -> None:
    cfg = StationConfig(sequence=SequenceSection(swap_height_mm=520))
    report = build_report(good(cfg), CONTRACT)
    s = sections(report)["setpoints"]
    assert s["verdict"] == "FAIL" and report["verdict"] == "FAIL"
    assert ("[FAIL] setpoint_swap_height 500 mm (PLC) != sequence.swap_height_mm 520 mm "
            "(rule: equal)") in s["lines"]
    # and the lift window composed of it (495.5-505.5 is not inside 515-525)
    assert [c["signal"] for c in s["checks"] if not c["ok"]] == [
        "setpoint_swap_height", "setpoint_swap_height +- setpoint_height_tolerance"]


def test_addressing_problems_replace_the_other_sections() -> None:
    report = build_report(good(addressing=["smoke_clear (ns=2;s=X): missing"]), CONTRACT)
    assert [s["id"] for s in report["sections"]] == ["addressing"]
    assert report["verdict"] == "FAIL"


def test_renderers() -> None:
    bad = good(StationConfig(sequence=SequenceSection(swap_height_mm=520)))
    report = build_report(bad, CONTRACT)
    text = render(report, "text")
    for words in ("swapd commissioning report: FAIL", "Station:  PSS-TEST-0001 (Test station)",
                  "PLC:      modbus://10.0.0.5:502 (modbus), contract 1.1", "swapd:    0.1.0",
                  "Date:     2026-01-01", "1. Inputs: PASS", "2. Heartbeats: PASS",
                  "3. Command round trip (NOOP): PASS",
                  "4. Set-points against the configuration: FAIL",
                  "Overall: FAIL (Set-points against the configuration failed)"):
        assert words in text, words
    assert any(line.split()[:2] == ["cmd_status", "done"] for line in text.splitlines())
    md = render(report, "markdown")
    assert md.startswith("# swapd commissioning report: FAIL")
    assert "## 4. Set-points against the configuration: FAIL" in md
    assert "| `rack_slot_occupied[30]` |" in md
    assert json.loads(render(report, "json")) == report


def test_format_value() -> None:
    assert format_value(True) == "1" and format_value(False) == "0"
    assert format_value(12.5) == "12.5" and format_value(3.0) == "3"
    assert format_value(0.1 + 0.2) == "0.3"
    assert format_value("busy") == "busy"
    assert format_value([0.0] * 12) == "12 x 0"
    assert format_value([85.0, 95.0]) == "[85, 95]"
    assert format_value([True, True, False]) == "110 (2 of 3 set)"


def test_next_seq_skips_0_and_the_plcs_ack() -> None:
    assert _next_seq(0, 0) == 1
    assert _next_seq(4, 5) == 6
    assert _next_seq(65535, 0) == 1
    assert _next_seq(65535, 1) == 2
