"""systemd notify protocol (sd_notify): READY, WATCHDOG, STATUS, STOPPING.

A datagram to $NOTIFY_SOCKET; nothing happens when the daemon does not run under systemd.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any


class SystemdNotifier:
    def __init__(self) -> None:
        addr = os.environ.get("NOTIFY_SOCKET")
        self.addr: str | None = None
        if addr:
            self.addr = "\0" + addr[1:] if addr.startswith("@") else addr
        usec = os.environ.get("WATCHDOG_USEC")
        self.watchdog_interval_s: float | None = int(usec) / 2e6 if usec else None

    def notify(self, state: str) -> bool:
        if not self.addr:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(state.encode(), self.addr)
            return True
        except OSError:
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")


def status_line(status: Mapping[str, Any], packs_ready: int | None) -> str:
    """The STATUS= text `systemctl status swapd` shows: the PackML state, the step of a
    swap under way, why it stopped (if it did), the packs ready to give, the swap's id; e.g.
    "Execute, step LIFT; 4 packs ready; swap S-0012" or "Aborted: estop; 5 packs ready".
    `status` is the core's status (packml_state, step, reason, swap_id); `packs_ready`
    None when the rack is not known yet. One line: a newline would end the assignment."""
    head = str(status.get("packml_state") or "Unknown")
    if status.get("step"):
        head += f", step {status['step']}"
    if status.get("reason"):
        head += f": {status['reason']}"
    parts = [head]
    if packs_ready is not None:
        parts.append(f"{packs_ready} pack{'' if packs_ready == 1 else 's'} ready")
    if status.get("swap_id"):
        parts.append(f"swap {status['swap_id']}")
    return " ".join("; ".join(parts).split())
