"""What the vcan tests and their conftest share."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest


def native_vcan() -> bool:
    """This kernel runs SocketCAN and has vcan0 up (inside the VM, or a bench)."""
    if not Path("/sys/class/net/vcan0").exists() or not hasattr(socket, "AF_CAN"):
        return False
    try:
        with socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW) as s:
            s.bind(("vcan0",))
    except OSError:
        return False
    return True


# The VM makes vcan0 and vcan1; a bench may have made only vcan0 (deploy/vcan0.sh).
needs_vcan1 = pytest.mark.skipif(
    native_vcan() and not Path("/sys/class/net/vcan1").exists(),
    reason="needs vcan1 too: deploy/vcan0.sh vcan0 vcan1")
