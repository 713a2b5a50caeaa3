"""Fixtures that start real parts: the simulated station (Modbus TCP on loopback, CAN on a
python-can virtual channel) and the daemon pointed at it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sim_hw.config import CanConfig, ModbusConfig, SimConfig
from sim_hw.station_sim import SimStation
from station.config import CanSection, JournalSection, PlcSection, SequenceSection, StationConfig
from station.core import Event
from station.daemon import Daemon


@dataclass
class Station:
    sim: SimStation
    daemon: Daemon
    events: list[Event]
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def sim_sleep(self) -> None:
        await asyncio.sleep(0.02)

    def ended(self) -> list[dict]:
        return [e.data for e in self.events if e.kind == "swap_ended"]

    async def wait_for(self, pred, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not pred():
            if self.task.done():
                self.task.result()
                raise AssertionError("daemon stopped")
            if loop.time() > end:
                raise AssertionError(f"timed out; daemon {self.daemon.core.status()}")
            await asyncio.sleep(0.02)


def station_config(port: int, channel: str, journal: Path, speed: float) -> StationConfig:
    return StationConfig(
        plc=PlcSection(port=port, poll_period_s=0.01),
        can=CanSection(interface="virtual", channel=channel),
        sequence=SequenceSection(speed_factor=speed),
        journal=JournalSection(path=journal),
    )


@pytest.fixture
async def station(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Station]:
    params = getattr(request, "param", {})
    speed = params.get("speed", 50.0)
    channel = f"test-{uuid.uuid4().hex[:8]}"
    sim_cfg = SimConfig(speed=speed, vehicles=params.get("vehicles", 3),
                        modbus=ModbusConfig(port=0),
                        can=CanConfig(interface="virtual", channel=channel))
    async with SimStation(sim_cfg) as sim:
        events: list[Event] = []
        cfg = station_config(sim.modbus_port, channel, tmp_path / "journal.sqlite", speed)
        daemon = Daemon(cfg, observer=events.append)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        yield Station(sim, daemon, events, stop, task)
        stop.set()
        await asyncio.wait_for(task, 10)
