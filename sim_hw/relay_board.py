"""A simulated Modbus TCP relay / IO module: the bench's fault relays without the bench.

A pymodbus server (the simulator API, as sim_hw/plc_server.py) with `coils` coils at
addresses 0..coils-1 of one device id (FC1 read coils, FC5 write one, FC15 write several;
any other function is refused with exception 01, an address beyond the board with 02;
a request for another device id is not answered, as the PLC does). A write that changes a
coil calls `on_coil(address, value)` before it is stored: `SimFaultWiring` applies the
fault wired to it on a SimStation in this process (coil on: `faults.set`, off:
`faults.clear`). A fault the simulator refuses is answered with exception 04 SERVER DEVICE
FAILURE and the coil stays as it was.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from sim_hw.faults import FaultError

if TYPE_CHECKING:
    from sim_hw.faults import FaultRegistry

log = logging.getLogger(__name__)

SERVED_FUNCTIONS = frozenset({1, 5, 15})  # read coils, write one coil, write coils
BITS_PER_REGISTER = 16
CoilCallback = Callable[[int, bool], None]


@dataclass(frozen=True)
class Wired:
    """The fault a coil makes when on (as `swap-sim fault set NAME --target --value`)."""

    fault: str
    target: str | int | None = None
    value: float | str | None = None


class SimFaultWiring:
    """Coils wired to the simulator's faults: on -> set, off -> clear."""

    def __init__(self, faults: FaultRegistry, wiring: Mapping[int, Wired | str]) -> None:
        self.faults = faults
        self.wiring = {a: Wired(w) if isinstance(w, str) else w for a, w in wiring.items()}

    def __call__(self, address: int, on: bool) -> None:
        w = self.wiring.get(address)
        if w is None:
            return  # a spare relay: nothing wired to it
        if on:
            self.faults.set(w.fault, w.value, w.target)
        else:
            self.faults.clear(w.fault)


class RelayBoard:
    """The server; `port` 0 takes a free port (known after `start`)."""

    def __init__(self, coils: int = 8, on_coil: CoilCallback | None = None,
                 host: str = "127.0.0.1", port: int = 0, device_id: int = 1) -> None:
        if not 1 <= coils <= 0xFFFF:
            raise ValueError(f"coils {coils}: 1..65535")
        self.coils = coils
        self.on_coil = on_coil
        self.host = host
        self.port = port
        self.device_id = device_id
        self.state = [False] * coils  # what the relays are (the board's truth)
        self.writes = 0
        self.refused = 0
        self._server: ModbusTcpServer | None = None

    async def start(self) -> None:
        registers = (self.coils + BITS_PER_REGISTER - 1) // BITS_PER_REGISTER
        device = SimDevice(
            id=self.device_id,
            simdata=[SimData(0, count=registers, datatype=DataType.BITS)],
            use_bit_addressing=True,  # coil N is bit N % 16 of register N // 16
            action=self._action,
        )
        trace = cast(Callable[[bool, ModbusPDU], ModbusPDU], self._trace_pdu)
        self._server = ModbusTcpServer(device, address=(self.host, self.port), trace_pdu=trace)
        await self._server.serve_forever(background=True)
        listener = cast(asyncio.Server, self._server.transport)
        self.port = int(listener.sockets[0].getsockname()[1])
        log.info("relay board listening on %s:%d device %d, %d coils", self.host, self.port,
                 self.device_id, self.coils)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    async def __aenter__(self) -> RelayBoard:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU | None:
        if sending:
            return pdu
        if pdu.dev_id != self.device_id:
            return None  # another device's request: not answered
        return pdu

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if function_code not in SERVED_FUNCTIONS:
            return ExcCodes.ILLEGAL_FUNCTION
        # a read's `count` here is in registers: only its first coil is checked
        n = len(set_values) if set_values is not None else 1
        if address < 0 or address + n > self.coils:
            return ExcCodes.ILLEGAL_ADDRESS
        if set_values is None:
            return None
        self.writes += 1
        for i, v in enumerate(set_values):
            a, on = address + i, bool(v)
            if self.state[a] == on:
                continue
            if self.on_coil is not None:
                try:
                    self.on_coil(a, on)
                except FaultError as exc:
                    self.refused += 1
                    log.warning("relay board coil %d %s: %s", a, "on" if on else "off", exc)
                    return ExcCodes.DEVICE_FAILURE
            self.state[a] = on
        return None


__all__ = ["RelayBoard", "SimFaultWiring", "Wired"]
