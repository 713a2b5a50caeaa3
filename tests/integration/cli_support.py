"""What the tests that run swapd's command line against the simulated station share: the
process, the simulator's settings, the station's config file and swapd's OPC UA identity."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from drivers.plc.opcua_security import TrustList, create_application_certificate
from sim_hw.config import CanConfig, ModbusConfig, OpcUaConfig, SimConfig
from sim_hw.opcua_server import OpcUaPlcServer
from sim_hw.station_sim import SimStation
from station.config import ApiSection, JournalSection, OpcUaSection, PlcSection, StationConfig
from station.rig import write_config_toml


async def swapd(*args: str, timeout: float = 90) -> tuple[int, str, str]:
    """`swapd ARGS` in its own process: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "station.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def sim_config(plc: str, name: str) -> SimConfig:
    """A simulated station at 20x serving `plc` on a free port, its CAN bus its own."""
    return SimConfig(speed=20, plc_protocol=plc, modbus=ModbusConfig(port=0),
                     opcua=OpcUaConfig(port=0), can=CanConfig(channel=f"{name}-{plc}"))


def station_config(tmp: Path, plc: PlcSection, **extra: Any) -> Path:
    """swapd's config file in tmp: this PLC, its journal and socket in tmp."""
    cfg = StationConfig(plc=plc, journal=JournalSection(path=tmp / "journal.sqlite"),
                        api=ApiSection(socket=tmp / "swapd.sock"), **extra)
    return write_config_toml(cfg, tmp / "swapd.toml")


def opcua_section(tmp: Path, sim: SimStation, node_map: Path | None = None,
                  make_certificate: bool = True) -> OpcUaSection:
    """[plc.opcua] for the simulator's endpoint; with make_certificate, swapd's certificate
    made and the simulated PLC's trusted."""
    section = OpcUaSection(endpoint=sim.opcua_endpoint, pki_dir=tmp / "pki",
                           node_map=node_map)
    if make_certificate:
        TrustList(section.pki_dir).ensure_dirs()
        create_application_certificate(section.certificate_path, section.private_key_path,
                                       application_uri=section.application_uri)
        assert isinstance(sim.plc, OpcUaPlcServer)
        (section.pki_dir / "trusted" / "certs" / "plc.der").write_bytes(
            sim.plc.server_certificate_path.read_bytes())
    return section
