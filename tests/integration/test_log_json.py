"""With `[log] format = "json"`, every line swapd writes on stderr is one JSON object, the
lines of the libraries it uses (pymodbus failing to reach the PLC) included."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

RUN_S = 3.0
KEYS = {"level", "logger", "timestamp", "event"}


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback port bound but not listening: connections are refused, and no other
    process can take the port while the test runs."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    try:
        yield int(s.getsockname()[1])
    finally:
        s.close()


def json_lines(stderr: str) -> list[dict]:
    records = []
    for n, line in enumerate(stderr.splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except ValueError:
            pytest.fail(f"stderr line {n} is not JSON: {line!r}\n--- stderr:\n{stderr}")
        assert isinstance(r, dict), line
        assert r.keys() >= KEYS, f"line {n} lacks {KEYS - r.keys()}: {line}"
        records.append(r)
    return records


def run_for(argv: list[str], seconds: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(seconds)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def test_swapd_stderr_is_json_only_with_the_plc_unreachable(
        tmp_path: Path, dead_port: int) -> None:
    cfg = tmp_path / "swapd.toml"
    cfg.write_text(
        '[plc]\nprotocol = "modbus"\n'
        f'[plc.modbus]\nhost = "127.0.0.1"\nport = {dead_port}\npoll_period_s = 0.02\n'
        'timeout_s = 0.2\n'
        f'[can]\ninterface = "virtual"\nchannel = "logjson-{uuid.uuid4().hex[:8]}"\n'
        f'[journal]\npath = "{tmp_path / "journal.sqlite"}"\n'
        '[log]\nformat = "json"\nlevel = "info"\n'
    )
    swapd = Path(sys.executable).parent / "swapd"
    r = run_for([str(swapd), "--config", str(cfg)], RUN_S)
    records = json_lines(r.stderr)
    loggers = {rec["logger"] for rec in records}
    assert any(name.startswith("pymodbus") for name in loggers), (loggers, r.stderr)
    assert "swapd" in loggers, loggers
    assert not any(rec["event"] == "swapd.crashed" for rec in records), r.stderr


LINK_SCRIPT = """
import asyncio, sys, time
from drivers.plc.registry import create_link
from station.config import ModbusSection, PlcSection
from station.logs import configure_logging

configure_logging("info", "json")

async def main() -> None:
    plc = PlcSection(modbus=ModbusSection(port=int(sys.argv[1]), timeout_s=0.2))
    link = create_link(plc, clock=time.monotonic)
    task = asyncio.create_task(link.run())
    await asyncio.sleep(1.5)
    task.cancel()

asyncio.run(main())
"""


def test_plc_link_process_stderr_is_json_only(dead_port: int) -> None:
    """The same with the Modbus link alone (independent of the daemon's wiring)."""
    r = subprocess.run([sys.executable, "-c", LINK_SCRIPT, str(dead_port)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    records = json_lines(r.stderr)
    modbus = [rec for rec in records if rec["logger"].startswith("pymodbus")]
    assert modbus, r.stderr
    assert any("Failed to connect" in rec["event"] for rec in modbus), modbus
