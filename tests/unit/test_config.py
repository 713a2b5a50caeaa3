"""Configuration: defaults run the simulated station; a bad file names the key and the problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from station.config import ConfigError, StationConfig, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_and_example_files_load() -> None:
    plc = StationConfig().plc
    assert plc.protocol == "modbus" and plc.link_section().port == 5020  # type: ignore[attr-defined]
    cfg = load_config(ROOT / "deploy" / "swapd.toml")
    assert cfg.can.interface == "udp_multicast"
    assert cfg.chemistry["sodium_ion"].charge_temp_min_c < 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[plc.modbus]\nport = "five"\n', "plc.modbus.port: Input should be a valid integer"),
        ("[plc]\nprot = 502\n", "plc.prot: unknown key"),
        ("[plc.modbus]\nprot = 502\n", "plc.modbus.prot: unknown key"),
        ("[plc]\nport = 502\n", "'port' is a key of protocol 'modbus': it belongs in "
         "[plc.modbus]"),
        ('[plc]\nprotocol = "profinet"\n', "plc.protocol: Input should be 'modbus'"),
        ("[sequence.timeouts]\nlfit = 30\n", "timeouts.lfit: no such step"),
        ("[sequence.timeouts]\nlift = 0\n", "timeouts.lift: 0"),
        ("[charging]\nstation_power_cap_kw = -5\n", "charging.station_power_cap_kw"),
        ("[can]\nidentity_timeout_s = 3\n", "can.identity_timeout_s: unknown key"),
        ("[plc]\nstale_after_s = inf\n", "plc.stale_after_s: Input should be a finite number"),
        ("[pack_safety]\nmin_insulation_kohm = nan\n", "Input should be a finite number"),
        ("[api]\nsocket_mode = 0o666\n", "world-writable"),
        ("[can]\ninterface = \"pcan\"\n", "can.interface: Input should be"),
        ("[sequence]\nlock_torque_nm = [130, 110]\n", "lock_torque_nm: lower bound"),
        ("[selection]\nmin_soc_pct = 120\n", "selection.min_soc_pct"),
        ("[plc\nport = 1\n", "not valid TOML"),
    ],
)
def test_bad_file_names_key_and_problem(tmp_path: Path, text: str, expected: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(f)
    assert expected in str(exc.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "nope.toml")


def _swapd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "station.cli", *args], capture_output=True,
                          text=True, timeout=60)


def test_daemon_refuses_to_start_on_bad_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[plc.modbus]\nport = 70000\nbogus = true\n")
    r = _swapd("--config", str(f))
    assert r.returncode == 2
    assert "plc.modbus.port" in r.stderr and "plc.modbus.bogus: unknown key" in r.stderr
    r = _swapd("--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "not found" in r.stderr


def test_step_timeouts_default_from_the_step_rows_and_override_by_name() -> None:
    from station.config import SequenceSection
    from station.sequence import STEPS_BY_NAME

    seq = SequenceSection(timeouts={"lift": 12.0})
    assert seq.timeout("lift") == 12.0
    assert seq.timeout("release") == STEPS_BY_NAME["release"].timeout_s


def test_a_section_or_key_of_another_protocol_is_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from station import config

    class OtherSection(config.ModbusSection):
        endpoint: str = "opc.tcp://plc:4840"

    monkeypatch.setitem(config.PLC_PROTOCOL_SECTIONS, "other", OtherSection)
    with pytest.raises(ValueError, match=r"section of protocol 'other', but plc\.protocol is "
                                         r"'modbus'"):
        StationConfig.model_validate({"plc": {"protocol": "modbus", "other": {}}})
    with pytest.raises(ValueError, match="'endpoint' is a key of protocol 'other'"):
        StationConfig.model_validate({"plc": {"endpoint": "opc.tcp://x:4840"}})


def test_a_broken_contract_or_dbc_file_stops_the_daemon(tmp_path: Path) -> None:
    bad_map = tmp_path / "map.toml"
    bad_map.write_text("[device]\nunit_id = 1\n")
    f = tmp_path / "swapd.toml"
    f.write_text(f'[plc.modbus]\nregister_map = "{bad_map}"\n')
    r = _swapd("check-config", str(f))
    assert r.returncode == 2 and "[plc]" in r.stderr and "map.toml" in r.stderr
    bad_dbc = tmp_path / "bad.dbc"
    bad_dbc.write_text("VERSION \"x\"\nBO_ nonsense\n")
    f.write_text(f'[can]\ndbc = "{bad_dbc}"\n')
    r = _swapd("--config", str(f))
    assert r.returncode == 2 and "[can] dbc" in r.stderr
