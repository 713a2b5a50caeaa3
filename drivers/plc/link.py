"""The PLC link: what the station daemon needs from any PLC protocol.

Modbus TCP (modbus_link.py) and OPC UA implement the same small interface, so one test
suite (tests/integration/test_plc_links.py) runs over every implementation. The link
speaks the PLC contract's vocabulary (drivers/plc/contract.toml): signals by contract
name, enumerated signals by value name (`cmd_status` "busy", `cmd_code` "LIFT",
`stop_request` "cat1"); where the signals live on the wire is the implementation's own
business. Inputs arrive through a callback with the monotonic time they were read, so the
core can judge staleness; outputs are desired values, written on change (and every
heartbeat period) by the link's own cycle, or at once with write_now().

Implementations are found by protocol name in drivers/plc/registry.py and built with
`from_config`. Each method below says in which station (PackML) states the daemon uses it.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from pydantic import BaseModel

    from drivers.plc.contract import PlcContract
    from station.config import PlcSection

HEARTBEAT = "ctrl_heartbeat"  # the output signal every link owns and keeps counting

InputsCallback = Callable[[dict[str, Any], float], None]
"""Called with (decoded input values by contract signal name, monotonic time of the read)."""

Clock = Callable[[], float]
"""Monotonic seconds; stamps reads and write acknowledgements."""


class OutputBlock:
    """The outputs a link writes: the desired values (contract vocabulary) and the
    heartbeat it owns. `version` counts changes, `acked_version` is the version the PLC
    last acknowledged; the heartbeat counts up once per period, when it falls due.

    `is_output(name)` says whether a name is an output signal; `check(values)` raises
    ValueError naming the signal for a value the wire cannot carry."""

    def __init__(self, is_output: Callable[[str], bool],
                 check: Callable[[dict[str, Any]], object], heartbeat_period: float) -> None:
        self._is_output = is_output
        self._check = check
        self.heartbeat_period = heartbeat_period
        self.desired: dict[str, Any] = {}
        self.version = 0
        self.acked_version = -1
        self.heartbeat = 0
        self.heartbeat_due = float("-inf")

    def merge(self, values: dict[str, Any]) -> bool:
        """Merge desired outputs; ValueError for an unknown or input signal, the heartbeat,
        or a bad value, before anything is kept. True if the outputs changed."""
        for name in values:
            if not self._is_output(name):
                raise ValueError(f"{name} is not an output signal of the PLC contract")
            if name == HEARTBEAT:
                raise ValueError(f"{HEARTBEAT} is written by the link itself")
        merged = {**self.desired, **values}
        self._check(merged)  # a bad value fails in the caller, not in the link's cycle
        if merged == self.desired:
            return False
        self.desired = merged
        self.version += 1
        return True

    def due(self, now: float) -> bool:
        """Something to write: a change the PLC has not acknowledged, or the heartbeat."""
        return self.acked_version != self.version or now >= self.heartbeat_due

    def take(self, now: float) -> tuple[int, dict[str, Any]]:
        """The block to write now, heartbeat included (counted up if due), and its
        version, to hand to `acked` once the PLC acknowledged it."""
        if now >= self.heartbeat_due:
            self.heartbeat = (self.heartbeat + 1) & 0xFFFF
            self.heartbeat_due = now + self.heartbeat_period
        return self.version, {**self.desired, HEARTBEAT: self.heartbeat}

    def acked(self, version: int) -> None:
        self.acked_version = version

    def resend(self) -> None:
        """A new connection: the PLC may have restarted, the whole block goes again now."""
        self.acked_version = -1
        self.heartbeat_due = float("-inf")


@dataclass
class LinkStats:
    polls: int = 0
    poll_errors: int = 0
    writes: int = 0
    write_errors: int = 0
    reconnects: int = 0
    last_error: str | None = None
    # the last good read's request-to-reply time, seconds (None: not measured: a link whose
    # PLC pushes its inputs, OPC UA)
    round_trip_s: float | None = None
    exceptions: dict[str, int] = field(default_factory=dict)  # protocol error replies by name


class PlcLink(abc.ABC):
    """One connection to the station PLC.

    Callbacks, set by the daemon before run():
    - `on_inputs(values, t)`: every good read of the inputs, in every station state (the
      interlocks and the staleness check judge the PLC in all of them, Stopped and Aborted
      included; Execute also completes steps on them, and a restart's recovery in Held
      reads the machine back from them). Every input signal of the contract, decoded;
      `t` is the monotonic time the reply arrived. A failed read delivers nothing: the
      inputs age and the core treats them as stale. An exception raised here ends run().
    - `on_connection(up)`: each change of the connection, in every state; a lost link makes
      the inputs stale (Holding / Aborting from Execute).
    """

    def __init__(self) -> None:
        self.on_inputs: InputsCallback | None = None
        self.on_connection: Callable[[bool], None] | None = None
        self.stats = LinkStats()

    @classmethod
    @abc.abstractmethod
    def from_config(
        cls, plc: PlcSection, section: BaseModel, contract: PlcContract, clock: Clock
    ) -> Self:
        """Build the link from the `[plc]` section, its protocol's own section
        (`plc.link_section()`, e.g. `[plc.modbus]`) and the loaded contract; its addressing
        file is the section's business. Every period and timeout comes from the sections.

        Used once at daemon start-up, before any station state (registry.create_link)."""

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """True while the link holds a working connection. Read in every state (status)."""

    @abc.abstractmethod
    async def run(self) -> None:
        """Connect, then poll inputs and write outputs until close(); reconnect with
        back-off. Keeps `ctrl_heartbeat` going, which it owns, only while it runs.

        Started at daemon start-up and running in every station state, from Stopped
        through Execute to Aborted: the PLC is supervised and its heartbeat kept whatever
        the state."""

    @abc.abstractmethod
    def set_outputs(self, values: dict[str, Any]) -> None:
        """Merge desired output values (contract signal name -> value; enumerated signals by
        value name) and write them at the link's next write. Raises ValueError, naming the
        signal, for an unknown or input signal, `ctrl_heartbeat`, an unknown value name or
        a value out of range, so a bad output fails in the caller.

        Used in every state whose decision changes an output: Execute (cmd_code, params and
        a new cmd_seq for each step), Stopping, Holding, Aborting (stop_request cat2 or
        cat1), Resetting, Unholding, Clearing (stop_request none), and Held after a restart
        (stop_request cat2)."""

    @abc.abstractmethod
    async def write_now(self) -> float | None:
        """Write the desired outputs now; return the monotonic time the PLC acknowledged
        the write, or None if it could not be written (not connected, error reply, timeout;
        the link's cycle keeps retrying).

        Used in Execute for every new command (the acknowledgement time is journaled as the
        moment the step was commanded), and in Stopping, Holding and Aborting when the stop
        request rises (it goes out before the journal's fsync)."""

    @abc.abstractmethod
    async def probe(self) -> list[str]:
        """Connect once, check that every signal of the addressing is there as the file
        says (exists, its type, readable), read the inputs once and disconnect, writing
        nothing. One line per problem, naming the signal and its address; [] when all is
        well. Raises ConnectionError (naming the endpoint and why) when no connection can
        be made. Used by `swapd check-config --probe`, never while run() runs."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop run() and drop the connection. Used at daemon shutdown, from any state."""
