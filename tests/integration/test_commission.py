"""`swapd commission` in its own process against the simulated station, over Modbus TCP
and OPC UA (SignAndEncrypt): the report's sections, the NOOP commands the simulated PLC
took and stop_request held afterwards; a set-point mismatch, a refused command, an
unreachable PLC and a running daemon. No wall-clock figure is asserted: the contract's
limits (1 s, 2 s) are what the report judges, and the tests only read its verdicts."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from drivers.plc.contract import load_contract
from sim_hw.config import SimConfig
from sim_hw.station_sim import SimStation
from station.config import (
    ModbusSection,
    PlcSection,
    SequenceSection,
)
from station.local_api import LocalApiServer
from tests.integration.cli_support import opcua_section, station_config, swapd
from tests.integration.cli_support import sim_config as shared_sim_config

pytestmark = pytest.mark.timeout(180)

CONTRACT = load_contract()
NOOP = CONTRACT.command_code("NOOP")
CAT2 = CONTRACT.encode_enum("stop_request", "cat2")
DONE = CONTRACT.encode_enum("cmd_status", "done")


def sim_config(plc: str) -> SimConfig:
    return shared_sim_config(plc, "commission")


def plc_section(tmp: Path, sim: SimStation) -> PlcSection:
    if sim.plc_protocol == "modbus":
        return PlcSection(modbus=ModbusSection(port=sim.modbus_port))
    return PlcSection(protocol="opcua", opcua=opcua_section(tmp, sim))


async def watching(cfg: Path, duration: str) -> asyncio.subprocess.Process:
    """`swapd commission` started and past its checks: connected, writing, watching.
    It gets SIGINT's default action, as a command in a terminal has (Ctrl-C): a process
    started in the background by a non-interactive shell (a CI job, say) ignores SIGINT,
    its children inherit that, and Python keeps an ignored SIGINT ignored."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "station.cli", *commission(cfg, "--duration", duration),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stderr is not None
    seen = b""
    while b"watching" not in seen:
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert line, seen
        seen += line
    return proc


def commission(cfg: Path, *more: str) -> list[str]:
    return ["commission", "--config", str(cfg), "--duration", "1", "--round-trips", "3",
            *more]


@pytest.mark.parametrize("protocol", ["modbus", "opcua"])
async def test_commission_passes_against_the_simulator(tmp_path: Path, protocol: str) -> None:
    async with SimStation(sim_config(protocol)) as sim:
        cfg = station_config(tmp_path, plc_section(tmp_path, sim))
        report_file = tmp_path / "report.json"
        rc, out, err = await swapd(*commission(cfg, "--format", "json", "--report",
                                               str(report_file)))
        assert rc == 0, (out, err)
        assert "Traceback" not in err
        # it said what it would write before writing it
        assert "will write" in err and "stop_request cat2" in err, err
        report = json.loads(out)
        assert report_file.read_text() == out
        assert report["verdict"] == "PASS"
        assert report["plc"] == {"endpoint": sim.opcua_endpoint if protocol == "opcua"
                                 else f"modbus://127.0.0.1:{sim.modbus_port}",
                                 "protocol": protocol, "contract_version": CONTRACT.version}
        assert report["station"]["id"] == "PSS-SIM-0001"
        assert report["swapd_version"] and report["date"]
        sections = {s["id"]: s for s in report["sections"]}
        assert list(sections) == ["inputs", "heartbeat", "round_trip", "setpoints"]
        assert all(s["verdict"] == "PASS" for s in sections.values()), sections
        # every contract input, decoded: enums by name, arrays compactly
        rows = {r["signal"]: r for r in sections["inputs"]["rows"]}
        assert len(rows) == len(CONTRACT.inputs())
        assert rows["cmd_status"]["value"] == "done"
        assert rows["setpoint_swap_height"] == {**rows["setpoint_swap_height"],
                                                "value": "500", "unit": "mm"}
        assert "of 30 set" in rows["rack_slot_occupied[30]"]["value"]
        assert sections["heartbeat"]["plc"]["changes"] > 0
        assert sections["heartbeat"]["ctrl"]["writes_acknowledged"] > 0
        trips = sections["round_trip"]["trips"]
        assert [t["status"] for t in trips] == ["done"] * 3
        # every set-point signal, and the lift window they compose
        assert {c["signal"] for c in sections["setpoints"]["checks"]} == {
            s.name for s in CONTRACT.inputs() if s.name.startswith("setpoint_")} | {
            "setpoint_swap_height +- setpoint_height_tolerance"}

        # the simulated PLC took the three NOOPs, under the numbers the report names, and
        # the machine is held stopped again afterwards
        noops = [c for c in sim.command_log if c.code == NOOP]
        assert [c.seq for c in noops] == [t["seq"] for t in trips]
        assert all(c.status == DONE for c in noops)
        assert len(sim.command_log) == 3  # nothing else was commanded
        sim.sync()
        assert sim.model.stop_request == CAT2


async def test_text_report_and_a_setpoint_mismatch(tmp_path: Path) -> None:
    async with SimStation(sim_config("modbus")) as sim:
        plc = plc_section(tmp_path, sim)
        cfg = station_config(tmp_path, plc)
        rc, out, err = await swapd(*commission(cfg, "--report", str(tmp_path / "r.txt")))
        assert rc == 0, (out, err)
        for heading in ("1. Inputs: PASS", "2. Heartbeats: PASS",
                        "3. Command round trip (NOOP): PASS",
                        "4. Set-points against the configuration: PASS", "Overall: PASS"):
            assert heading in out, out
        assert (tmp_path / "r.txt").read_text() == out

        # the configuration wants another swap height than the PLC works to
        (tmp_path / "other").mkdir()
        other = station_config(tmp_path / "other", plc,
                               sequence=SequenceSection(swap_height_mm=520))
        rc, out, err = await swapd(*commission(other, "--format", "markdown"))
        assert rc == 2, (out, err)
        assert "## 4. Set-points against the configuration: FAIL" in out, out
        assert ("[FAIL] setpoint_swap_height 500 mm (PLC) != sequence.swap_height_mm "
                "520 mm") in out, out
        assert "**Overall: FAIL** (Set-points against the configuration failed)" in out


async def test_a_refused_noop_is_reported_with_its_error_and_cause(tmp_path: Path) -> None:
    async with SimStation(sim_config("modbus")) as sim:
        cfg = station_config(tmp_path, plc_section(tmp_path, sim))
        sim.faults.set("estop")
        rc, out, err = await swapd(*commission(cfg, "--round-trips", "1"))
        assert rc == 2, (out, err)
        assert "3. Command round trip (NOOP): FAIL" in out, out
        assert "error refused" in out and "safety chain open: estop_ok" in out, out
        assert "not confirmed: no NOOP command was done" in out
        assert [c.code for c in sim.command_log] == [NOOP]


async def test_interrupted_it_leaves_the_machine_stopped_and_says_so(tmp_path: Path) -> None:
    async with SimStation(sim_config("modbus")) as sim:
        cfg = station_config(tmp_path, plc_section(tmp_path, sim))
        proc = await watching(cfg, "60")
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 1, (out, err)
        assert b"Traceback" not in err and out == b""
        assert err.decode().strip().splitlines()[-1].startswith(
            "swapd commission: interrupted"), err
        sim.sync()
        assert sim.model.stop_request == CAT2 and sim.command_log == []


async def test_an_unreachable_plc_exits_1_with_one_line(tmp_path: Path) -> None:
    async with SimStation(sim_config("modbus")) as sim:
        cfg = station_config(tmp_path, plc_section(tmp_path, sim))
    # the simulator is gone: nobody listens on its port
    rc, out, err = await swapd(*commission(cfg))
    assert rc == 1, (out, err)
    assert out == ""
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("swapd commission: [plc] modbus://127.0.0.1:") and \
        "cannot connect" in last, err


async def test_refuses_while_a_daemon_answers_on_its_socket(tmp_path: Path) -> None:
    async def status(req: dict[str, Any], peer: object) -> dict[str, Any]:
        return {"ok": True, "status": {"packml_state": "Idle"}}

    async with SimStation(sim_config("modbus")) as sim:
        cfg = station_config(tmp_path, plc_section(tmp_path, sim))
        async with LocalApiServer(tmp_path / "swapd.sock", status):
            rc, out, err = await swapd(*commission(cfg))
        assert rc == 1, (out, err)
        assert "refused" in err and "stop the daemon" in err and "Idle" in err, err
        assert out == ""
        sim.sync()
        assert sim.model.ctrl_heartbeat is None  # nothing was written to the PLC
        assert sim.command_log == []
        # the daemon gone (its socket removed), commissioning runs
        rc, out, err = await swapd(*commission(cfg))
        assert rc == 0, (out, err)


async def test_a_daemon_that_comes_up_during_the_session_stops_it_before_a_round_trip(
        tmp_path: Path) -> None:
    """systemd may restart swapd while an integrator commissions: the socket is asked again
    before every round trip, and no NOOP (nor stop_request none) is written once it answers."""
    async def status(req: dict[str, Any], peer: object) -> dict[str, Any]:
        return {"ok": True, "status": {"packml_state": "Stopped"}}

    async with SimStation(sim_config("modbus")) as sim:
        cfg = station_config(tmp_path, plc_section(tmp_path, sim))
        proc = await watching(cfg, "5")
        async with LocalApiServer(tmp_path / "swapd.sock", status):
            out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 1, (out, err)
        text = err.decode()
        assert "stopped before a round trip: a swapd daemon answers" in text, text
        assert "Traceback" not in text and out == b""
        sim.sync()
        assert sim.command_log == []  # no NOOP
        assert sim.model.stop_request == CAT2
