"""One suite for every PlcLink implementation in the registry, each against a real server of
its protocol on a free loopback port.

Every protocol brings a `PlcDouble`: the PLC side, whose inputs a test sets and whose
received writes it reads back, both in the contract's vocabulary. The cases are the same
for every protocol: inputs with their read time, output writes, write_now's
acknowledgement time, reconnection, a silent PLC, an error reply, a failing callback.
Protocol-specific extras live in their own module (test_modbus_link.py).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest
from asyncua import Server, ua
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.plc import registry
from drivers.plc.contract import load_contract
from drivers.plc.link import PlcLink
from drivers.plc.modbus_link import ModbusPlcLink
from drivers.plc.nodemap import NodeMap, load_node_map
from drivers.plc.opcua_link import OpcUaPlcLink
from drivers.plc.opcua_security import TrustList, create_application_certificate
from drivers.plc.regmap import RegisterMap, load_register_map
from sim_hw.opcua_server import build_address_space
from sim_hw.tcp_relay import TcpRelay
from station.config import ModbusSection, OpcUaSection, PlcSection
from station.image import CmdStatus, StopRequest
from tests.integration.polling import wait_until

pytestmark = pytest.mark.timeout(30)

CONTRACT = load_contract()
HEARTBEAT_S = 0.02  # [plc] heartbeat_period_s of the links under test
POLL_S = 0.01
TIMEOUT_S = 0.3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- doubles


class PlcDouble(abc.ABC):
    """The PLC side of one protocol: a real server, values in contract vocabulary."""

    protocol: ClassVar[str]

    def __init__(self, port: int) -> None:
        self.port = port
        self.reads = 0  # read requests answered with data
        self.writes: list[dict[str, Any]] = []  # every output write received, all outputs

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    def pause(self) -> None:
        """Go silent: requests go unanswered (a hung PLC, a cut cable)."""

    @abc.abstractmethod
    def resume(self) -> None: ...

    @abc.abstractmethod
    def set_inputs(self, values: dict[str, Any]) -> None:
        """Merge input values (contract vocabulary) served from now on; the rest read 0."""

    @abc.abstractmethod
    def fail_reads(self, on: bool) -> None:
        """Answer reads with the protocol's error reply while on."""

    @abc.abstractmethod
    def fail_writes(self, on: bool) -> None:
        """Answer writes with the protocol's error reply while on."""

    @abc.abstractmethod
    def section(self) -> PlcSection:
        """The `[plc]` configuration that points a link at this double."""

    def tune(self, link: PlcLink) -> None:  # noqa: B027 - optional hook
        """Make the link under test reconnect quickly (test-only settings)."""


class ModbusDouble(PlcDouble):
    """A pymodbus TCP server laid out by the register map; inputs are read-only registers,
    as a real PLC must refuse writes to them."""

    protocol = "modbus"

    def __init__(self, port: int, rmap: RegisterMap | None = None, *,
                 input_length: int | None = None) -> None:
        super().__init__(port)
        self.rmap = rmap or load_register_map()
        self.input_length = self.rmap.input_length if input_length is None else input_length
        self.inputs: dict[str, Any] = {}
        self.raw_inputs: dict[int, int] = {}  # address -> raw value, over `inputs`
        self.read_error: ExcCodes | None = None
        self.write_error: ExcCodes | None = None
        self.raw_writes: list[list[int]] = []  # the registers of every write received
        self.dropped = 0
        self._paused = False
        self._server: ModbusTcpServer | None = None

    async def start(self) -> None:
        rm = self.rmap
        device = SimDevice(
            rm.unit_id,
            [
                SimData(rm.input_start, count=self.input_length, datatype=DataType.REGISTERS,
                        readonly=True),
                SimData(rm.output_start, count=rm.output_length, datatype=DataType.REGISTERS),
            ],
            action=self._action,
        )
        trace = cast(Callable[[bool, ModbusPDU], ModbusPDU], self._trace_pdu)
        self._server = ModbusTcpServer(device, address=("127.0.0.1", self.port),
                                       trace_pdu=trace)
        await self._server.serve_forever(background=True)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def set_inputs(self, values: dict[str, Any]) -> None:
        merged = {**self.inputs, **values}
        self.rmap.encode_block(self.rmap.input_start, self.rmap.input_length, merged,
                               enums="names")  # a bad test value fails here
        self.inputs = merged

    def fail_reads(self, on: bool) -> None:
        self.read_error = ExcCodes.DEVICE_FAILURE if on else None

    def fail_writes(self, on: bool) -> None:
        self.write_error = ExcCodes.DEVICE_BUSY if on else None

    def section(self) -> PlcSection:
        return PlcSection(
            protocol="modbus", heartbeat_period_s=HEARTBEAT_S,
            modbus=ModbusSection(host="127.0.0.1", port=self.port, poll_period_s=POLL_S,
                                 timeout_s=TIMEOUT_S),
        )

    def tune(self, link: PlcLink) -> None:
        assert isinstance(link, ModbusPlcLink)
        link.backoff_min, link.backoff_max = 0.01, 0.1

    def heartbeats(self) -> list[int]:
        return [int(w["ctrl_heartbeat"]) for w in self.writes]

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU | None:
        # A received PDU replaced by None is never handled, so no reply goes out.
        if not sending and self._paused:
            self.dropped += 1
            return None
        return pdu

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        rm = self.rmap
        if set_values is None:
            if self.read_error is not None:
                return self.read_error
            self.reads += 1
            block = rm.encode_block(rm.input_start, rm.input_length, self.inputs,
                                    enums="names")
            for i, v in enumerate(block[: self.input_length]):
                a = rm.input_start + i
                if 0 <= a - start_address < len(registers):
                    registers[a - start_address] = v
            for a, v in self.raw_inputs.items():
                registers[a - start_address] = v
            return None
        if self.write_error is not None:
            return self.write_error
        values = [int(v) for v in set_values]
        self.raw_writes.append(values)
        out = list(registers[rm.output_start - start_address:
                             rm.output_start - start_address + rm.output_length])
        for i, v in enumerate(values):
            if 0 <= address + i - rm.output_start < len(out):
                out[address + i - rm.output_start] = v
        self.writes.append(rm.decode_block(rm.output_start, out, "out", enums="names"))
        return None


SERVER_URI = "urn:swapstation:test-plc"
_PKI: list[Path] = []


def opcua_pki() -> Path:
    """Certificates for the OPC UA double, made once per test run: the server's
    (server.der, server.pem) and swapd's trust list (swapd/) holding swapd's own
    certificate and the server's among the trusted ones."""
    if not _PKI:
        root = Path(tempfile.mkdtemp(prefix="opcua-double-"))
        create_application_certificate(root / "server.der", root / "server.pem",
                                       application_uri=SERVER_URI, common_name="test-plc",
                                       hostnames=["localhost"], ip_addresses=["127.0.0.1"])
        section = OpcUaSection(pki_dir=root / "swapd")
        TrustList(section.pki_dir).ensure_dirs()
        create_application_certificate(section.certificate_path, section.private_key_path,
                                       application_uri=section.application_uri)
        shutil.copyfile(root / "server.der", section.pki_dir / "trusted" / "certs" / "plc.der")
        _PKI.append(root)
    return _PKI[0]


class OpcUaDouble(PlcDouble):
    """An asyncua server laid out by the node map: input variables read-only, the outputs
    taken by the map's method (one call, the whole block). Silence is a relay in front
    that black-holes the bytes (a cut cable: no FIN, no RST)."""

    protocol = "opcua"

    def __init__(self, port: int, nmap: NodeMap | None = None) -> None:
        super().__init__(port)
        self.nmap = nmap or load_node_map()
        self.inputs: dict[str, Any] = {}
        self.read_status: ua.StatusCode | None = None
        self.write_status: ua.StatusCode | None = None
        self.relay = TcpRelay("127.0.0.1", port)
        self._server: Server | None = None
        self._nodes: dict[str, Any] = {}
        self._inner_port = 0
        self._pump: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if not self._inner_port:
            self._inner_port = free_port()
        pki = opcua_pki()
        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{self._inner_port}/double")
        server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        await server.load_certificate(str(pki / "server.der"))
        await server.load_private_key(str(pki / "server.pem"))
        await server.set_application_uri(SERVER_URI)
        self._nodes = await build_address_space(server, self.nmap, self._write_outputs)
        await server.start()
        self._server = server
        await self.relay.start(("127.0.0.1", self._inner_port))
        self._pump = asyncio.create_task(self._serve_inputs())

    async def stop(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            self._pump = None
        await self.relay.stop()
        if self._server is not None:
            await self._server.stop()
            self._server = None

    def pause(self) -> None:
        self.relay.black_hole = True

    def resume(self) -> None:
        self.relay.black_hole = False

    def set_inputs(self, values: dict[str, Any]) -> None:
        merged = {**self.inputs, **values}
        self.nmap.encode(merged)  # a bad test value fails here
        self.inputs = merged

    def fail_reads(self, on: bool) -> None:
        self.read_status = ua.StatusCode(ua.UInt32(ua.StatusCodes.BadDeviceFailure)) if on else None

    def fail_writes(self, on: bool) -> None:
        bad = ua.StatusCode(ua.UInt32(ua.StatusCodes.BadResourceUnavailable))
        self.write_status = bad if on else None

    def section(self) -> PlcSection:
        return PlcSection(
            protocol="opcua", heartbeat_period_s=HEARTBEAT_S,
            opcua=OpcUaSection(endpoint=f"opc.tcp://127.0.0.1:{self.port}/double",
                               pki_dir=opcua_pki() / "swapd",
                               publishing_interval_ms=POLL_S * 1000, keepalive_count=5,
                               connect_timeout_s=2.0, request_timeout_s=TIMEOUT_S),
        )

    def tune(self, link: PlcLink) -> None:
        assert isinstance(link, OpcUaPlcLink)
        link.backoff_min, link.backoff_max = 0.01, 0.1

    async def _serve_inputs(self) -> None:
        """The PLC's scan: every 5 ms the input variables take the values set (bad status
        while reads fail), written when they change; plc_heartbeat counts every 50 ms."""
        served: dict[str, Any] = {}
        start = time.monotonic()
        while True:
            beat = int((time.monotonic() - start) / 0.05) & 0xFFFF
            wire = self.nmap.encode({**self.nmap.zero("in"), "plc_heartbeat": beat,
                                     **self.inputs})
            status = self.read_status or ua.StatusCode()
            for name, value in wire.items():
                if served.get(name) == (value, status.value):
                    continue
                served[name] = (value, status.value)
                sig = self.nmap.signals[name]
                dv = ua.DataValue(ua.Variant(value, getattr(ua.VariantType, sig.type)),
                                  StatusCode=status)
                await self._nodes[name].write_value(dv)
            self.reads += 1
            await asyncio.sleep(0.005)

    def _write_outputs(self, args: list[Any]) -> ua.StatusCode | None:
        if self.write_status is not None:
            return self.write_status
        self.writes.append(self.nmap.decode(dict(zip(self.nmap.arguments, args,
                                                     strict=True))))
        return None


DOUBLES: dict[str, type[PlcDouble]] = {"modbus": ModbusDouble, "opcua": OpcUaDouble}


# ---------------------------------------------------------------------------- fixtures


class Recorder:
    def __init__(self) -> None:
        self.inputs: list[tuple[dict[str, Any], float]] = []
        self.connection: list[bool] = []

    def attach(self, link: PlcLink) -> None:
        link.on_inputs = lambda values, t: self.inputs.append((values, t))
        link.on_connection = self.connection.append


@pytest.fixture(params=registry.protocols())
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def plc(protocol: str) -> AsyncIterator[PlcDouble]:
    double = DOUBLES[protocol](free_port())
    await double.start()
    yield double
    await double.stop()


def make_link(plc: PlcDouble, clock: Callable[[], float] = time.monotonic) -> PlcLink:
    link = registry.create_link(plc.section(), clock=clock)
    plc.tune(link)
    return link


async def start(link: PlcLink) -> asyncio.Task[None]:
    return asyncio.create_task(link.run())


async def stop(link: PlcLink, task: asyncio.Task[None]) -> None:
    await link.close()
    await asyncio.wait_for(task, 2)


def last_write_with(plc: PlcDouble, **expected: Any) -> Callable[[], bool]:
    return lambda: any(all(w.get(k) == v for k, v in expected.items()) for w in plc.writes)


# ---------------------------------------------------------------------------- the suite


def test_every_registered_protocol_has_a_double() -> None:
    assert sorted(DOUBLES) == registry.protocols()


async def test_link_comes_from_the_registry(plc: PlcDouble, protocol: str) -> None:
    link = make_link(plc)
    assert isinstance(link, registry.link_class(protocol))
    assert not link.connected
    assert await link.write_now() is None  # not connected yet


async def test_inputs_arrive_with_read_time_in_contract_vocabulary(plc: PlcDouble) -> None:
    plc.set_inputs({
        "estop_ok": True,
        "position_offset_x": -12.3,
        "lift_height": 480.0,
        "bolt_torque": [0.0, 45.5],
        "rack_slot_occupied": [True] * 13,
        "cmd_ack_seq": 7,
        "cmd_status": "busy",
        "cmd_error_code": "mechanism_fault",
    })
    rec = Recorder()
    offset = 1000.0  # the link stamps reads with the clock it was given
    link = make_link(plc, clock=lambda: time.monotonic() + offset)
    rec.attach(link)
    before = time.monotonic() + offset
    task = await start(link)
    await wait_until(lambda: len(rec.inputs) >= 2)
    after = time.monotonic() + offset
    values, t = rec.inputs[-1]
    assert set(values) == {s.name for s in CONTRACT.inputs()}
    assert values["estop_ok"] is True and values["smoke_clear"] is False
    assert values["position_offset_x"] == pytest.approx(-12.3)
    assert values["lift_height"] == pytest.approx(480.0)
    assert values["bolt_torque"][1] == pytest.approx(45.5)
    assert len(values["bolt_torque"]) == 12
    assert values["rack_slot_occupied"] == [True] * 13 + [False] * 17
    assert values["cmd_ack_seq"] == 7
    assert values["cmd_status"] == "busy" == CmdStatus.BUSY
    assert values["cmd_error_code"] == "mechanism_fault"
    assert before <= t <= after
    assert rec.inputs[0][1] <= t  # in read order
    assert rec.connection == [True]
    assert link.connected
    await stop(link, task)
    assert rec.connection == [True, False]
    assert not link.connected


async def test_inputs_follow_the_plc(plc: PlcDouble) -> None:
    rec = Recorder()
    link = make_link(plc)
    rec.attach(link)
    task = await start(link)
    await wait_until(lambda: len(rec.inputs) >= 1)
    assert rec.inputs[-1][0]["cmd_status"] == "idle"
    plc.set_inputs({"cmd_status": "error", "cmd_error_code": "refused"})
    await wait_until(lambda: rec.inputs[-1][0]["cmd_status"] == "error")
    assert rec.inputs[-1][0]["cmd_error_code"] == "refused"
    await stop(link, task)


async def test_outputs_written_in_contract_vocabulary(plc: PlcDouble) -> None:
    link = make_link(plc)
    link.set_outputs({"cmd_code": "LIFT", "cmd_param1": 3, "cmd_seq": 1,
                      "stop_request": StopRequest.CAT1})
    task = await start(link)
    await wait_until(last_write_with(plc, cmd_seq=1))
    first = next(w for w in plc.writes if w["cmd_seq"] == 1)
    assert first["cmd_code"] == "LIFT" and first["stop_request"] == "cat1"
    assert (first["cmd_param1"], first["cmd_param2"]) == (3, 0)
    assert set(first) == {s.name for s in CONTRACT.outputs()}  # every output, every write

    link.set_outputs({"cmd_code": "NONE", "stop_request": "none"})
    await wait_until(last_write_with(plc, stop_request="none"))
    later = next(w for w in plc.writes if w["stop_request"] == "none")
    assert later["cmd_code"] == "NONE" and later["cmd_seq"] == 1  # the rest is kept

    # The link's own heartbeat goes out with the outputs and keeps counting.
    n = len(plc.writes)
    await wait_until(lambda: len(plc.writes) >= n + 3)
    beats = [int(w["ctrl_heartbeat"]) for w in plc.writes]
    assert beats == sorted(beats) and beats[-1] > beats[0]
    assert link.stats.writes >= len(plc.writes) - 1
    await stop(link, task)


async def test_set_outputs_rejects_bad_names_and_values(plc: PlcDouble) -> None:
    link = make_link(plc)
    with pytest.raises(ValueError, match="cmd_code"):
        link.set_outputs({"cmd_code": "FLY"})
    with pytest.raises(ValueError, match="stop_request"):
        link.set_outputs({"stop_request": "cat3"})
    with pytest.raises(ValueError, match="stop_request"):
        link.set_outputs({"stop_request": 1})  # codes are the wire's business
    with pytest.raises(ValueError, match="ctrl_heartbeat"):
        link.set_outputs({"ctrl_heartbeat": 5})  # owned by the link
    with pytest.raises(ValueError, match="estop_ok"):
        link.set_outputs({"estop_ok": True})  # an input
    with pytest.raises(ValueError, match="no_such_signal"):
        link.set_outputs({"no_such_signal": 1})
    # Nothing of a refused call was kept: the first write carries the defaults.
    task = await start(link)
    await wait_until(lambda: len(plc.writes) >= 1)
    assert plc.writes[0]["cmd_code"] == "NONE" and plc.writes[0]["stop_request"] == "none"
    await stop(link, task)


async def test_write_now_returns_ack_time(plc: PlcDouble) -> None:
    offset = -50.0
    link = make_link(plc, clock=lambda: time.monotonic() + offset)
    assert await link.write_now() is None  # not connected yet
    task = await start(link)
    await wait_until(lambda: link.connected and len(plc.writes) >= 1)
    link.set_outputs({"cmd_code": "UNLOCK", "cmd_seq": 7})
    before = time.monotonic() + offset
    t = await link.write_now()
    assert t is not None and before <= t <= time.monotonic() + offset
    assert plc.writes[-1]["cmd_code"] == "UNLOCK" and plc.writes[-1]["cmd_seq"] == 7
    await stop(link, task)
    assert await link.write_now() is None  # closed


async def test_reconnect_after_server_restart(plc: PlcDouble) -> None:
    rec = Recorder()
    link = make_link(plc)
    rec.attach(link)
    link.set_outputs({"cmd_code": "LOWER", "cmd_seq": 9})
    task = await start(link)
    await wait_until(lambda: len(rec.inputs) >= 1)

    await plc.stop()
    await wait_until(lambda: rec.connection == [True, False])
    assert not link.connected
    assert await link.write_now() is None
    failed = link.stats.reconnects
    await wait_until(lambda: link.stats.reconnects >= failed + 2)  # backing off, retrying
    n = len(rec.inputs)

    plc.writes.clear()
    await plc.start()
    await wait_until(lambda: len(rec.inputs) > n)
    assert rec.connection == [True, False, True]
    await wait_until(lambda: len(plc.writes) >= 1)  # outputs re-sent to the restarted PLC
    assert plc.writes[0]["cmd_code"] == "LOWER" and plc.writes[0]["cmd_seq"] == 9
    await stop(link, task)


async def test_no_server_at_start_then_connects(protocol: str) -> None:
    plc = DOUBLES[protocol](free_port())
    rec = Recorder()
    link = make_link(plc)
    rec.attach(link)
    task = await start(link)
    await wait_until(lambda: link.stats.reconnects >= 2)
    assert rec.connection == [False] and rec.inputs == []
    await plc.start()
    try:
        await wait_until(lambda: len(rec.inputs) >= 1)
        assert rec.connection == [False, True]
    finally:
        await stop(link, task)
        await plc.stop()


async def test_silent_plc_delivers_nothing_then_recovers(plc: PlcDouble) -> None:
    # Staleness is the core's judgement: the link's part is to deliver nothing while the PLC
    # does not answer, so the last inputs age.
    rec = Recorder()
    link = make_link(plc)
    rec.attach(link)
    task = await start(link)
    await wait_until(lambda: len(rec.inputs) >= 3)

    plc.pause()
    errors = link.stats.poll_errors
    await wait_until(lambda: link.stats.poll_errors >= errors + 1)
    silent_from = time.monotonic()
    delivered = len(rec.inputs)
    last_t = rec.inputs[-1][1]
    await wait_until(lambda: link.stats.poll_errors >= errors + 3, timeout=20)
    assert len(rec.inputs) == delivered  # nothing while silent
    assert last_t < silent_from
    assert link.stats.last_error
    link.set_outputs({"cmd_code": "LIFT", "cmd_seq": 4})
    assert await link.write_now() is None  # no acknowledgement from a silent PLC
    assert not task.done()

    plc.resume()
    await wait_until(lambda: len(rec.inputs) > delivered)
    assert rec.inputs[-1][1] > silent_from
    await wait_until(last_write_with(plc, cmd_code="LIFT", cmd_seq=4))  # retried
    await stop(link, task)


async def test_error_reply_counted_and_the_link_keeps_running(plc: PlcDouble) -> None:
    rec = Recorder()
    link = make_link(plc)
    rec.attach(link)
    task = await start(link)
    await wait_until(lambda: len(rec.inputs) >= 1)

    plc.fail_reads(True)
    await wait_until(lambda: sum(link.stats.exceptions.values()) >= 1)
    delivered, writes = len(rec.inputs), len(plc.writes)
    await wait_until(lambda: link.stats.poll_errors >= 5)
    assert len(rec.inputs) == delivered  # nothing delivered: the core sees the inputs age
    assert sum(link.stats.exceptions.values()) >= 5
    assert link.connected and not task.done()
    await wait_until(lambda: len(plc.writes) > writes)  # outputs and heartbeat go on
    plc.fail_reads(False)
    await wait_until(lambda: len(rec.inputs) > delivered)

    plc.fail_writes(True)
    link.set_outputs({"cmd_code": "STORE", "cmd_param1": 4, "cmd_seq": 2})
    assert await link.write_now() is None
    assert link.stats.write_errors >= 1
    if isinstance(plc, OpcUaDouble):  # the refusal names the method and the status
        assert "WriteOutputs" in (link.stats.last_error or "")
        assert "BadResourceUnavailable" in (link.stats.last_error or "")
    exceptions = sum(link.stats.exceptions.values())
    assert exceptions >= 6
    plc.fail_writes(False)
    await wait_until(last_write_with(plc, cmd_code="STORE", cmd_param1=4))  # retried
    assert rec.connection == [True]
    await stop(link, task)


async def test_callback_error_ends_run(plc: PlcDouble) -> None:
    # A broken core must not keep the heartbeat alive.
    link = make_link(plc)

    def boom(values: dict[str, Any], t: float) -> None:
        raise RuntimeError("core bug")

    link.on_inputs = boom
    task = await start(link)
    with pytest.raises(RuntimeError, match="core bug"):
        await asyncio.wait_for(task, 5)
    assert not link.connected
