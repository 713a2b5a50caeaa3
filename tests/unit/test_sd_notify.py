"""sd_notify datagrams reach a socket named by NOTIFY_SOCKET, as systemd's would."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from station.sd_notify import SystemdNotifier


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
