"""`swapd check-config --probe`: a real swapd process connects to the simulated PLC (OPC UA
with SignAndEncrypt, or Modbus TCP), checks every mapped signal and says which one is
missing or of the wrong type (exit 2); a good station passes (exit 0). The static checks
before it: swapd's OPC UA certificate and trust list."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim_hw.config import SimConfig
from sim_hw.station_sim import SimStation
from station.config import (
    ApiSection,
    JournalSection,
    ModbusSection,
    OpcUaSection,
    PlcSection,
    StationConfig,
)
from station.rig import write_config_toml
from tests.integration.cli_support import opcua_section, station_config, swapd
from tests.integration.cli_support import sim_config as shared_sim_config

pytestmark = pytest.mark.timeout(120)


def sim_config(plc: str) -> SimConfig:
    return shared_sim_config(plc, "probe")


SHIPPED_MAP = Path(__file__).resolve().parents[2] / "drivers/plc/maps/opcua_map.toml"


async def test_probe_passes_a_good_opcua_station_and_names_what_a_bad_map_gets_wrong(
        tmp_path: Path) -> None:
    async with SimStation(sim_config("opcua")) as sim:
        good = station_config(tmp_path, PlcSection(protocol="opcua",
                                                   opcua=opcua_section(tmp_path, sim)))
        rc, out, err = await swapd("check-config", "--probe", str(good))
        assert rc == 0, (out, err)
        assert "every mapped signal present" in out

        # A map the PLC does not match: a node it lacks, a data type it does not have, a
        # browse path that leads nowhere.
        text = SHIPPED_MAP.read_text()
        for old, new in (
                ('node = "s=SwapStation.Inputs.smoke_clear"',
                 'node = "s=SwapStation.Inputs.smoke_detector"'),
                ('node = "s=SwapStation.Inputs.lift_height"\ntype = "Float"',
                 'node = "s=SwapStation.Inputs.lift_height"\ntype = "Double"'),
                ('node = "s=SwapStation.Inputs.bolt_count"', 'path = "Inputs/bolt_number"')):
            assert old in text
            text = text.replace(old, new)
        bad_map = tmp_path / "bad_map.toml"
        bad_map.write_text(text)
        section = opcua_section(tmp_path, sim, bad_map, make_certificate=False)
        (tmp_path / "bad").mkdir()
        bad = station_config(tmp_path / "bad", PlcSection(protocol="opcua", opcua=section))
        rc, out, err = await swapd("check-config", "--probe", str(bad))
        assert rc == 2, (out, err)
        lines = [line for line in err.splitlines() if line.startswith("[plc]")]
        assert any("smoke_clear" in x and "smoke_detector" in x and "missing" in x
                   for x in lines), err
        assert any("lift_height" in x and "Float" in x and "Double" in x for x in lines), err
        assert any("bolt_count" in x and "bolt_number" in x for x in lines), err
        assert "3 problem(s)" in err

        # Without --probe nothing connects: the file itself is fine.
        rc, out, err = await swapd("check-config", str(bad))
        assert rc == 0, (out, err)


async def test_probe_says_why_it_cannot_connect(tmp_path: Path) -> None:
    async with SimStation(sim_config("opcua")) as sim:
        section = opcua_section(tmp_path, sim)
        # The PLC's certificate is not trusted: refused, and kept for the operator.
        for f in (section.pki_dir / "trusted" / "certs").iterdir():
            f.unlink()
        cfg = station_config(tmp_path, PlcSection(protocol="opcua", opcua=section))
        rc, out, err = await swapd("check-config", "--probe", str(cfg))
        assert rc == 2, (out, err)
        assert "cannot connect" in err and "not trusted" in err, err
        assert list((section.pki_dir / "rejected" / "certs").iterdir())


async def test_check_config_wants_swapds_certificate_and_a_trust_list(tmp_path: Path) -> None:
    section = OpcUaSection(pki_dir=tmp_path / "pki")
    cfg = station_config(tmp_path, PlcSection(protocol="opcua", opcua=section))
    rc, out, err = await swapd("check-config", str(cfg))
    assert rc == 2 and "swapd certs create" in err, err
    rc, out, err = await swapd("certs", "create", "--config", str(cfg))
    assert rc == 0, (out, err)
    rc, out, err = await swapd("check-config", str(cfg))
    assert rc == 2 and "trusted" in err and "refuse every PLC" in err, err
    (section.pki_dir / "trusted" / "certs").mkdir(parents=True, exist_ok=True)
    rc, out, err = await swapd("check-config", str(cfg))
    assert rc == 0, (out, err)
    # a certificate made for another application URI: the PLC would refuse the session
    other = StationConfig(plc=PlcSection(protocol="opcua", opcua=section.model_copy(
        update={"application_uri": "urn:elsewhere:swapd"})),
        journal=JournalSection(path=tmp_path / "journal.sqlite"),
        api=ApiSection(socket=tmp_path / "swapd.sock"))
    path = write_config_toml(other, tmp_path / "other.toml")
    rc, out, err = await swapd("check-config", str(path))
    assert rc == 2 and "urn:elsewhere:swapd" in err, err


async def test_probe_over_modbus(tmp_path: Path) -> None:
    async with SimStation(sim_config("modbus")) as sim:
        cfg = station_config(tmp_path, PlcSection(modbus=ModbusSection(port=sim.modbus_port)))
        rc, out, err = await swapd("check-config", "--probe", str(cfg))
        assert rc == 0, (out, err)
    rc, out, err = await swapd("check-config", "--probe", str(cfg))  # nobody listens now
    assert rc == 2 and "cannot connect" in err, err
