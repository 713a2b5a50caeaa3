"""Configuration: defaults run the simulated station; a bad file names the key and the problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from station.config import ConfigError, StationConfig, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_and_example_files_load() -> None:
    assert StationConfig().plc.port == 5020
    cfg = load_config(ROOT / "deploy" / "swapd.toml")
    assert cfg.can.interface == "udp_multicast"
    assert cfg.chemistry["sodium_ion"].charge_temp_min_c < 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[plc]\nport = "five"\n', "plc.port: Input should be a valid integer"),
        ("[plc]\nprot = 502\n", "plc.prot: unknown key"),
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
    f.write_text("[plc]\nport = 70000\nbogus = true\n")
    r = _swapd("--config", str(f))
    assert r.returncode == 2
    assert "plc.port" in r.stderr and "plc.bogus: unknown key" in r.stderr
    r = _swapd("--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "not found" in r.stderr
