"""The simulated PLC on the wire: a real pymodbus Modbus TCP server over the mechanics model.

The register map (the contract's Modbus addressing, drivers/plc/regmap.py) lays the
server out: the input block is marked read-only, so pymodbus itself answers a write there
with exception 02 ILLEGAL DATA ADDRESS; addresses outside both blocks are invalid and get
the same exception. Values go to and from the model as raw codes (the register map's
"codes" vocabulary): the model takes every code from the contract. On every request the
model is advanced to now and the input registers are refreshed in place before pymodbus
builds the reply, so a read is never staler than the request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.plc.regmap import RegisterMap
from sim_hw.mechanics import CONTRACT, StationModel

log = logging.getLogger(__name__)

# plc_heartbeat steps every 50 ms (the contract: at least every plc_heartbeat_period_ms)
HEARTBEAT_PERIOD_S = 0.05

# FC3 read holding registers, FC6 write one, FC16 write several: every other function code
# (FC4 input registers included) is answered with exception 01 ILLEGAL FUNCTION
SERVED_FUNCTIONS = frozenset({3, 6, 16})

Clock = Callable[[], tuple[float, float]]
"""Returns (sim seconds, monotonic real seconds) for now."""


class PlcServer:
    def __init__(
        self,
        model: StationModel,
        register_map: RegisterMap,
        clock: Clock,
        host: str = "127.0.0.1",
        port: int = 5020,
    ) -> None:
        if register_map.contract.enums != CONTRACT.enums:
            # The model's codes come from the shipped contract; a map addressing another
            # contract would have the model answer in codes the controller reads differently.
            raise ValueError(f"{register_map.origin}: its contract "
                             f"({register_map.contract.origin}) codes differ from the "
                             "simulator's")
        promised = register_map.contract.timing.plc_heartbeat_period_ms / 1000
        if promised < HEARTBEAT_PERIOD_S:
            raise ValueError(f"plc_heartbeat every {HEARTBEAT_PERIOD_S} s breaks the contract's "
                             f"{promised} s")
        self.model = model
        self.map = register_map
        self.clock = clock
        self.host = host
        self.port = port  # the bound port once started (port 0 = any free port)
        self.requests = 0
        self.dropped = 0
        self.other_unit = 0  # requests for another unit id, left unanswered
        self._paused = False
        self._server: ModbusTcpServer | None = None
        self._real0 = 0.0
        rm = register_map
        self._out_slice = slice(rm.output_start, rm.output_start + rm.output_length)

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Go silent: requests are read and dropped unanswered (a hung PLC, a cut cable)."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    @property
    def silent(self) -> bool:
        """Not answering: paused, or the plc_silent / network_down fault is set."""
        return self._paused or self.model.faults.plc_silent()

    async def start(self) -> None:
        rm = self.map
        device = SimDevice(
            id=rm.unit_id,
            simdata=[
                SimData(rm.input_start, count=rm.input_length, datatype=DataType.REGISTERS,
                        readonly=True),
                SimData(rm.output_start, count=rm.output_length, datatype=DataType.REGISTERS),
            ],
            action=self._action,
        )
        trace = cast(Callable[[bool, ModbusPDU], ModbusPDU], self._trace_pdu)
        self._server = ModbusTcpServer(device, address=(self.host, self.port), trace_pdu=trace)
        self._real0 = self.clock()[1]
        await self._server.serve_forever(background=True)
        listener = cast(asyncio.Server, self._server.transport)
        self.port = int(listener.sockets[0].getsockname()[1])
        log.info("Modbus TCP PLC listening on %s:%d unit %d", self.host, self.port, rm.unit_id)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU | None:
        # A received PDU replaced by None is never handled, so no reply goes out.
        if sending:
            return pdu
        if self.silent:
            self.dropped += 1
            return None
        if pdu.dev_id != self.map.unit_id:
            # The contract: a request for another unit id is not answered at all.
            self.other_unit += 1
            return None
        if pdu.function_code not in SERVED_FUNCTIONS:
            # The contract: exception 01 ILLEGAL FUNCTION wherever it points. Aimed at the
            # first output register so that pymodbus hands it to _action, which refuses it
            # before anything is read or written.
            pdu.address = self.map.output_start
            if not getattr(pdu, "bits", None):
                pdu.count = 1
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
        self.requests += 1
        if function_code not in SERVED_FUNCTIONS:
            return ExcCodes.ILLEGAL_FUNCTION
        now, real = self.clock()
        if set_values is None:
            self.model.advance(now, real)
            self._refresh_inputs(start_address, current_registers, real)
            return None
        # A write: merge it into a copy of the output block and hand that to the model.
        out = list(current_registers[self._out_slice.start - start_address :
                                     self._out_slice.stop - start_address])
        for i, v in enumerate(set_values):
            off = address + i - self.map.output_start
            if 0 <= off < len(out):
                out[off] = int(v)
        values = self.map.decode_block(self.map.output_start, out, "out", enums="codes")
        self.model.set_outputs(values, now, real)
        self._refresh_inputs(start_address, current_registers, real)
        return None

    def _refresh_inputs(self, start_address: int, registers: list[int], real: float) -> None:
        values = self.model.inputs()
        values["plc_heartbeat"] = int((real - self._real0) / HEARTBEAT_PERIOD_S) & 0xFFFF
        block = self.map.encode_block(self.map.input_start, self.map.input_length, values,
                                      enums="codes")
        off = self.map.input_start - start_address
        registers[off : off + len(block)] = block
