"""The wheel carries every data file the code reads, and deploy/install.sh installs it into
a tree (a staging root: no user, no systemctl) where swapd runs."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("station", "drivers", "sim_hw")
DATA_SUFFIXES = (".dbc", ".toml", ".json")
# what a wheel build and install.sh read from a checkout
SOURCE_PARTS = (*PACKAGES, "pyproject.toml", "README.md", "requirements.lock", "deploy", "docs")


def data_files() -> set[str]:
    """Every data file under the packages, as a wheel names it."""
    return {p.relative_to(ROOT).as_posix() for pkg in PACKAGES
            for p in (ROOT / pkg).rglob("*")
            if p.suffix in DATA_SUFFIXES and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout's parts: a build leaves build/ and *.egg-info behind, not in
    the working tree."""
    src = tmp_path_factory.mktemp("src")
    for part in SOURCE_PARTS:
        if (ROOT / part).is_dir():
            shutil.copytree(ROOT / part, src / part,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / part, src / part)
    return src


def test_the_wheel_has_every_data_file(source: Path, tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(source)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("swapstation-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    wanted = data_files()
    assert {"drivers/bms/dbc/swap_pack.dbc", "drivers/plc/contract.toml"} <= wanted
    assert wanted - names == set()


def run_install(source: Path, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(source / "deploy" / "install.sh"), "--root", str(root),
                          "--no-user", "--no-systemctl", *args],
                         capture_output=True, text=True, env=env, timeout=600, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def test_install_sh_into_a_root_twice(source: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    run_install(source, root)
    swapd = root / "opt/swapd/.venv/bin/swapd"
    res = subprocess.run([str(swapd), "--help"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode == 0, res.stderr
    assert "check-config" in res.stdout
    # the installed package reads its data files from the venv, not from a checkout
    py = root / "opt/swapd/.venv/bin/python"
    res = subprocess.run([str(py), "-c", "import drivers.bms.protocol as p, station.cloud.messages"
                          " as m; print(p.__file__)"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert str(root) in res.stdout
    res = subprocess.run([str(swapd), "check-config", str(ROOT / "deploy" / "swapd.toml")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr

    conf = root / "etc/swapd/swapd.toml"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o640
    assert stat.S_IMODE((root / "etc/swapd").stat().st_mode) == 0o750
    unit = root / "etc/systemd/system/swapd.service"
    assert unit.read_bytes() == (ROOT / "deploy" / "swapd.service").read_bytes()
    assert (root / "etc/systemd/network/80-can0.network").is_file()

    # again, with the wheel given: a site's configuration is kept
    conf.write_text(conf.read_text() + "\n# site edit\n")
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(wheel_dir), str(source)], check=True, timeout=300)
    (wheel,) = wheel_dir.glob("swapstation-*.whl")
    run_install(source, root, "--wheel", str(wheel))
    assert conf.read_text().endswith("# site edit\n")
    assert subprocess.run([str(swapd), "--help"], capture_output=True, timeout=60,
                          check=False).returncode == 0
