"""station.rig: the configuration it builds, its artifacts, and a failing test leaving them
in test-artifacts/<test name>/ (or $SWAP_ARTIFACTS)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from station.config import (
    ApiSection,
    CanSection,
    JournalSection,
    LogSection,
    ModbusSection,
    PlcSection,
    SelectionSection,
    SequenceSection,
    StationConfig,
    load_config,
)
from station.rig import (
    ArtifactSession,
    ProcessRig,
    Rig,
    artifact_dir_name,
    bay_and_rack,
    config_toml,
    write_config_toml,
)

CONFTEST = Path(__file__).with_name("conftest.py")

# ---- configuration (no daemon needed) ---------------------------------------------------


def test_config_survives_toml(tmp_path: Path) -> None:
    cfg = StationConfig(
        plc=PlcSection(modbus=ModbusSection(port=15020, poll_period_s=0.01)),
        can=CanSection(interface="udp_multicast", channel="239.1.2.3"),
        sequence=SequenceSection(speed_factor=50.0, lock_torque_nm=(100.0, 140.0),
                                 timeouts={"release": 30.0}),
        selection=SelectionSection(compatible_families={"20": [20, 25]}),
        journal=JournalSection(path=tmp_path / "a dir" / "journal.sqlite"),
        api=ApiSection(socket=tmp_path / "swapd.sock", socket_mode=0o600),
        log=LogSection(format="json", level="info"),
    )
    path = write_config_toml(cfg, tmp_path / "swapd.toml")  # checks the round trip itself
    assert load_config(path) == cfg
    assert "[plc.modbus]" in config_toml(cfg)
    assert load_config(path).plc.modbus == ModbusSection(port=15020, poll_period_s=0.01)


def test_rig_config_and_overrides(tmp_path: Path) -> None:
    rig = Rig(speed=25, vehicles=2, workdir=tmp_path, plc="modbus",
              config={"operation": {"auto_start": False}, "plc": {"modbus": {"timeout_s": 0.5}}},
              sim={"station": {"slots": 5}})
    cfg = rig.build_config(15021)
    modbus = cfg.plc.modbus
    assert modbus is not None and modbus.port == 15021 and modbus.poll_period_s == 0.01
    assert modbus.timeout_s == 0.5
    assert cfg.operation.auto_start is False
    assert cfg.sequence.speed_factor == 25 == rig.sim_config.speed
    assert cfg.can.interface == "virtual" and cfg.can.channel == rig.sim_config.can.channel
    assert cfg.journal.path == tmp_path / "journal.sqlite"
    assert rig.sim_config.vehicles == 2 and rig.sim_config.station.slots == 5
    assert rig.sim_config.modbus.port == 0  # any free port

    def quiet(c: StationConfig) -> StationConfig:
        return c.model_copy(update={"log": LogSection(level="warning")})

    quiet_rig = Rig(speed=5, workdir=tmp_path, plc="modbus", config=quiet)
    assert quiet_rig.build_config(1).log.level == "warning"
    default_rig = Rig(workdir=tmp_path, poll_period_s=None, plc="modbus")
    default_poll = default_rig.build_config(1).plc.modbus
    assert default_poll is not None and default_poll.poll_period_s == ModbusSection().poll_period_s
    mc = Rig(workdir=tmp_path, can="udp_multicast")
    assert mc.channel.startswith("239.") and mc.sim_config.can.interface == "udp_multicast"


def test_rig_refuses_two_speeds_and_unknown_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="speed"):
        Rig(speed=10, workdir=tmp_path, config={"sequence": {"speed_factor": 20}}).build_config(1)
    with pytest.raises(ValueError, match="speed"):
        Rig(speed=10, workdir=tmp_path, sim={"speed": 20})
    with pytest.raises(KeyError, match="auto_stat"):
        Rig(workdir=tmp_path, config={"operation": {"auto_stat": False}}).build_config(1)
    with pytest.raises(ValueError):  # validated like a file
        Rig(workdir=tmp_path, plc="modbus", config={"plc": {"modbus": {"port": 0}}}).build_config(1)


def test_artifact_dir_names() -> None:
    assert artifact_dir_name("test_x[estop-lift]") == "test_x[estop-lift]"
    assert artifact_dir_name("test_y[a/b c]") == "test_y[a_b_c]"


class FakeRig:
    def __init__(self) -> None:
        self.saved: list[Path] = []

    def save_artifacts(self, dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "x").write_text("x")
        self.saved.append(dest)
        return dest


def test_artifact_session_saves_only_a_failed_test(tmp_path: Path) -> None:
    cleaned: list[int] = []
    ok = ArtifactSession(tmp_path / "ok")
    ok.rigs.append(FakeRig())  # type: ignore[arg-type]
    ok.defer_cleanup(lambda: cleaned.append(1))
    assert ok.finish() is None and not (tmp_path / "ok").exists() and cleaned == [1]

    bad = ArtifactSession(tmp_path / "bad")
    one = FakeRig()
    bad.rigs.append(one)  # type: ignore[arg-type]
    bad.mark_failed("call: assert 1 == 2")
    assert bad.finish() == tmp_path / "bad"
    assert one.saved == [tmp_path / "bad"]
    assert "assert 1 == 2" in (tmp_path / "bad" / "failure.txt").read_text()

    many = ArtifactSession(tmp_path / "many")
    rigs = [FakeRig() for _ in range(12)]
    many.rigs.extend(rigs)  # type: ignore[arg-type]
    many.mark_failed()
    many.finish()
    assert not rigs[0].saved and not rigs[1].saved
    assert rigs[2].saved == [tmp_path / "many" / "rig-03"]
    assert rigs[11].saved == [tmp_path / "many" / "rig-12"]


# ---- with the daemon ------------------------------------------------------------------


def check_artifacts(dest: Path, *, events: bool = True) -> dict[str, Any]:
    db = sqlite3.connect(dest / "journal.sqlite")
    try:
        kinds = {r[0] for r in db.execute("SELECT kind FROM events")}
    finally:
        db.close()
    assert "swap_started" in kinds, kinds
    sim = json.loads((dest / "sim-state.json").read_text())
    assert {"truth", "violations", "command_log", "faults_active", "recent_events"} <= sim.keys()
    assert sim["command_log"] and sim["violations"] == []
    daemon = json.loads((dest / "daemon.json").read_text())
    assert daemon["config"]["sequence"]["speed_factor"] == 100.0
    log = [json.loads(line) for line in (dest / "swapd.log.jsonl").read_text().splitlines()]
    assert any(r["event"] == "swapd.start" for r in log), log[:5]
    assert all({"level", "logger", "timestamp"} <= r.keys() for r in log)
    if events:
        kinds_seen = [json.loads(line)["kind"]
                      for line in (dest / "events.jsonl").read_text().splitlines()]
        assert "swap_started" in kinds_seen
    return daemon


async def test_rig_runs_a_swap_and_saves_its_artifacts(tmp_path: Path) -> None:
    seen: list[str] = []
    async with Rig(speed=100, vehicles=1, workdir=tmp_path / "run", capture_log=True,
                   observer=lambda ev: seen.append(ev.kind)) as rig:
        await rig.wait_for(lambda: len(rig.ended()) >= 1, timeout=60, what="one swap")
        assert rig.ended()[0]["outcome"] == "completed", rig.ended()
        live = check_artifacts(rig.save_artifacts(tmp_path / "live"))
        assert live["running"] is True
        with pytest.raises(AssertionError, match=r"timed out after 0\.2 s waiting for never"):
            await rig.wait_for(lambda: False, timeout=0.2, what="never")
    assert "swap_ended" in seen and seen == [ev.kind for ev in rig.events]
    after = check_artifacts(rig.save_artifacts(tmp_path / "after"))
    assert after["running"] is False and after["status"]["packml_state"]
    sim = json.loads((tmp_path / "after" / "sim-state.json").read_text())
    assert any(v.get("pack_in") for v in sim["truth"]["history"])


async def test_process_rig_runs_swapd_and_saves_its_artifacts(tmp_path: Path) -> None:
    async with ProcessRig(speed=100, vehicles=1, workdir=tmp_path / "run") as rig:
        status = await rig.daemon.status()
        assert status["packml_state"], status
        await rig.wait_for(lambda: "swap_ended" in rig.daemon.log.read_text(),
                           timeout=60, what="one swap", poll=0.1)
        dest = rig.save_artifacts(tmp_path / "live")
    check_artifacts(dest, events=False)
    assert load_config(dest / "swapd.toml") == rig.config


INNER_TESTS = '''
import pytest


@pytest.mark.parametrize("station", [{"vehicles": 1, "speed": 100}], indirect=True)
async def test_fails_mid_swap(station):
    await station.wait_for(lambda: len(station.sim.command_log) >= 2, timeout=60)
    assert station.ended() == ["inner failure on purpose"]


@pytest.mark.parametrize("station", [{"vehicles": 1, "speed": 100}], indirect=True)
async def test_passes(station):
    await station.wait_for(lambda: bool(station.events), timeout=60)
'''

INNER_INI = """[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
asyncio_default_test_loop_scope = function
"""


def run_inner(inner: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *args], cwd=inner, env=env, capture_output=True, text=True,
                          timeout=240)


def test_a_failing_test_leaves_its_artifacts(tmp_path: Path) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "conftest.py").write_text(CONFTEST.read_text())  # the hook under test
    (inner / "pytest.ini").write_text(INNER_INI)
    (inner / "test_inner.py").write_text(INNER_TESTS)
    env = {k: v for k, v in os.environ.items() if k != "SWAP_ARTIFACTS"}

    art = tmp_path / "artifacts"
    # the station fixture runs over both PLC protocols; one is enough here
    r = run_inner(inner, {**env, "SWAP_ARTIFACTS": str(art)}, "-k", "modbus")
    assert r.returncode == 1 and "1 failed, 1 passed" in r.stdout, r.stdout + r.stderr
    assert f"saved to {art}" in r.stdout, r.stdout
    dest = art / "test_fails_mid_swap[modbus-station0]"
    assert sorted(p.name for p in art.iterdir()) == [dest.name]  # the passing test left none
    assert {"journal.sqlite", "sim-state.json", "daemon.json", "events.jsonl",
            "swapd.log.jsonl", "failure.txt"} <= {p.name for p in dest.iterdir()}
    assert "inner failure on purpose" in (dest / "failure.txt").read_text()
    sim = json.loads((dest / "sim-state.json").read_text())
    assert sim["command_log"], sim.keys()
    log = (dest / "swapd.log.jsonl").read_text().splitlines()
    assert log and all(json.loads(line)["logger"] for line in log)
    db = sqlite3.connect(dest / "journal.sqlite")
    try:
        assert db.execute("SELECT count(*) FROM steps").fetchone()[0] >= 1
    finally:
        db.close()

    # without $SWAP_ARTIFACTS: test-artifacts/ under the rootdir
    r = run_inner(inner, env, "-k", "fails and modbus")
    assert r.returncode == 1, r.stdout + r.stderr
    assert (inner / "test-artifacts" / "test_fails_mid_swap[modbus-station0]" /
            "daemon.json").exists()


def test_a_bus_layout_fits_the_station_the_overrides_make(tmp_path: Path) -> None:
    """The layout is checked against the simulator's slots after the overrides: 23 slots on
    two buses (the default station has 13, so checking before the overrides refused it)."""
    rig = Rig(workdir=tmp_path, plc="modbus", can_buses=bay_and_rack(23),
              sim={"station": {"slots": 23}})
    cfg = rig.sim_config
    assert cfg.station.slots == 23
    assert [b.name for b in cfg.can.buses] == ["bay", "rack"]
    assert cfg.can.buses[1].locations == ["slot:1-23"]
