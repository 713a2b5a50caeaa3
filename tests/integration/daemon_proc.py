"""Run swapd as a real subprocess against an in-process SimStation (Modbus TCP on loopback,
CAN over python-can udp_multicast, which crosses processes), and talk to it with swapctl's
client over its Unix socket.

The parts live in station.rig (`DaemonProcess`, and `ProcessRig`, which also starts the
simulator); this module keeps the helpers the kill/restart test uses.

On one host a multicast group does not keep two runs apart (python-can binds its port on
all addresses): give the simulator and swapd a port of the run's own, `UdpPortLease().port`
(or the `can_port` fixture), as `CanConfig(udp_port=...)` and `write_config(can_port=...)`."""

from __future__ import annotations

from pathlib import Path

from drivers.bms.canbus import UdpPortLease
from station.config import (
    ApiSection,
    CanSection,
    JournalSection,
    LogSection,
    ModbusSection,
    PlcSection,
    SequenceSection,
    StationConfig,
)
from station.rig import DaemonProcess, multicast_group, write_config_toml

__all__ = ["DaemonProcess", "UdpPortLease", "multicast_group", "write_config"]


def write_config(tmp: Path, port: int, group: str, speed: float, *,
                 can_port: int | None = None) -> Path:
    """tmp/swapd.toml for a daemon on the simulator at `port` and CAN group `group` (UDP
    port `can_port`; None: python-can's default, shared with every other run on the host);
    its journal, operator socket (the one DaemonProcess talks to) in tmp; JSON log."""
    cfg = StationConfig(
        plc=PlcSection(modbus=ModbusSection(port=port, poll_period_s=0.01)),
        can=CanSection(interface="udp_multicast", channel=group, udp_port=can_port),
        sequence=SequenceSection(speed_factor=speed),
        journal=JournalSection(path=tmp / "journal.sqlite"),
        api=ApiSection(socket=tmp / "swapd.sock", socket_mode=0o600),
        log=LogSection(format="json", level="info"),
    )
    return write_config_toml(cfg, tmp / "swapd.toml")
