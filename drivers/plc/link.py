"""The PLC link: what the station core's daemon needs from any PLC protocol.

Modbus TCP (modbus_link.py) and OPC UA implement the same small interface, so the same
test suite runs over both. Inputs arrive through a callback with the monotonic time they
were read, so the core can judge staleness; outputs are desired values, written on change
(and every heartbeat period) by the link's own cycle, or at once with write_now().
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

InputsCallback = Callable[[dict[str, Any], float], None]
"""Called with (decoded input values by signal name, monotonic time of the read reply)."""


@dataclass
class LinkStats:
    polls: int = 0
    poll_errors: int = 0
    writes: int = 0
    write_errors: int = 0
    reconnects: int = 0
    last_error: str | None = None
    exceptions: dict[str, int] = field(default_factory=dict)


class PlcLink(abc.ABC):
    """One connection to the station PLC."""

    def __init__(self) -> None:
        self.on_inputs: InputsCallback | None = None
        self.on_connection: Callable[[bool], None] | None = None
        self.stats = LinkStats()

    @property
    @abc.abstractmethod
    def connected(self) -> bool: ...

    @abc.abstractmethod
    async def run(self) -> None:
        """Connect, then poll inputs and write outputs until cancelled; reconnect with back-off."""

    @abc.abstractmethod
    def set_outputs(self, values: dict[str, Any]) -> None:
        """Merge desired output values (by signal name); written at the next write."""

    @abc.abstractmethod
    async def write_now(self) -> float | None:
        """Write the desired outputs now; return the monotonic time the PLC acknowledged the
        write, or None if it could not be written (the link keeps retrying)."""

    @abc.abstractmethod
    async def close(self) -> None: ...
