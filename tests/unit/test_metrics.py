"""station/metrics.py: typed events in, the Prometheus text out, parsed back."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from drivers.bms.canbus import PackBus
from drivers.bms.protocol import PackProtocol
from station.commands import Origin
from station.config import ConfigError, StationConfig, load_config
from station.events import (
    Alarm,
    CommandAccepted,
    CommandRefused,
    Fault,
    Inhibit,
    StateChanged,
    StepDone,
    StepStarted,
    SwapEnded,
)
from station.interlocks import INTERLOCKS
from station.metrics import SLOT_STATES, StationMetrics
from station.packml import State
from station.sequence import STEP_NAMES

ROOT = Path(__file__).resolve().parents[2]
PROTO = PackProtocol()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(read_at: float | None = None) -> tuple[StationMetrics, PackBus, Clock]:
    clock = Clock()
    bus = PackBus("virtual", "metrics-test", PROTO, name="pack", clock=clock)
    m = StationMetrics(buses={"pack": bus}, plc_read_at=lambda: read_at, clock=clock,
                       info={"station": "PSS-T"})
    return m, bus, clock


def samples(m: StationMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (name, sorted labels)."""
    text = generate_latest(m.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(m: StationMetrics, name: str, **labels: str) -> float:
    return samples(m)[(name, tuple(sorted(labels.items())))]


def test_zero_series_exist_before_any_event() -> None:
    m, _, _ = make()
    got = samples(m)
    for outcome in ("completed", "aborted", "stopped"):
        assert got[("swapd_swaps_total", (("outcome", outcome),))] == 0
    for step in STEP_NAMES:
        assert got[("swapd_step_duration_seconds_count", (("step", step),))] == 0
    for il in INTERLOCKS:
        assert got[("swapd_interlock_trips_total", (("interlock", il.id),))] == 0
    for origin in Origin:
        for result in ("accepted", "refused"):
            key = ("swapd_command_results_total",
                   tuple(sorted({"origin": origin.value, "result": result}.items())))
            assert got[key] == 0
    for state in SLOT_STATES:
        for chem in ("nmc", "lfp", "sodium_ion", "unknown"):
            key = ("swapd_packs", (("chemistry", chem), ("state", state)))
            assert got[key] == 0
    for kind in ("received", "decoded", "rejected", "sent", "error_frame"):
        assert got[("swapd_can_frames_total", (("bus", "pack"), ("kind", kind)))] == 0
    assert got[("swapd_can_rejected_frames_total", (("bus", "pack"), ("reason", "wrong_bus")))] \
        == 0
    assert got[("swapd_pack_alarms_total", (("alarm", "over_temp"),))] == 0
    assert sum(v for (n, _), v in got.items() if n == "swapd_packml_state") == 0
    assert got[("swapd_info", (("station", "PSS-T"),))] == 1


def test_a_swap_counts_and_times_its_steps() -> None:
    m, _, _ = make()
    m.on_event(StepStarted(t=10.0, swap_id="s1", step="identify", command=None, seq=None,
                           param=None))
    m.on_event(StepDone(t=12.5, swap_id="s1", step="identify", confirmed_by="sensors"))
    m.on_event(StepStarted(t=12.5, swap_id="s1", step="lift", command="LIFT", seq=1, param=0))
    m.on_event(StepDone(t=24.0, swap_id="s1", step="lift", confirmed_by="plc"))
    m.on_event(SwapEnded(t=150.0, swap_id="s1", outcome="completed", reason=None,
                         step=None))
    assert value(m, "swapd_swaps_total", outcome="completed") == 1
    assert value(m, "swapd_swaps_total", outcome="aborted") == 0
    assert value(m, "swapd_step_duration_seconds_count", step="lift") == 1
    assert value(m, "swapd_step_duration_seconds_sum", step="lift") == pytest.approx(11.5)
    assert value(m, "swapd_step_duration_seconds_bucket", step="lift", le="10.0") == 0
    assert value(m, "swapd_step_duration_seconds_bucket", step="lift", le="15.0") == 1
    assert value(m, "swapd_step_duration_seconds_sum", step="identify") == pytest.approx(2.5)
    # from identify's start to the end: the journal's summary counts it the same way
    assert value(m, "swapd_swap_duration_seconds_sum") == pytest.approx(140.0)
    assert value(m, "swapd_swap_duration_seconds_count") == 1


def test_an_aborted_swap_is_no_duration_and_its_open_step_is_dropped() -> None:
    m, _, _ = make()
    m.on_event(StepStarted(t=1.0, swap_id="s2", step="unlock", command="UNLOCK", seq=3,
                           param=0))
    m.on_event(Fault(t=2.0, code="estop_open", reason="e-stop chain open", swap_id="s2",
                     step="unlock"))
    m.on_event(SwapEnded(t=2.0, swap_id="s2", outcome="aborted", reason="x", step="unlock"))
    m.on_event(StepDone(t=9.0, swap_id="s2", step="unlock", confirmed_by="plc"))
    assert value(m, "swapd_swaps_total", outcome="aborted") == 1
    assert value(m, "swapd_swap_duration_seconds_count") == 0
    assert value(m, "swapd_step_duration_seconds_count", step="unlock") == 0
    assert value(m, "swapd_interlock_trips_total", interlock="estop_open") == 1


def test_interlock_trips_from_faults_and_the_start_inhibit() -> None:
    m, _, _ = make()
    m.on_event(Fault(t=1.0, code="step_timeout", reason="lift", swap_id="s", step="lift"))
    m.on_event(Inhibit(t=2.0, reason="interlocks active: door_open", vehicle_token=0))
    m.on_event(Inhibit(t=3.0, reason="interlocks active: door_open, smoke_detected",
                       vehicle_token=0))  # only smoke is new
    m.on_event(Inhibit(t=4.0, reason=None, vehicle_token=0))
    m.on_event(Inhibit(t=5.0, reason="interlocks active: door_open", vehicle_token=0))
    m.on_event(Inhibit(t=6.0, reason="shuttle away from home", vehicle_token=0))
    assert value(m, "swapd_interlock_trips_total", interlock="door_open") == 2
    assert value(m, "swapd_interlock_trips_total", interlock="smoke_detected") == 1
    total = sum(v for (n, _), v in samples(m).items() if n == "swapd_interlock_trips_total")
    assert total == 3  # a step timeout is no interlock


def test_commands_alarms_and_packml_state() -> None:
    m, _, _ = make()
    m.on_event(CommandAccepted(t=1.0, request_id="a", command="reset",
                               origin="start-up: start-up", state="Resetting"))
    m.on_event(CommandRefused(t=1.0, request_id="b", command="start",
                              origin="cloud: key ops-1", reason="no"))
    m.on_event(CommandRefused(t=1.0, request_id="c", command="start", origin="martian: x",
                              reason="no"))
    m.on_event(Alarm(t=1.0, location="slot:3", slot=3, serial=7, alarm="over_temp",
                     reason="hot", action="isolate"))
    m.on_event(StateChanged(t=1.0, old="Stopped", new="Resetting", number=1, reason=None,
                            swap_id=None))
    m.on_event(StateChanged(t=1.0, old="Resetting", new="Idle", number=2, reason=None,
                            swap_id=None))
    assert value(m, "swapd_command_results_total", origin="start-up", result="accepted") == 1
    assert value(m, "swapd_command_results_total", origin="cloud", result="refused") == 1
    assert value(m, "swapd_command_results_total", origin="local", result="accepted") == 0
    # the sender is not a label: one series per origin, whoever sent it
    assert value(m, "swapd_command_results_total", origin="other", result="refused") == 1
    assert value(m, "swapd_pack_alarms_total", alarm="over_temp") == 1
    states = {dict(k[1])["state"]: v for k, v in samples(m).items()
              if k[0] == "swapd_packml_state"}
    assert states == {s.label: (1.0 if s == State.IDLE else 0.0) for s in State}


def test_polled_gauges() -> None:
    m, _, _ = make()
    m.set_plc(True, 2, 0.004)
    m.set_plc(True, 2, 0.005)  # the link's count, not added twice
    m.set_plc(False, 3, None)
    assert value(m, "swapd_plc_reconnects_total") == 3
    assert value(m, "swapd_plc_connected") == 0
    assert value(m, "swapd_plc_read_round_trip_seconds") != value(
        m, "swapd_plc_read_round_trip_seconds")  # NaN: not measured
    m.set_plc(True, 3, 0.005)
    assert value(m, "swapd_plc_read_round_trip_seconds") == pytest.approx(0.005)
    m.set_packs([{"state": "ready", "chemistry": "lfp"}, {"state": "ready", "chemistry": "lfp"},
                 {"state": "empty", "chemistry": None},
                 {"state": "charging", "chemistry": "weird"}])
    assert value(m, "swapd_packs", state="ready", chemistry="lfp") == 2
    assert value(m, "swapd_packs", state="empty", chemistry="unknown") == 1
    assert value(m, "swapd_packs", state="charging", chemistry="unknown") == 1
    m.set_packs([{"state": "empty", "chemistry": None}])
    assert value(m, "swapd_packs", state="ready", chemistry="lfp") == 0  # a new count each time
    m.set_outbox_backlog(42)
    assert value(m, "swapd_outbox_backlog_events") == 42


def test_can_counters_and_plc_age_are_read_at_scrape_time() -> None:
    m, bus, clock = make(read_at=99.75)
    bus.stats["received"] += 5
    bus.stats["decoded"] += 3
    bus.stats["wrong_bus"] += 1
    bus.stats["tp_bad_size"] = 2
    bus.state = "passive"
    assert value(m, "swapd_can_frames_total", bus="pack", kind="received") == 5
    assert value(m, "swapd_can_frames_total", bus="pack", kind="decoded") == 3
    assert value(m, "swapd_can_frames_total", bus="pack", kind="rejected") == 3
    assert value(m, "swapd_can_rejected_frames_total", bus="pack", reason="tp_bad_size") == 2
    assert value(m, "swapd_can_bus_state", bus="pack", state="passive") == 1
    assert value(m, "swapd_can_bus_state", bus="pack", state="active") == 0
    assert value(m, "swapd_plc_input_age_seconds") == pytest.approx(0.25)
    clock.now = 101.0
    assert value(m, "swapd_plc_input_age_seconds") == pytest.approx(1.25)


def test_names_follow_the_prometheus_conventions() -> None:
    m, _, _ = make()
    text = generate_latest(m.registry).decode()
    families = [f for f in text_string_to_metric_families(text)
                if not f.name.endswith("_created")]  # the client's own creation stamps
    assert len(families) >= 15
    for fam in families:
        assert re.fullmatch(r"swapd_[a-z][a-z0-9_]*", fam.name), fam.name
        if fam.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in fam.samples), fam.name
        if "duration" in fam.name or "age" in fam.name or "round_trip" in fam.name:
            assert fam.name.endswith("_seconds"), fam.name
        if fam.type == "histogram":
            assert fam.name.endswith("_seconds"), fam.name


def test_the_endpoint_serves_and_stops() -> None:
    m, _, _ = make()
    port = m.start("127.0.0.1", 0)
    try:
        assert port > 0 and m.port == port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            body = r.read().decode()
        assert 'swapd_swaps_total{outcome="completed"} 0.0' in body
    finally:
        m.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_metrics_config(tmp_path: Path) -> None:
    cfg = StationConfig()
    assert (cfg.metrics.enabled, cfg.metrics.host, cfg.metrics.port) == (True, "127.0.0.1",
                                                                         9468)
    f = tmp_path / "s.toml"
    for bad in ("port = 70000", "port = -1", 'host = ""', "bogus = 1"):
        f.write_text(f"[metrics]\n{bad}\n")
        with pytest.raises(ConfigError, match="metrics"):
            load_config(f)
    f.write_text('[metrics]\nenabled = false\nhost = "0.0.0.0"\nport = 0\n')
    assert load_config(f).metrics.port == 0


def test_docs_name_every_metric_and_the_alert_rules_use_real_ones() -> None:
    m, _, _ = make()
    doc = (ROOT / "docs" / "operations.md").read_text()
    metrics = doc.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    alerts = doc.split("## Alert rules", 1)[1].split("\n## ", 1)[0]
    names = {f.name for f in text_string_to_metric_families(
        generate_latest(m.registry).decode()) if not f.name.endswith("_created")}
    shown = {n.removesuffix("_total") if n.endswith("_total") else n
             for n in re.findall(r"`(swapd_[a-z0-9_]+)", metrics)}
    # the text format names a counter's family without _total; the doc names its series
    assert not names - shown, names - shown
    used = set(re.findall(r"\b(swapd_[a-z0-9_]+)", alerts))
    known = names | {n + "_total" for n in names} | {n + s for n in names
                                                      for s in ("_bucket", "_count", "_sum")}
    assert used and used <= known, used - known
    stale = load_config(None).plc.stale_after_s
    assert f"swapd_plc_input_age_seconds > {stale:g}" in alerts
    assert "```yaml" in alerts and re.search(r"\bup(\{[^}]*\})? == 0", alerts)
