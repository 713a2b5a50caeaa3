"""The whole simulated station: mechanics model + PLC (Modbus TCP or OPC UA) + CAN packs on
one clock."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any

from pydantic import TypeAdapter, ValidationError

from drivers.bms.protocol import VEHICLE_PACK_SA, PackProtocol
from drivers.plc.nodemap import NodeMap, load_node_map
from drivers.plc.regmap import RegisterMap, load_register_map
from sim_hw.can_packs import CanPacks
from sim_hw.clock import SimClock
from sim_hw.config import SimConfig, SimVin
from sim_hw.control import ControlServer
from sim_hw.faults import FaultRegistry
from sim_hw.mechanics import CommandRecord, SimEvent, StationModel
from sim_hw.observer import Observer
from sim_hw.opcua_server import OpcUaPlcServer
from sim_hw.plc_server import PlcServer

log = logging.getLogger(__name__)

TICK_S = 0.01  # real seconds between model advances (the PLC's scan cycle)
_KEEP: Any = object()
_VIN = TypeAdapter(SimVin)


class SimStation:
    """Start it, point a controller at `plc_port` (`modbus_port`, or `opcua_endpoint`) and
    the CAN channel, read `truth()`."""

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        register_map: RegisterMap | None = None,
        node_map: NodeMap | None = None,
        protocol: PackProtocol | None = None,
    ) -> None:
        self.config = config or SimConfig()
        self.register_map = register_map or load_register_map()
        self.clock = SimClock(self.config.speed)
        self.model = StationModel(self.config)
        self.model.on_event = self._on_event
        self.node_map: NodeMap | None = None
        self.plc: PlcServer | OpcUaPlcServer
        if self.config.plc_protocol == "opcua":
            ua = self.config.opcua
            self.node_map = node_map or load_node_map(ua.node_map)
            self.plc = OpcUaPlcServer(self.model, self.node_map, self.clock.now, ua)
            # a fault's effect on the nodes (a bad status, a String) shows the moment it
            # is set or cleared
            self.model.faults.changed = self.plc.refresh
        else:
            self.plc = PlcServer(self.model, self.register_map, self.clock.now,
                                 self.config.modbus.host, self.config.modbus.port)
        self.can = CanPacks(self.model, self.config.can, protocol,
                            real_clock=self.clock.real_clock)
        self.events: deque[SimEvent] = deque(maxlen=2000)  # recent events, for tests
        self.control: ControlServer | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self.model.faults.sync = self.sync  # a fault takes effect at the moment it is set
        self._listeners: list[Callable[[SimEvent], None]] = []

    @property
    def plc_protocol(self) -> str:
        """"modbus" or "opcua"."""
        return self.config.plc_protocol

    @property
    def plc_port(self) -> int:
        """The PLC's bound TCP port (Modbus, or the OPC UA endpoint's)."""
        return self.plc.port

    @property
    def modbus_port(self) -> int:
        """The Modbus server's bound port; RuntimeError when the PLC speaks OPC UA."""
        if not isinstance(self.plc, PlcServer):
            raise RuntimeError("this simulator's PLC speaks OPC UA: see opcua_endpoint")
        return self.plc.port

    @property
    def opcua_endpoint(self) -> str:
        """opc.tcp://host:port/path of the OPC UA PLC; RuntimeError for a Modbus PLC."""
        if not isinstance(self.plc, OpcUaPlcServer):
            raise RuntimeError("this simulator's PLC speaks Modbus: see modbus_port")
        return self.plc.endpoint

    @property
    def command_log(self) -> list[CommandRecord]:
        return self.model.command_log

    @property
    def faults(self) -> FaultRegistry:
        """Fault injection: set(name, value=None, target=None), clear(name), clear_all(), list()."""
        return self.model.faults

    @property
    def observer(self) -> Observer:
        """The independent safety observer: `violations` (list of dicts), clear()."""
        return self.model.observer

    def now(self) -> float:
        """Simulated seconds since start()."""
        return self.clock.sim()

    def sync(self) -> None:
        """Bring the model to the present (while running; a no-op before start); an OPC UA
        PLC's input nodes too."""
        if self._tick_task is not None:
            self.model.advance(*self.clock.now())
            if isinstance(self.plc, OpcUaPlcServer):
                self.plc.refresh()

    def manual_home(self) -> dict[str, Any]:
        """A technician's homing with the hand pendant, outside the controller (see
        StationModel.manual_home): the car lowered, the bay's pack bolted, packs off the
        shuttle and the stacker put back where they belong. Returns what was done; raises
        ValueError when it cannot be done now (a command running, no free slot)."""
        self.model.advance(*self.clock.now())
        return self.model.manual_home()

    def release_arrivals(self) -> None:
        """Let cars come ([sim] hold_arrivals): the arrivals' times count from now."""
        self.model.advance(*self.clock.now())
        self.model.vehicles.release(self.now())

    def vehicle_vin(self, *, send: bool | None = None, source_address: Any = _KEEP,
                    vin: str | None = None) -> dict[str, Any]:
        """The cars' Vehicle Identification (VIN in a BAM): turn it on or off (`send`), send
        it from another address (`source_address`, None: the bay's 0xF4 again), or change
        the VIN of the car on the platform (`vin`). Returns the state after the change;
        raises ValueError for a bad value or a VIN with no car to give it to."""
        if send is not None and not isinstance(send, bool):
            raise ValueError(f"send must be true or false, not {send!r}")
        if source_address is not _KEEP and source_address is not None and (
                isinstance(source_address, bool) or not isinstance(source_address, int)
                or not 0 <= source_address <= 0xFD):
            raise ValueError(f"source_address must be 0..253 or null, not {source_address!r}")
        if vin is not None:
            try:
                vin = _VIN.validate_python(vin)
            except ValidationError:
                raise ValueError(f"vin {vin!r}: 17 printable ASCII characters but '*'") \
                    from None
            self.sync()
            if self.model.vehicle is None:
                raise ValueError("no car on the platform to give the VIN to")
            self.model.vehicle.vin = vin
        can = self.can
        if send is not None:
            can.vin_send = send
        if source_address is not _KEEP:
            can.vin_source = VEHICLE_PACK_SA if source_address is None else source_address
        if send or vin is not None or source_address is not _KEEP:
            can.vehicle_arrived()  # send now, with what changed
        v = self.model.vehicle
        return {"send": can.vin_send, "source_address": can.vin_source,
                "vehicle_token": v.token if v is not None else None,
                "vehicle_vin": v.vin if v is not None else None,
                "sending_now": can.vin_sender() is not None, "bams_sent": can.vin_sent,
                "gap_ms": round(can.vin_gap_s() * 1000, 1),
                "period_s": round(can.vin_period_s(), 3)}

    def truth(self) -> dict[str, Any]:
        self.model.advance(*self.clock.now())
        return self.model.truth()

    def add_listener(self, fn: Callable[[SimEvent], None]) -> None:
        """Call fn(SimEvent) for arrivals, commands, departures (the CLI logs them)."""
        self._listeners.append(fn)

    async def start(self) -> None:
        self.clock.restart()  # sim time 0 is now; the first car comes 1 sim second later
        await self.plc.start()
        try:
            await self.can.start()
        except Exception:
            await self.plc.stop()
            raise
        self._tick_task = asyncio.create_task(self._tick(), name="sim-tick")
        if self.config.control_socket:
            control = ControlServer(self, self.config.control_socket)
            try:
                await control.start()
            except Exception:
                await self.stop()
                raise
            self.control = control

    async def stop(self) -> None:
        if self.control is not None:
            await self.control.stop()
            self.control = None
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
            self._tick_task = None
        await self.can.stop()
        await self.plc.stop()

    async def __aenter__(self) -> SimStation:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _tick(self) -> None:
        while True:
            try:
                self.model.advance(*self.clock.now())
            except Exception:  # a model bug must show up loudly, not stop the PLC silently
                log.exception("model advance failed")
            await asyncio.sleep(TICK_S)

    def _on_event(self, ev: SimEvent) -> None:
        self.events.append(ev)
        if ev.kind == "arrival":
            self.can.vehicle_arrived()  # its BMS sends the car's VIN at once
        for fn in self._listeners:
            fn(ev)
