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


NOISE_SCRIPT = """
import asyncio, gc, logging, sys, threading, time, warnings
from drivers.plc.registry import create_link
from station.config import ModbusSection, PlcSection
from station.logs import configure_logging

configure_logging(sys.argv[1], "json")
replies = 0

async def bad_plc(reader, writer):
    # answers the first request with a short, malformed frame and hangs up
    global replies
    await reader.read(300)
    replies += 1
    writer.write(bytes([0, 1, 0, 0, 0, 5, 1, 3, 2]) + b"\\xff" * 30)
    await writer.drain()
    writer.close()

class Leaky:
    def __del__(self):
        raise ValueError("raised in __del__")

async def main() -> None:
    srv = await asyncio.start_server(bad_plc, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    link = create_link(PlcSection(modbus=ModbusSection(port=port, timeout_s=0.2)),
                       clock=time.monotonic)
    link.backoff_min = link.backoff_max = 0.01
    task = asyncio.create_task(link.run())

    async def boom():
        raise RuntimeError("unhandled in a task")

    for _ in range(50):  # a library that babbles: the same lines, many times
        asyncio.create_task(boom())
        asyncio.get_running_loop().call_soon(lambda: 1 / 0)
        logging.getLogger("pymodbus.logging").error(
            "ERROR: request ask for transaction_id=%d but got id=%d, Skipping."
            "\\n>>>>> send: 0x0 0x1\\n>>>>> recv: 0x0 0x2" % (_, _ + 1))
        await asyncio.sleep(0.01)
    logging.getLogger("pymodbus.logging").debug("send: 0x0 0x1 0x0 0x0 (a frame dump)")
    logging.getLogger("pymodbus.logging").warning("bad %d format", "args")
    warnings.warn("a library warning", DeprecationWarning)
    threading.Thread(target=lambda: 1 / 0, name="worker").start()
    Leaky()
    gc.collect()
    await asyncio.sleep(0.3)
    task.cancel()
    srv.close()
    assert replies >= 1

asyncio.run(main())
"""


@pytest.mark.parametrize("level", ["info", "debug"])
def test_library_noise_is_json_and_rate_limited(level: str) -> None:
    """pymodbus against a PLC that sends garbage and hangs up, asyncio with unhandled task
    and callback errors, a warning, an exception in a thread and one in __del__: every
    line on stderr is one JSON object, library lines repeated 50 times come out a few times
    with a count of the rest, and pymodbus's frame dumps stay out even at debug."""
    r = subprocess.run([sys.executable, "-c", NOISE_SCRIPT, level],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    records = json_lines(r.stderr)
    by_event: dict[str, list[dict]] = {}
    for rec in records:
        by_event.setdefault(f"{rec['logger']}: {rec['event']}", []).append(rec)
    skipping = [rec for rec in records if rec["event"].startswith("ERROR: request ask for")]
    assert 1 <= len(skipping) <= 5, skipping  # 50 over ~0.6 s, one a second at most
    assert sum(rec.get("suppressed", 0) for rec in skipping) + len(skipping) <= 50
    assert all(">>>>>" not in rec["event"] for rec in records)  # frames in their own field
    assert any(rec.get("frames") for rec in skipping), skipping
    unhandled = [rec for rec in records if rec["logger"] == "asyncio"]
    assert 1 <= len(unhandled) <= 10, unhandled
    assert any("unhandled in a task" in rec.get("exception", "") for rec in unhandled)
    assert not any("frame dump" in rec["event"] for rec in records)  # pymodbus debug: off
    assert any("bad" in rec["event"] and rec["level"] == "warning" for rec in records)
    assert any(rec["logger"] == "py.warnings" for rec in records)
    thread = [rec for rec in records if "worker" in rec["event"]]
    assert thread and "ZeroDivisionError" in thread[0]["exception"], records
    assert any("raised in __del__" in rec.get("exception", "") for rec in records), records
