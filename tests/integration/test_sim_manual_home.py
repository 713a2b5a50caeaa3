"""The technician's homing through the simulator's control socket and `swap-sim
manual-home`: the machine left away from home (a car lifted, its bolts loose, its pack on
the shuttle) is brought home, every pack still accounted for."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sim_hw.config import CanConfig, ModbusConfig, SimConfig
from sim_hw.station_sim import SimStation
from station.config import SequenceSection
from station.home import away_from_home
from tests.integration.test_sim_control import swap_sim


def packs(sim: SimStation) -> list[int]:
    t = sim.truth()
    return sorted(s for s in (*t["rack"].values(), t["vehicle_bay"], t["shuttle"],
                              t["stacker"]) if s is not None)


@pytest.fixture
async def lifted() -> AsyncIterator[SimStation]:
    """As an abort in REMOVE leaves it: the car lifted, its bolts loose, its pack on the
    shuttle on its way home."""
    d = Path(tempfile.mkdtemp(prefix="swsim-", dir="/tmp"))  # AF_UNIX paths must be short
    cfg = SimConfig(speed=20.0, vehicles=1, control_socket=str(d / "ctl.sock"),
                    modbus=ModbusConfig(port=0),
                    can=CanConfig(interface="virtual", channel=f"mh-{uuid.uuid4().hex[:8]}"))
    try:
        async with SimStation(cfg) as sim:
            m = sim.model
            while m.vehicle is None:
                sim.sync()
                await asyncio.sleep(0.02)
            m.lift_mm, m.shuttle_mm = 500.0, 1200.0
            m.bolts.tight = [False] * m.bolts.count
            m.shuttle_pack, m.vehicle.pack = m.vehicle.pack, None
            yield sim
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def test_swap_sim_manual_home(lifted: SimStation) -> None:
    sim, sock = lifted, str(lifted.config.control_socket)
    before = packs(sim)
    assert away_from_home(sim.model.inputs(), SequenceSection()) == (
        "machine away from home: car lifted at 500 mm, pack on the shuttle at 1200 mm")
    code, out, err = await swap_sim("manual-home", "--socket", sock)
    assert code == 0, err
    assert out.startswith("homed: ") and "into the car's bay" in out, out
    assert "bolts tightened" in out and "car lowered" in out, out
    assert away_from_home(sim.model.inputs(), SequenceSection()) is None
    assert packs(sim) == before
    code, out, err = await swap_sim("manual-home", "--socket", sock)
    assert (code, out.strip()) == (0, "already home"), err
