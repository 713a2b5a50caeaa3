"""The simulated PLC over OPC UA: a real asyncua client against SimStation's OPC UA server.

Timings are never asserted against the wall clock: everything polls with generous limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, Node, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua.uaerrors import UaStatusCodeError

from drivers.plc.nodemap import NodeMap, load_node_map
from drivers.plc.opcua_security import create_application_certificate
from sim_hw.config import CanConfig, OpcUaConfig, SimConfig
from sim_hw.faults import FAULT_NAMES, OPCUA_FAULT_NAMES, FaultError
from sim_hw.opcua_server import OpcUaPlcServer
from sim_hw.station_sim import SimStation

pytestmark = pytest.mark.timeout(60)

NMAP: NodeMap = load_node_map()
CONTRACT = NMAP.contract
CLIENT_URI = "urn:swapstation:test-client"
LIMIT_S = 15.0
BUSY, DONE = CONTRACT.enums["cmd_status"].code("busy"), CONTRACT.enums["cmd_status"].code("done")
U16 = ua.VariantType.UInt16


@dataclass(frozen=True)
class ClientCert:
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def client_cert(tmp_path_factory: pytest.TempPathFactory) -> ClientCert:
    d = tmp_path_factory.mktemp("client-pki")
    cert, key = d / "client.der", d / "client.pem"
    create_application_certificate(cert, key, application_uri=CLIENT_URI,
                                   common_name="test client", hostnames=["localhost"])
    return ClientCert(cert, key)


@contextlib.asynccontextmanager
async def station(**opcua: Any) -> AsyncIterator[SimStation]:
    cfg = SimConfig(speed=50.0, vehicles=1, plc_protocol="opcua",
                    opcua=OpcUaConfig(port=0, **opcua),
                    can=CanConfig(interface="virtual", channel=f"ua-{uuid.uuid4().hex[:8]}"))
    async with SimStation(cfg) as sim:
        yield sim


@pytest.fixture
async def sim() -> AsyncIterator[SimStation]:
    async with station() as s:
        yield s


def plc(sim: SimStation) -> OpcUaPlcServer:
    assert isinstance(sim.plc, OpcUaPlcServer)
    return sim.plc


async def make_client(sim: SimStation, cert: ClientCert | None, *, user: str | None = None,
                      password: str | None = None, timeout: float = 2.0) -> Client:
    """A client for the simulator's endpoint: SignAndEncrypt Basic256Sha256 with `cert`,
    or no security at all with None. Not connected."""
    client = Client(sim.opcua_endpoint, timeout=timeout)
    client.application_uri = CLIENT_URI
    if cert is not None:
        await client.set_security(SecurityPolicyBasic256Sha256, str(cert.cert), str(cert.key),
                                  mode=ua.MessageSecurityMode.SignAndEncrypt)
    if user is not None:
        client.set_user(user)
    if password is not None:
        client.set_password(password)
    return client


@contextlib.asynccontextmanager
async def connected(sim: SimStation, cert: ClientCert | None, **kw: Any) -> AsyncIterator[Client]:
    client = await make_client(sim, cert, **kw)
    await client.connect()
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), 2.0)


async def ns_of(client: Client) -> int:
    return int(await client.get_namespace_index(NMAP.namespace_uri))


def node(client: Client, ns: int, spec: str) -> Node:
    return client.get_node(f"ns={ns};{spec}")


async def until(cond: Callable[[], Any], what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + LIMIT_S
    while not await _value(cond()):
        assert loop.time() < end, f"{what} not reached"
        await asyncio.sleep(0.01)


async def _value(v: Any) -> Any:
    return await v if asyncio.iscoroutine(v) else v


class Controller:
    """A minimal controller over OPC UA: the whole output block by one method call."""

    def __init__(self, client: Client, ns: int) -> None:
        self.client = client
        self.ns = ns
        self.obj = node(client, ns, NMAP.method_object or "")
        self.method = node(client, ns, NMAP.method or "")
        self.block = {n: 0 for n in NMAP.arguments}

    async def call(self, **values: int) -> None:
        self.block.update(values)
        await self.obj.call_method(self.method, *[ua.Variant(self.block[n], U16)
                                                  for n in NMAP.arguments])

    async def beat(self) -> None:
        await self.call(ctrl_heartbeat=(self.block["ctrl_heartbeat"] + 1) & 0xFFFF)

    async def read(self, *names: str) -> dict[str, Any]:
        names = names or tuple(s.name for s in NMAP.inputs())
        values = await self.client.read_values([node(self.client, self.ns, NMAP.signals[n].node
                                                     or "") for n in names])
        return NMAP.decode(dict(zip(names, values, strict=True)), enums="codes")

    async def until(self, cond: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        end = loop.time() + LIMIT_S
        while True:
            await self.beat()
            inp = await self.read()
            if cond(inp):
                return inp
            assert loop.time() < end, f"not reached; last inputs {inp}"
            await asyncio.sleep(0.01)

    async def command(self, name: str, p1: int = 0) -> int:
        seq = self.block["cmd_seq"] + 1
        await self.call(ctrl_heartbeat=(self.block["ctrl_heartbeat"] + 1) & 0xFFFF,
                        cmd_code=CONTRACT.command_code(name), cmd_param1=p1, cmd_seq=seq)
        return seq


class Changes:
    """A subscription handler: the values seen per node."""

    def __init__(self) -> None:
        self.seen: dict[str, list[Any]] = {}

    def datachange_notification(self, n: Node, val: Any, data: Any) -> None:
        self.seen.setdefault(n.nodeid.to_string(), []).append(val)

    def of(self, nid: Node) -> list[Any]:
        return self.seen.get(nid.nodeid.to_string(), [])

    def count(self) -> int:
        return sum(len(v) for v in self.seen.values())


# ---------------------------------------------------------------- the address space
async def test_every_mapped_node_with_its_type_and_the_packml_status(
        sim: SimStation, client_cert: ClientCert) -> None:
    async with connected(sim, client_cert) as c:
        ns = await ns_of(c)
        root = await c.nodes.objects.get_child(f"{ns}:{NMAP.root[0]}")
        for sig in NMAP.signals.values():
            n = node(c, ns, sig.node or "")
            assert await n.read_node_class() == ua.NodeClass.Variable, sig.name
            assert await n.read_data_type_as_variant_type() == ua.VariantType[sig.type], sig.name
            assert (await n.read_browse_name()).Name == sig.name
            access = await n.read_attribute(ua.AttributeIds.UserAccessLevel)
            writable = ua.AccessLevel.CurrentWrite.mask & access.Value.Value
            assert not writable, f"{sig.name} is writable in method mode"
            if sig.count > 1:
                assert await n.read_value_rank() == 1
                assert await n.read_array_dimensions() == [sig.count]
                assert len(await n.read_value()) == sig.count
            else:
                assert await n.read_value_rank() == -1
        # the dotted NodeIds are the browse paths under the root
        lift = await root.get_child([f"{ns}:Inputs", f"{ns}:lift_height"])
        assert lift.nodeid == node(c, ns, "s=SwapStation.Inputs.lift_height").nodeid
        method = await root.get_child([f"{ns}:Outputs", f"{ns}:WriteOutputs"])
        assert method.nodeid == node(c, ns, NMAP.method or "").nodeid
        args = await (await method.get_child("0:InputArguments")).read_value()
        assert [a.Name for a in args] == list(NMAP.arguments)

        state = await root.get_child([f"{ns}:Status", f"{ns}:StateCurrent"])
        mode = await root.get_child([f"{ns}:Status", f"{ns}:UnitModeCurrent"])
        assert await state.read_data_type_as_variant_type() == ua.VariantType.Int32
        assert (await state.read_value(), await mode.read_value()) == (4, 1)  # Idle, Production
        sim.faults.set("estop")
        assert await state.read_value() == 9  # Aborted, at once
        assert not await node(c, ns, "s=SwapStation.Inputs.estop_ok").read_value()
        sim.faults.clear("estop")
        assert await state.read_value() == 4
        ctl = Controller(c, await ns_of(c))
        await ctl.call(stop_request=CONTRACT.enums["stop_request"].code("cat2"))
        assert await state.read_value() == 11  # Held
        await ctl.call(stop_request=CONTRACT.enums["stop_request"].code("cat1"))
        assert await state.read_value() == 2  # Stopped
        with pytest.raises(UaStatusCodeError):  # an input is read-only
            await node(c, ns, "s=SwapStation.Inputs.estop_ok").write_value(
                ua.Variant(False, ua.VariantType.Boolean))


# ---------------------------------------------------------------- security
async def test_sign_and_encrypt_works_and_policy_none_is_refused_unless_offered(
        client_cert: ClientCert, monkeypatch: pytest.MonkeyPatch) -> None:
    async with station() as sim:
        async with connected(sim, client_cert) as c:
            assert await node(c, await ns_of(c), "s=SwapStation.Inputs.bolt_count").read_value() \
                == 10
            policy = c.uaclient.security_policy
            assert policy.URI == SecurityPolicyBasic256Sha256.URI
            assert policy.Mode == ua.MessageSecurityMode.SignAndEncrypt
        endpoints = await (await make_client(sim, None)).connect_and_get_server_endpoints()
        assert {e.SecurityMode for e in endpoints} == {ua.MessageSecurityMode.SignAndEncrypt}
        assert {e.EndpointUrl for e in endpoints} == {sim.opcua_endpoint}  # the relay's
        plain = await make_client(sim, None)
        with pytest.raises(ua.UaError, match="No matching endpoints"):  # asyncua gives up
            await plain.connect()
        with contextlib.suppress(Exception):
            await plain.disconnect()
        # a client that goes on regardless (asyncua's server would let it: its channel with
        # policy None is the default) is refused by the simulator
        monkeypatch.setattr(Client, "find_endpoint", staticmethod(lambda eps, *_: eps[0]))
        plain = await make_client(sim, None)
        with pytest.raises(UaStatusCodeError) as err:
            await plain.connect()
        assert err.value.code == ua.StatusCodes.BadSecurityPolicyRejected
        with contextlib.suppress(Exception):
            await plain.disconnect()
        monkeypatch.undo()
    async with station(policies=["None", "Basic256Sha256"]) as sim, connected(sim, None) as c:
        assert await node(c, await ns_of(c), "s=SwapStation.Inputs.bolt_count").read_value() \
                == 10


async def test_only_trusted_client_certificates_when_said(client_cert: ClientCert,
                                                           tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    async with station(pki_dir=str(pki), trust_any_client=False) as sim:
        assert plc(sim).server_certificate_path == pki / "own" / "certs" / "sim-plc.der"
        refused = await make_client(sim, client_cert)
        with pytest.raises(UaStatusCodeError) as err:
            await refused.connect()
        assert err.value.code == ua.StatusCodes.BadCertificateUntrusted
        with contextlib.suppress(Exception):
            await refused.disconnect()
        assert list((pki / "rejected" / "certs").iterdir())  # for an operator to move
        shutil.copyfile(client_cert.cert, pki / "trusted" / "certs" / "client.der")
        async with connected(sim, client_cert) as c:
            assert await node(c, await ns_of(c), "s=SwapStation.Inputs.bolt_count").read_value() \
                == 10
    # the same directory again: the server keeps its certificate
    before = (pki / "own" / "certs" / "sim-plc.der").read_bytes()
    async with station(pki_dir=str(pki)):
        pass
    assert (pki / "own" / "certs" / "sim-plc.der").read_bytes() == before


async def test_username_and_password(client_cert: ClientCert,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with station(users={"operator": "s3cret-pw"}) as sim:
        async with connected(sim, client_cert, user="operator", password="s3cret-pw") as c:
            assert await node(c, await ns_of(c), "s=SwapStation.Inputs.bolt_count").read_value() \
                == 10
        for user, password in (("operator", "wrong-pw"), ("intruder", "s3cret-pw")):
            bad = await make_client(sim, client_cert, user=user, password=password)
            with pytest.raises(UaStatusCodeError) as err:
                await bad.connect()
            assert err.value.code == ua.StatusCodes.BadUserAccessDenied
            with contextlib.suppress(Exception):
                await bad.disconnect()
        anonymous = await make_client(sim, client_cert)
        with pytest.raises(UaStatusCodeError):
            await anonymous.connect()
        with contextlib.suppress(Exception):
            await anonymous.disconnect()
    # the server side never logs a password (asyncua's client may: its ActivateSession
    # request at DEBUG)
    server_side = [r.getMessage() for r in caplog.records
                   if r.name.startswith(("sim_hw", "asyncua.server"))]
    assert server_side and not any("s3cret" in m or "wrong-pw" in m for m in server_side)


# ---------------------------------------------------------------- inputs and outputs
async def test_subscription_sees_the_heartbeat_and_an_estop(
        sim: SimStation, client_cert: ClientCert) -> None:
    async with connected(sim, client_cert) as c:
        ns = await ns_of(c)
        hb = node(c, ns, "s=SwapStation.Inputs.plc_heartbeat")
        estop = node(c, ns, "s=SwapStation.Inputs.estop_ok")
        changes = Changes()
        sub = await c.create_subscription(10, changes)
        await sub.subscribe_data_change([hb, estop])
        await until(lambda: len(changes.of(hb)) >= 3, "heartbeat changes")
        assert changes.of(estop) == [True]
        sim.faults.set("estop")
        await until(lambda: changes.of(estop)[-1] is False, "estop_ok False")


async def test_a_lift_by_method_calls(sim: SimStation, client_cert: ClientCert) -> None:
    async with connected(sim, client_cert) as c:
        ctl = Controller(c, await ns_of(c))
        first = await ctl.until(lambda i: i["vehicle_ready"])
        assert first["bolt_count"] == 10 and first["rack_slot_count"] == 13
        seq = await ctl.command("POSITION")
        done = await ctl.until(lambda i: i["cmd_ack_seq"] == seq and i["cmd_status"] != BUSY)
        assert (done["cmd_status"], done["cmd_error_code"]) == (DONE, 0)
        seq = await ctl.command("LIFT")
        seen: list[int] = []
        done = await ctl.until(lambda i: i["cmd_ack_seq"] == seq and
                               (seen.append(i["cmd_status"]) or i["cmd_status"] != BUSY))
        assert BUSY in seen
        assert (done["cmd_status"], done["cmd_error_code"]) == (DONE, 0)
        assert done["lift_height"] == pytest.approx(sim.config.station.swap_height_mm)
        assert [r.name for r in sim.command_log] == ["POSITION", "LIFT"]
        # the output variables hold the block the PLC took
        assert await node(c, ctl.ns, "s=SwapStation.Outputs.cmd_seq").read_value() == seq
        # a wrong argument count or type changes nothing
        before = dict(ctl.block)
        with pytest.raises(UaStatusCodeError) as err:
            await ctl.obj.call_method(ctl.method, ua.Variant(1, U16))
        assert err.value.code == ua.StatusCodes.BadInvalidArgument
        args = [ua.Variant(ctl.block[n] + 1, U16) for n in NMAP.arguments]
        args[-2] = ua.Variant(float(seq + 1), ua.VariantType.Float)  # cmd_seq
        with pytest.raises(UaStatusCodeError) as err:
            await ctl.obj.call_method(ctl.method, *args)
        assert err.value.code == ua.StatusCodes.BadTypeMismatch
        with pytest.raises(UaStatusCodeError) as err:  # the method of another object
            await c.nodes.objects.call_method(
                ctl.method, *[ua.Variant(ctl.block[n] + 1, U16) for n in NMAP.arguments])
        assert err.value.code == ua.StatusCodes.BadMethodInvalid
        assert len(sim.command_log) == 2 and sim.model.ctrl_heartbeat == before["ctrl_heartbeat"]


def write_mode_map(tmp_path: Path) -> Path:
    text = (Path(NMAP.origin) if Path(NMAP.origin).is_absolute() else
            Path(__file__).resolve().parents[2] / "drivers" / "plc" / "maps" / NMAP.origin
            ).read_text()
    head, found, rest = text.partition("\n[outputs]\n")
    assert found
    _, _, signals = rest.partition("\n[[signal]]\n")
    out = tmp_path / "write_map.toml"
    out.write_text(head + '[outputs]\nmode = "write"\nwrite_order = [["ctrl_heartbeat", '
                   '"cmd_code", "cmd_param1", "cmd_param2", "stop_request"], ["cmd_seq"]]\n\n'
                   "[[signal]]\n" + signals)
    return out


async def test_write_mode_drives_the_model_by_writes(client_cert: ClientCert,
                                                     tmp_path: Path) -> None:
    async with station(node_map=str(write_mode_map(tmp_path))) as sim:
        assert sim.node_map is not None and sim.node_map.output_mode == "write"
        async with connected(sim, client_cert) as c:
            ns = await ns_of(c)
            out = {n: node(c, ns, f"s=SwapStation.Outputs.{n}") for n in NMAP.arguments}
            hb = 0

            async def write(**values: int) -> list[ua.StatusCode]:
                nodes = [out[n] for n in values]
                return await c.uaclient.write_attributes(
                    [n.nodeid for n in nodes],
                    [ua.DataValue(ua.Variant(v, U16)) for v in values.values()],
                    ua.AttributeIds.Value)

            async def beat() -> None:
                nonlocal hb
                hb += 1
                assert all(s.is_good() for s in await write(ctrl_heartbeat=hb))

            await until(lambda: sim.model.vehicle is not None and sim.model.vehicle.ready)
            await beat()
            code = CONTRACT.command_code("POSITION")
            hb += 1
            res = await write(ctrl_heartbeat=hb, cmd_code=code, cmd_param1=0, cmd_param2=0,
                              stop_request=0)
            assert all(s.is_good() for s in res)
            assert not sim.command_log  # no new cmd_seq yet
            assert all(s.is_good() for s in await write(cmd_seq=1))
            assert [r.name for r in sim.command_log] == ["POSITION"]
            ack = node(c, ns, "s=SwapStation.Inputs.cmd_ack_seq")
            assert await ack.read_value() == 1  # the inputs refreshed at once

            # a wrong type is refused per node, the rest of the request is taken
            res = await c.uaclient.write_attributes(
                [out["ctrl_heartbeat"].nodeid, out["cmd_seq"].nodeid],
                [ua.DataValue(ua.Variant(hb + 1, U16)),
                 ua.DataValue(ua.Variant(2.0, ua.VariantType.Float))], ua.AttributeIds.Value)
            assert res[0].is_good() and res[1].value == ua.StatusCodes.BadTypeMismatch
            assert sim.model.ctrl_heartbeat == hb + 1 and len(sim.command_log) == 1

            # opcua_write_refused: refused, nothing changes
            sim.faults.set("opcua_write_refused")
            res = await write(ctrl_heartbeat=hb + 2)
            assert res[0].value == ua.StatusCodes.BadUserAccessDenied
            assert sim.model.ctrl_heartbeat == hb + 1
            assert await out["ctrl_heartbeat"].read_value() == hb + 1
            sim.faults.clear("opcua_write_refused")
            assert (await write(ctrl_heartbeat=hb + 2))[0].is_good()
            assert sim.model.ctrl_heartbeat == hb + 2


# ---------------------------------------------------------------- a silent PLC, a restart
async def test_plc_silent_black_holes_the_connection(
        sim: SimStation, client_cert: ClientCert) -> None:
    async with connected(sim, client_cert, timeout=0.5) as c:
        n = node(c, await ns_of(c), "s=SwapStation.Inputs.bolt_count")
        assert await n.read_value() == 10
        relay = plc(sim).relay
        assert relay is not None and relay.connections == 1
        sim.faults.set("plc_silent")
        handled = sim.plc.requests
        with pytest.raises(TimeoutError):
            await n.read_value()
        assert relay.connections == 1  # no FIN, no RST: still open
        assert sim.plc.dropped > 0 and sim.plc.requests == handled  # never reached it
        sim.faults.clear("plc_silent")
    # the old connection lost bytes; a new one works
    async with connected(sim, client_cert) as c:
        assert await node(c, await ns_of(c), "s=SwapStation.Inputs.bolt_count").read_value() \
            == 10
    sim.plc.pause()
    with pytest.raises((TimeoutError, asyncio.TimeoutError)):
        await asyncio.wait_for((await make_client(sim, client_cert, timeout=0.5)).connect(), 3)
    sim.plc.resume()


async def test_restart_drops_the_sessions(sim: SimStation, client_cert: ClientCert) -> None:
    server = plc(sim)
    async with connected(sim, client_cert, timeout=1.0) as c:
        ns = await ns_of(c)
        ctl = Controller(c, ns)
        await ctl.call(ctrl_heartbeat=7)
        inner = server.inner_port
        await server.restart()
        assert server.inner_port == inner
        with pytest.raises(Exception):  # noqa: B017 - the connection is gone, however it says it
            await node(c, ns, "s=SwapStation.Inputs.bolt_count").read_value()
    async with connected(sim, client_cert) as c:
        ns = await ns_of(c)
        assert await node(c, ns, "s=SwapStation.Outputs.ctrl_heartbeat").read_value() == 7
        assert await node(c, ns, "s=SwapStation.Inputs.bolt_count").read_value() == 10


# ---------------------------------------------------------------- the OPC UA faults
async def test_bad_status_and_wrong_type(sim: SimStation, client_cert: ClientCert) -> None:
    async with connected(sim, client_cert) as c:
        ns = await ns_of(c)
        lift = node(c, ns, "s=SwapStation.Inputs.lift_height")
        slots = node(c, ns, "s=SwapStation.Inputs.rack_slot_count")
        sim.faults.set("opcua_bad_status")  # default target lift_height
        dv = await lift.read_data_value(raise_on_bad_status=False)
        assert dv.StatusCode is not None and dv.StatusCode.value == ua.StatusCodes.BadSensorFailure
        assert dv.Value is not None and dv.Value.VariantType == ua.VariantType.Float
        sim.faults.set("opcua_wrong_type", target="rack_slot_count")
        dv = await slots.read_data_value()
        assert dv.Value is not None and dv.Value.Value == "garbage"
        assert dv.Value.VariantType == ua.VariantType.String
        sim.faults.clear_all()
        dv = await lift.read_data_value()
        assert dv.StatusCode is not None and dv.StatusCode.is_good()
        assert await slots.read_value() == 13
        with pytest.raises(FaultError, match="not an input signal"):
            sim.faults.set("opcua_bad_status", target="cmd_seq")


async def test_subscription_stall(sim: SimStation, client_cert: ClientCert) -> None:
    async with connected(sim, client_cert) as c:
        ns = await ns_of(c)
        hb = node(c, ns, "s=SwapStation.Inputs.plc_heartbeat")
        changes = Changes()
        sub = await c.create_subscription(10, changes)
        await sub.subscribe_data_change(hb)
        await until(lambda: len(changes.of(hb)) >= 2, "heartbeat changes")
        sim.faults.set("opcua_subscription_stall")
        await asyncio.sleep(0.05)  # a publish response already on its way
        stalled_at = changes.count()
        first = await hb.read_value()
        await until(lambda: _later(hb, first), "the heartbeat moving on")  # reads answered
        await Controller(c, ns).beat()  # calls answered
        await asyncio.sleep(0.3)
        assert changes.count() == stalled_at  # nothing published, not even a keep-alive
        sim.faults.clear("opcua_subscription_stall")
        await until(lambda: changes.count() > stalled_at, "publishing again")


async def _later(n: Node, first: int) -> bool:
    return int(await n.read_value()) != first


async def test_write_refused_by_method(sim: SimStation, client_cert: ClientCert) -> None:
    async with connected(sim, client_cert) as c:
        ctl = Controller(c, await ns_of(c))
        await ctl.call(ctrl_heartbeat=5)
        sim.faults.set("opcua_write_refused")
        with pytest.raises(UaStatusCodeError) as err:
            await ctl.call(ctrl_heartbeat=6)
        assert err.value.code == ua.StatusCodes.BadUserAccessDenied
        assert sim.model.ctrl_heartbeat == 5
        sim.faults.clear("opcua_write_refused")
        await ctl.call(ctrl_heartbeat=6)
        assert sim.model.ctrl_heartbeat == 6


def test_opcua_faults_only_on_an_opcua_plc() -> None:
    modbus = SimStation(SimConfig())
    assert [f["name"] for f in modbus.faults.list()] == list(FAULT_NAMES)
    with pytest.raises(FaultError, match="OPC UA only"):
        modbus.faults.set("opcua_subscription_stall")
    opcua = SimStation(SimConfig(plc_protocol="opcua"))
    assert [f["name"] for f in opcua.faults.list()] == [*FAULT_NAMES, *OPCUA_FAULT_NAMES]
    assert opcua.plc_protocol == "opcua"
    with pytest.raises(RuntimeError):
        _ = opcua.modbus_port
    with pytest.raises(RuntimeError):
        _ = modbus.opcua_endpoint


async def test_server_certificate_validity_and_names(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from cryptography import x509

    async with station(pki_dir=str(tmp_path / "pki"), certificate_valid_s=3600) as sim:
        cert = x509.load_der_x509_certificate(plc(sim).server_certificate_path.read_bytes())
    assert abs(cert.not_valid_after_utc - datetime.now(UTC) - timedelta(hours=1)) \
        < timedelta(minutes=1)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:swapstation:sim-plc"]
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
