"""Run swapd as a real subprocess against an in-process SimStation (Modbus TCP on loopback,
CAN over python-can udp_multicast, which crosses processes), and talk to it with swapctl's
client over its Unix socket."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from station.local_api import request


def multicast_group() -> str:
    return f"239.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"


def write_config(tmp: Path, port: int, group: str, speed: float) -> Path:
    cfg = tmp / "swapd.toml"
    cfg.write_text(
        f'[plc]\nport = {port}\npoll_period_s = 0.01\n'
        f'[can]\ninterface = "udp_multicast"\nchannel = "{group}"\n'
        f'[sequence]\nspeed_factor = {speed}\n'
        f'[journal]\npath = "{tmp / "journal.sqlite"}"\n'
        f'[api]\nsocket = "{tmp / "swapd.sock"}"\nsocket_mode = 0o600\n'
        f'[log]\nformat = "json"\nlevel = "info"\n'
    )
    return cfg


class DaemonProcess:
    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.socket = config.parent / "swapd.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        logf = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "station.cli", "--config", str(self.config)],
            stdout=logf, stderr=logf, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        logf.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    async def status(self, timeout: float = 20.0) -> dict[str, Any]:
        """The daemon's status once its API answers."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                r = await request(self.socket, {"cmd": "status"}, timeout=2.0)
                return dict(r["status"])
            except (TimeoutError, OSError, ConnectionError, ValueError):
                if loop.time() > end:
                    raise
                await asyncio.sleep(0.05)

    async def command(self, word: str) -> dict[str, Any]:
        return await request(self.socket, {"cmd": word}, timeout=5.0)
