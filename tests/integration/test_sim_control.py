"""The simulator's control socket and the `swap-sim fault ...` / `swap-sim observer` CLI
against a running SimStation, plus faults seen over the real wires."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import can
import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers.bms.protocol import PackProtocol, rack_sa
from sim_hw.config import CanConfig, ModbusConfig, SimConfig
from sim_hw.faults import FAULT_NAMES
from sim_hw.station_sim import SimStation

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
PROTO = PackProtocol()


@pytest.fixture
def sockdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="swsim-", dir="/tmp"))  # AF_UNIX paths must be short
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def sim(sockdir: Path) -> AsyncIterator[SimStation]:
    cfg = SimConfig(
        speed=20.0,
        vehicles=1,
        control_socket=str(sockdir / "ctl.sock"),
        modbus=ModbusConfig(port=0),
        can=CanConfig(interface="virtual", channel=f"ctl-{uuid.uuid4().hex[:8]}"),
    )
    async with SimStation(cfg) as station:
        yield station


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer

    async def raw(self, line: bytes) -> dict[str, Any]:
        self.w.write(line)
        await self.w.drain()
        answer = json.loads(await asyncio.wait_for(self.r.readline(), 5))
        assert isinstance(answer, dict)
        return answer

    async def __call__(self, **request: Any) -> dict[str, Any]:
        return await self.raw(json.dumps(request).encode() + b"\n")


@pytest.fixture
async def ctl(sim: SimStation) -> AsyncIterator[Client]:
    assert sim.config.control_socket
    reader, writer = await asyncio.open_unix_connection(sim.config.control_socket)
    yield Client(reader, writer)
    writer.close()


async def test_socket_is_private_and_removed_on_stop(sockdir: Path) -> None:
    path = sockdir / "ctl.sock"
    cfg = SimConfig(control_socket=str(path), modbus=ModbusConfig(port=0),
                    can=CanConfig(interface="virtual", channel=f"ctl-{uuid.uuid4().hex[:8]}"))
    async with SimStation(cfg):
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        second = SimStation(cfg.model_copy(update={"can": CanConfig(
            interface="virtual", channel=f"ctl-{uuid.uuid4().hex[:8]}")}))
        with pytest.raises(OSError, match="another simulator is listening"):
            await second.start()
    assert not path.exists()


async def test_round_trip(sim: SimStation, ctl: Client) -> None:
    listed = await ctl(op="fault_list")
    # every fault of a Modbus simulator (the OPC UA-only ones are not offered there)
    assert listed["ok"] and [f["name"] for f in listed["faults"]] == list(FAULT_NAMES)
    assert not any(f["active"] for f in listed["faults"])

    got = await ctl(op="fault_set", name="pack_over_temp", value=82, target=2)
    assert got["ok"] and got["fault"]["active"] and got["fault"]["value"] == 82.0
    pack = sim.model.rack[2]
    assert pack is not None and got["fault"]["pack_serial"] == pack.serial
    assert pack.max_cell_temp_c == 82.0
    got = await ctl(op="fault_set", name="estop")
    assert got["ok"] and not sim.model.estop_ok
    active = {f["name"] for f in (await ctl(op="fault_list"))["faults"] if f["active"]}
    assert active == {"pack_over_temp", "estop"}

    got = await ctl(op="fault_clear", name="estop")
    assert got["ok"] and got["fault"]["was_active"] and sim.model.estop_ok
    got = await ctl(op="fault_clear_all")
    assert got == {"ok": True, "cleared": ["pack_over_temp"]}

    # errors are answers, and the connection stays usable
    bad = await ctl(op="fault_set", name="warp_core_breach")
    assert bad["ok"] is False and "unknown fault 'warp_core_breach'" in bad["error"]
    bad = await ctl(op="fault_set", name="vehicle_moved", value="lots")
    assert bad["ok"] is False and "vehicle_moved: value must be a number" in bad["error"]
    bad = await ctl(op="fault_clear")
    assert bad == {"ok": False, "error": "missing fault name"}
    bad = await ctl(op="fault_set", name=5)
    assert bad == {"ok": False, "error": "fault name must be a string, not 5"}
    bad = await ctl(op="launch")
    assert bad["ok"] is False and "unknown op 'launch'" in bad["error"]
    bad = await ctl.raw(b"{not json\n")
    assert bad["ok"] is False and "bad JSON" in bad["error"]
    bad = await ctl.raw(b"[1, 2]\n")
    assert bad == {"ok": False, "error": "request must be a JSON object"}

    obs = await ctl(op="observer")
    assert obs == {"ok": True, "violations": []}
    truth = await ctl(op="truth")
    assert truth["ok"] and truth["truth"]["rack"]["2"] == pack.serial


async def test_observer_over_the_socket(sim: SimStation, ctl: Client) -> None:
    sim.model.lift_mm = 0.0
    sim.model.shuttle_mm = 600.0
    seen = sim.observer.snapshot()
    sim.model.shuttle_mm = 900.0  # as if a command had moved it under a car not lifted
    sim.observer.check(seen, 0)
    obs = await ctl(op="observer")
    got = {v["invariant"] for v in obs["violations"]}
    # nobody writes a heartbeat here: that motion was also one without a controller
    assert got == {"shuttle_travel_car_not_lifted", "motion_with_controller_heartbeat_lost"}
    assert all(v["commands"] == [] for v in obs["violations"])
    assert await ctl(op="observer_clear") == {"ok": True}
    assert sim.observer.violations == []


async def test_faults_on_the_wires(sim: SimStation, ctl: Client) -> None:
    # plc_silent: the Modbus server stops answering; clearing brings it back
    assert (await ctl(op="fault_set", name="plc_silent"))["ok"]
    c = AsyncModbusTcpClient("127.0.0.1", port=sim.modbus_port, timeout=0.3, retries=0)
    assert await c.connect()
    with pytest.raises(ModbusException):
        await c.read_holding_registers(0, count=10, device_id=1)
    c.close()
    assert (await ctl(op="fault_clear", name="plc_silent"))["ok"]
    c = AsyncModbusTcpClient("127.0.0.1", port=sim.modbus_port, timeout=2, retries=1)
    assert await c.connect()
    rr = await c.read_holding_registers(0, count=30, device_id=1)
    assert not rr.isError()
    # a sensor fault shows in the registers
    assert (await ctl(op="fault_set", name="shuttle_misplaced", value=250))["ok"]
    rr = await c.read_holding_registers(0, count=30, device_id=1)
    assert rr.registers[15] == 250 and sim.model.shuttle_mm == 0.0
    c.close()

    # CAN: slot 3 hot and slot 4 silent, as seen on the bus
    bus = can.Bus(interface="virtual", channel=sim.config.can.channel)
    try:
        assert (await ctl(op="fault_set", name="pack_over_temp", value=88, target=3))["ok"]
        assert (await ctl(op="fault_set", name="can_silent", target="4"))["ok"]
        await asyncio.to_thread(_drain, bus)
        temps, sources = await asyncio.to_thread(_listen, bus, 0.5)
        assert temps.get(rack_sa(3)) == 88 and rack_sa(5) in sources
        assert rack_sa(4) not in sources
    finally:
        bus.shutdown()


def _drain(bus: can.BusABC) -> None:
    while bus.recv(0.0) is not None:
        pass


def _listen(bus: can.BusABC, seconds: float) -> tuple[dict[int, float], set[int]]:
    import time

    temps: dict[int, float] = {}
    sources: set[int] = set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        msg = bus.recv(0.05)
        if msg is None:
            continue
        dec = PROTO.decode(msg.arbitration_id, msg.data)
        sources.add(dec.source)
        if dec.name == "PackStatus":
            temps[dec.source] = dec.signals["MaxCellTemp"]
    return temps, sources


# ----------------------------------------------------------------------- the CLI
async def swap_sim(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sim_hw.cli", *args, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_fault_and_observer(sim: SimStation, sockdir: Path) -> None:
    sock = str(sim.config.control_socket)
    code, out, err = await swap_sim("fault", "set", "pack_over_temp", "--value", "80",
                                    "--target", "2", "--socket", sock)
    assert code == 0, err
    assert "pack_over_temp set" in out and "80 degC" in out
    assert sim.faults.is_active("pack_over_temp")

    # the socket path from a config file, given before or after the subcommand
    cfg = sockdir / "sim.toml"
    cfg.write_text(f'[sim]\ncontrol_socket = "{sock}"\n')
    code, out, err = await swap_sim("--config", str(cfg), "fault", "list", "--json")
    assert code == 0, err
    faults = {f["name"]: f for f in json.loads(out)}
    assert faults["pack_over_temp"]["active"] and faults["pack_over_temp"]["target"] == 2
    code, out, _ = await swap_sim("fault", "list", "--config", str(cfg))
    assert code == 0 and "pack_over_temp" in out and "yes" in out

    code, out, err = await swap_sim("fault", "set", "nope", "--socket", sock)
    assert code == 1 and "unknown fault 'nope'" in err and out == ""
    code, _, err = await swap_sim("fault", "set", "bolt_torque_fail", "--target", "99",
                                  "--socket", sock)
    assert code == 1 and "not a bolt index" in err

    code, out, err = await swap_sim("fault", "clear", "pack_over_temp", "--socket", sock)
    assert code == 0 and "cleared" in out, err
    assert not sim.faults.is_active("pack_over_temp")

    code, out, err = await swap_sim("observer", "--json", "--socket", sock)
    assert code == 0, err
    assert json.loads(out) == []

    # not running: a clear error, non-zero
    code, out, err = await swap_sim("observer", "--socket", str(sockdir / "none.sock"))
    assert code == 1 and "no simulator running" in err


async def test_vehicle_vin_over_the_socket_and_the_cli(sim: SimStation, ctl: Client,
                                                        sockdir: Path) -> None:
    """The cars' VIN on CAN: off (a car without a VIN), from another address, another VIN."""
    async def until(cond: Any) -> None:
        for _ in range(200):
            if cond():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("timed out")

    await until(lambda: sim.model.vehicle is not None and sim.can.vin_sent >= 1)
    got = await ctl(op="vehicle_vin")
    state = got["vin"]
    assert got["ok"] and state["send"] and state["source_address"] == 0xF4
    assert state["vehicle_vin"] == sim.model.vehicle.vin and state["sending_now"]  # type: ignore[union-attr]
    assert state["gap_ms"] == 10 and state["period_s"] == 0.25  # speed 20

    got = await ctl(op="vehicle_vin", send=False)
    assert got["ok"] and got["vin"]["send"] is False and not got["vin"]["sending_now"]
    sent = sim.can.vin_sent
    await asyncio.sleep(0.6)  # two periods: nothing sent
    assert sim.can.vin_sent == sent

    got = await ctl(op="vehicle_vin", send=True, source_address=rack_sa(2),
                    vin="WVWZZZ1JZXW000001")
    assert got["ok"] and got["vin"]["source_address"] == rack_sa(2)
    assert sim.model.vehicle.vin == "WVWZZZ1JZXW000001"  # type: ignore[union-attr]
    await until(lambda: sim.can.vin_sent > sent)

    for bad, why in ((dict(send="yes"), "send must be true or false"),
                     (dict(source_address=0xFF), "source_address must be 0..253"),
                     (dict(vin="SHORT"), "17 printable ASCII")):
        answer = await ctl(op="vehicle_vin", **bad)
        assert answer["ok"] is False and why in answer["error"], answer

    sock = str(sim.config.control_socket)
    code, out, err = await swap_sim("vin", "--off", "--source-address", "bay", "--socket", sock)
    assert code == 0, err
    assert out.startswith("VIN on CAN off, from 0xf4; car 1 VIN WVWZZZ1JZXW000001")
    assert sim.can.vin_send is False and sim.can.vin_source == 0xF4
    code, out, err = await swap_sim("vin", "--on", "--json", "--socket", sock)
    assert code == 0 and json.loads(out)["send"] is True, err
    code, _, err = await swap_sim("vin", "--source-address", "0x1FF", "--socket", sock)
    assert code == 2 and "0..253" in err


def test_shipped_config_names_the_control_socket() -> None:
    from sim_hw.config import load_sim_config

    assert load_sim_config(REPO / "deploy" / "swap-sim.toml").control_socket == \
        "/tmp/swap-sim.sock"
