"""The whole simulated station: mechanics model + Modbus PLC + CAN packs on one clock."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any

from drivers.bms.protocol import PackProtocol
from drivers.plc.regmap import RegisterMap, load_register_map
from sim_hw.can_packs import CanPacks
from sim_hw.clock import SimClock
from sim_hw.config import SimConfig
from sim_hw.control import ControlServer
from sim_hw.faults import FaultRegistry
from sim_hw.mechanics import CommandRecord, SimEvent, StationModel
from sim_hw.observer import Observer
from sim_hw.plc_server import PlcServer

log = logging.getLogger(__name__)

TICK_S = 0.01  # real seconds between model advances (the PLC's scan cycle)


class SimStation:
    """Start it, point a controller at `modbus_port` and the CAN channel, read `truth()`."""

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        register_map: RegisterMap | None = None,
        protocol: PackProtocol | None = None,
    ) -> None:
        self.config = config or SimConfig()
        self.register_map = register_map or load_register_map()
        self.clock = SimClock(self.config.speed)
        self.model = StationModel(self.config)
        self.model.on_event = self._on_event
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
    def modbus_port(self) -> int:
        return self.plc.port

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
        """Bring the model to the present (while running; a no-op before start)."""
        if self._tick_task is not None:
            self.model.advance(*self.clock.now())

    def manual_home(self) -> dict[str, Any]:
        """A technician's homing with the hand pendant, outside the controller (see
        StationModel.manual_home): the car lowered, the bay's pack bolted, packs off the
        shuttle and the stacker put back where they belong. Returns what was done; raises
        ValueError when it cannot be done now (a command running, no free slot)."""
        self.model.advance(*self.clock.now())
        return self.model.manual_home()

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
        for fn in self._listeners:
            fn(ev)
