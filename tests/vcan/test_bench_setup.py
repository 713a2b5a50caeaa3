"""deploy/vcan0.sh on a real kernel (the VM's): it brings up the buses a bench uses, runs
again harmlessly, and two vcan buses are apart (a frame on one never reaches the other)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import can
import pytest

from tests.vcan.support import needs_vcan1

pytestmark = [pytest.mark.vcan, pytest.mark.timeout(120)]

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "vcan0.sh"


def _up(name: str) -> bool:
    flags = Path(f"/sys/class/net/{name}/flags")
    return flags.exists() and int(flags.read_text(), 16) & 0x1 == 1  # IFF_UP


@pytest.mark.skipif(os.geteuid() != 0, reason="deploy/vcan0.sh adds interfaces: needs root")
def test_deploy_script_brings_up_buses() -> None:
    buses = ["vcan5", "vcan6"]  # the tier's own, not the vcan0/vcan1 the VM made
    for _ in range(2):  # a second run finds them there and only brings them up
        r = subprocess.run(["sh", str(SCRIPT), *buses], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split("\n")[:2] == ["vcan5 up", "vcan6 up"], r.stdout
    for name in buses:
        assert _up(name), name
        assert Path(f"/sys/class/net/{name}/type").read_text().strip() == "280"  # ARPHRD_CAN
    with can.Bus(interface="socketcan", channel="vcan5") as a, \
            can.Bus(interface="socketcan", channel="vcan5") as b:
        a.send(can.Message(arbitration_id=0x18FF5056, data=b"\x01\x02"))
        got = b.recv(10)
        assert got is not None and bytes(got.data) == b"\x01\x02"


@needs_vcan1
def test_two_buses_are_apart() -> None:
    """vcan0 and vcan1 (made by the VM, or by `deploy/vcan0.sh vcan0 vcan1` on a bench)."""
    with can.Bus(interface="socketcan", channel="vcan0") as bus0, \
            can.Bus(interface="socketcan", channel="vcan1") as bus1, \
            can.Bus(interface="socketcan", channel="vcan1") as peer1:
        peer1.send(can.Message(arbitration_id=0x18FF5056, data=b"\x11"))
        got = bus1.recv(10)
        assert got is not None and got.channel == "vcan1"
        assert bus0.recv(0.5) is None  # nothing crossed to vcan0
