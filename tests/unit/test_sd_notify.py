"""sd_notify datagrams reach a socket named by NOTIFY_SOCKET, as systemd's would."""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
from pathlib import Path

import pytest

from station.sd_notify import SystemdNotifier, status_line


def test_ready_watchdog_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "5000000")
    n = SystemdNotifier()
    assert n.watchdog_interval_s == 2.5
    assert n.ready("Idle")
    assert srv.recv(256) == b"READY=1\nSTATUS=Idle"
    assert n.watchdog()
    assert srv.recv(256) == b"WATCHDOG=1"
    srv.close()


def test_no_socket_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert SystemdNotifier().ready() is False


def test_status_line_in_a_swap() -> None:
    st = {"packml_state": "Execute", "step": "LIFT", "reason": None, "swap_id": "S-0012"}
    assert status_line(st, 4) == "Execute, step LIFT; 4 packs ready; swap S-0012"


def test_status_line_idle_and_one_pack() -> None:
    st = {"packml_state": "Idle", "step": None, "reason": None, "swap_id": None}
    assert status_line(st, 5) == "Idle; 5 packs ready"
    assert status_line(st, 1) == "Idle; 1 pack ready"
    assert status_line(st, None) == "Idle"


def test_status_line_aborted_is_one_line() -> None:
    st = {"packml_state": "Aborted", "step": None, "reason": "estop\npressed", "swap_id": None}
    assert status_line(st, 0) == "Aborted: estop pressed; 0 packs ready"


async def test_the_daemon_sends_status_when_it_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """swapd in this process on the simulated station, NOTIFY_SOCKET set as systemd would:
    READY, WATCHDOG and a STATUS line naming the packs ready; a STATUS only when it changed."""
    from station.rig import Rig

    path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a pet and a status every 0.1 s
    got: list[str] = []

    def drain() -> list[str]:
        while True:
            try:
                got.append(srv.recv(4096).decode())
            except BlockingIOError:
                return got

    def statuses() -> list[str]:
        return [m.removeprefix("STATUS=") for m in drain() if m.startswith("STATUS=")]

    try:
        async with Rig(speed=50, vehicles=0, workdir=tmp_path, name="notify",
                       config={"operation": {"auto_start": False}}) as rig:
            await rig.wait_for(lambda: any(re.fullmatch(r"Idle; [1-9]\d* packs? ready", s)
                                           for s in statuses()),
                               timeout=30, what="STATUS=Idle; N packs ready")
            await asyncio.sleep(0.5)  # five more watchdog turns
            drain()
    finally:
        srv.close()
    assert any(m.startswith("READY=1") for m in got)
    assert "WATCHDOG=1" in got
    sent = [m for m in got if m.startswith("STATUS=")]
    assert all(a != b for a, b in itertools.pairwise(sent)), sent
