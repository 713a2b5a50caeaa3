"""The swapnet broker's security against a real mosquitto (sim_hw.broker, the `broker`
fixture): TLS 1.2+ with a client certificate from the network's CA, the certificate's CN as
the identity, and the ACL of deploy/mosquitto/swapnet.acl.

Every denial is checked next to an allowed twin in the same test, sent after it on the same
path: the twin's arrival proves the denied message had its chance to arrive (mosquitto
delivers one client's messages in order), so "nothing arrived" is not a slow broker or a
broken subscription.

What mosquitto 2.0.11 does, as these tests observed it: a SUBSCRIBE to another station's
topics is granted (SUBACK QoS 1, in MQTT 3.1.1 and 5 alike) and the messages are filtered
at delivery; a denied PUBLISH is answered with PUBACK reason 135 (not authorised) in MQTT 5
and a plain PUBACK in 3.1.1 (aiomqtt's publish() returns normally in both); a client
without a valid certificate completes its TLS 1.3 handshake and is then cut off, so aiomqtt
reports only a timeout while its logger ("mqtt") has the TLS alert."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from aiomqtt import ProtocolVersion, TLSParameters

from sim_hw.broker import Broker, CertAuthority

ROOT = Path(__file__).resolve().parents[2]
P = "swapnet/v1"
LEAVES = ("status", "state", "rack", "events", "swaps", "responses")
PROTOCOLS = pytest.mark.parametrize("proto", [ProtocolVersion.V311, ProtocolVersion.V5],
                                    ids=["mqtt311", "mqtt5"])
DENIED = 135  # MQTT 5 reason code "Not authorized"


def tls_for(broker: Broker, name: str) -> TLSParameters:
    cert, key = broker.client_files(name)
    return TLSParameters(ca_certs=str(broker.ca_file), certfile=str(cert), keyfile=str(key))


def client(broker: Broker, name: str, proto: ProtocolVersion = ProtocolVersion.V5,
           **kw: Any) -> aiomqtt.Client:
    kw.setdefault("identifier", f"{name}-{uuid.uuid4().hex[:8]}")
    kw.setdefault("tls_params", tls_for(broker, name))
    return aiomqtt.Client(broker.host, broker.port, protocol=proto, timeout=5, **kw)


def record_pubacks(c: aiomqtt.Client) -> list[int]:
    """The reason codes of the PUBACKs this client receives, in order (aiomqtt drops them)."""
    codes: list[int] = []
    inner: Callable[..., None] = c._client.on_publish

    def on_publish(cl: Any, userdata: Any, mid: int, reason_code: Any, props: Any) -> None:
        codes.append(int(reason_code.value))
        inner(cl, userdata, mid, reason_code, props)

    c._client.on_publish = on_publish
    return codes


async def collect_until(c: aiomqtt.Client, topic: str, payload: bytes,
                        timeout: float = 5.0) -> list[tuple[str, bytes]]:
    """Every message received up to and including (topic, payload)."""
    seen: list[tuple[str, bytes]] = []
    try:
        async with asyncio.timeout(timeout):
            async for m in c.messages:
                assert isinstance(m.payload, bytes)
                seen.append((m.topic.value, m.payload))
                if (m.topic.value, m.payload) == (topic, payload):
                    return seen
    except TimeoutError:
        pass
    pytest.fail(f"{topic} {payload!r} never arrived within {timeout:g} s; got {seen}")


@PROTOCOLS
async def test_a_station_publishes_its_own_leaves_and_the_back_end_receives_them(
        broker: Broker, proto: ProtocolVersion) -> None:
    async with client(broker, "backend", proto) as be, client(broker, "ST-A", proto) as a:
        await be.subscribe(f"{P}/#", qos=1)
        for leaf in LEAVES:
            await a.publish(f"{P}/ST-A/{leaf}", leaf.encode(), qos=1, retain=leaf == "status")
        seen = await collect_until(be, f"{P}/ST-A/responses", b"responses")
        assert seen == [(f"{P}/ST-A/{leaf}", leaf.encode()) for leaf in LEAVES]


@PROTOCOLS
async def test_a_station_cannot_publish_under_another_station(
        broker: Broker, proto: ProtocolVersion) -> None:
    # the client id and user name it sends claim ST-B: its certificate says ST-A, which wins
    async with client(broker, "backend", proto) as be, \
            client(broker, "ST-A", proto, identifier="ST-B", username="ST-B") as a:
        acks = record_pubacks(a)
        await be.subscribe(f"{P}/#", qos=1)
        for leaf in ("status", "events", "swaps", "responses"):
            await a.publish(f"{P}/ST-B/{leaf}", b"forged", qos=1)
        await a.publish(f"{P}/ST-A/events", b"genuine", qos=1)  # the allowed twin
        seen = await collect_until(be, f"{P}/ST-A/events", b"genuine")
        assert seen == [(f"{P}/ST-A/events", b"genuine")]
    assert acks == ([DENIED] * 4 + [0] if proto == ProtocolVersion.V5 else [0] * 5)


@PROTOCOLS
async def test_a_station_cannot_command_itself(broker: Broker, proto: ProtocolVersion) -> None:
    async with client(broker, "backend", proto) as be, client(broker, "ST-A", proto) as a:
        await be.subscribe(f"{P}/#", qos=1)
        await a.subscribe(f"{P}/ST-A/commands", qos=1)
        await a.publish(f"{P}/ST-A/commands", b"from itself", qos=1)  # acknowledged: processed
        await be.publish(f"{P}/ST-A/commands", b"from the back end", qos=1)
        assert await collect_until(a, f"{P}/ST-A/commands", b"from the back end") == [
            (f"{P}/ST-A/commands", b"from the back end")]
        assert await collect_until(be, f"{P}/ST-A/commands", b"from the back end") == [
            (f"{P}/ST-A/commands", b"from the back end")]


@PROTOCOLS
async def test_a_station_cannot_read_another_stations_topics(
        broker: Broker, proto: ProtocolVersion) -> None:
    async with client(broker, "backend", proto) as be, client(broker, "ST-A", proto) as a, \
            client(broker, "ST-B", proto) as b:
        await be.subscribe(f"{P}/#", qos=1)
        await b.subscribe(f"{P}/ST-B/commands", qos=1)
        await b.publish(f"{P}/ST-B/status", b"B online", qos=1, retain=True)
        await collect_until(be, f"{P}/ST-B/status", b"B online")
        # granted, all of them: mosquitto filters at delivery, not at subscription
        for sub in (f"{P}/ST-B/commands", f"{P}/ST-B/events", f"{P}/ST-B/status", f"{P}/#"):
            granted = await a.subscribe(sub, qos=1)
            assert [getattr(g, "value", g) for g in granted] == [1], (sub, granted)
        await be.publish(f"{P}/ST-B/commands", b"for B", qos=1)
        await b.publish(f"{P}/ST-B/events", b"B event", qos=1)
        # both happened: ST-B got its command, the back end ST-B's event
        assert await collect_until(b, f"{P}/ST-B/commands", b"for B") == [
            (f"{P}/ST-B/commands", b"for B")]
        await collect_until(be, f"{P}/ST-B/events", b"B event")
        await be.publish(f"{P}/ST-A/commands", b"for A", qos=1)  # the allowed twin, last
        seen = await collect_until(a, f"{P}/ST-A/commands", b"for A")
        assert seen == [(f"{P}/ST-A/commands", b"for A")]  # no retained status, no B


async def test_the_back_end_commands_a_station_but_cannot_forge_its_telemetry(
        broker: Broker) -> None:
    async with client(broker, "backend") as be, client(broker, "ST-A") as a:
        acks = record_pubacks(be)
        await be.subscribe(f"{P}/#", qos=1)
        await a.subscribe(f"{P}/ST-A/commands", qos=1)
        await be.publish(f"{P}/ST-A/status", b"forged", qos=1, retain=True)
        await be.publish(f"{P}/ST-A/events", b"forged", qos=1)
        await be.publish(f"{P}/ST-A/commands", b"reserve", qos=1)
        assert await collect_until(a, f"{P}/ST-A/commands", b"reserve") == [
            (f"{P}/ST-A/commands", b"reserve")]
        assert await collect_until(be, f"{P}/ST-A/commands", b"reserve") == [
            (f"{P}/ST-A/commands", b"reserve")]
    assert acks == [DENIED, DENIED, 0]


async def _refused(broker: Broker, params: TLSParameters,
                   caplog: pytest.LogCaptureFixture) -> str:
    """Connect with params; the connection must fail. Returns what the client logged."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="mqtt"), pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(broker.host, broker.port, tls_params=params, timeout=2,
                                  identifier=f"intruder-{uuid.uuid4().hex[:8]}"):
            pass
    return caplog.text


async def test_a_client_without_a_certificate_cannot_connect(
        broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    logged = await _refused(broker, TLSParameters(ca_certs=str(broker.ca_file)), caplog)
    assert "certificate required" in logged
    assert "peer did not return a certificate" in broker.log_tail()
    async with client(broker, "ST-A"):  # the twin: the same CA, with its certificate
        pass


async def test_a_certificate_from_another_ca_cannot_connect(
        broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rogue_cert, rogue_key = CertAuthority(tmp_path / "rogue", "rogue CA").issue("ST-A")
    params = TLSParameters(ca_certs=str(broker.ca_file), certfile=str(rogue_cert),
                           keyfile=str(rogue_key))
    logged = await _refused(broker, params, caplog)
    assert "unknown ca" in logged
    assert "certificate verify failed" in broker.log_tail()
    async with client(broker, "ST-A"):
        pass


async def test_a_station_refuses_a_broker_its_pinned_ca_did_not_sign(
        broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    other = CertAuthority(tmp_path / "other", "another CA")
    cert, key = broker.client_files("ST-A")
    params = TLSParameters(ca_certs=str(other.cert_file), certfile=str(cert), keyfile=str(key))
    with pytest.raises(aiomqtt.MqttError, match="CERTIFICATE_VERIFY_FAILED"):
        async with aiomqtt.Client(broker.host, broker.port, tls_params=params, timeout=2):
            pass
    async with client(broker, "ST-A"):
        pass


def _handshake(broker: Broker, version: ssl.TLSVersion) -> str:
    """A bare TLS handshake at exactly `version` with ST-A's certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(broker.ca_file))
    ctx.load_cert_chain(*(str(f) for f in broker.client_files("ST-A")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer what the broker refuses
        ctx.minimum_version = ctx.maximum_version = version
    with socket.create_connection((broker.host, broker.port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=broker.host) as tls:
        return str(tls.version())


def _refuses_tls_1_1(broker: Broker) -> None:
    """The broker answers a TLS 1.1 hello with a protocol_version alert (skipped when this
    Python's OpenSSL cannot even send one: then nothing reached the broker)."""
    if not ssl.HAS_TLSv1_1:
        pytest.skip("this Python's OpenSSL cannot offer TLS 1.1")
    with pytest.raises(ssl.SSLError) as refused:
        _handshake(broker, ssl.TLSVersion.TLSv1_1)
    if "NO_PROTOCOLS_AVAILABLE" in str(refused.value):
        pytest.skip(f"this Python's OpenSSL will not offer TLS 1.1: {refused.value}")
    assert "ALERT_PROTOCOL_VERSION" in str(refused.value)


def test_tls_1_1_is_refused_and_1_2_and_1_3_accepted(broker: Broker) -> None:
    assert _handshake(broker, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    assert _handshake(broker, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    _refuses_tls_1_1(broker)


async def test_a_graceful_restart_keeps_what_is_queued_for_a_persistent_session(
        broker: Broker) -> None:
    be_id = "backend-persistent"
    async with client(broker, "backend", ProtocolVersion.V311, identifier=be_id,
                      clean_session=False) as be:
        await be.subscribe(f"{P}/+/events", qos=1)
    async with client(broker, "ST-A") as a:
        for i in range(5):
            await a.publish(f"{P}/ST-A/events", f"e{i}".encode(), qos=1)
    await asyncio.to_thread(broker.restart)
    async with client(broker, "backend", ProtocolVersion.V311, identifier=be_id,
                      clean_session=False) as be:
        seen = await collect_until(be, f"{P}/ST-A/events", b"e4")
    assert seen == [(f"{P}/ST-A/events", f"e{i}".encode()) for i in range(5)]


async def test_the_production_conf_loads_and_enforces_the_acl(tmp_path: Path) -> None:
    """deploy/mosquitto/swapnet.conf with this machine's paths: it loads in this mosquitto,
    and a station is confined by it (tls_version, client certificates, CN as identity)."""
    conf = ROOT / "deploy" / "mosquitto" / "swapnet.conf"
    with Broker(tmp_path / "prod", stations=("ST-A",), conf_template=conf) as broker:
        text = broker.conf_file.read_text()
        assert "max_inflight_messages 200" in text and "tls_version tlsv1.2" in text
        async with client(broker, "backend") as be, client(broker, "ST-A") as a:
            await be.subscribe(f"{P}/#", qos=1)
            await a.publish(f"{P}/ST-B/events", b"forged", qos=1)
            await a.publish(f"{P}/ST-A/events", b"genuine", qos=1)
            assert await collect_until(be, f"{P}/ST-A/events", b"genuine") == [
                (f"{P}/ST-A/events", b"genuine")]
        assert _handshake(broker, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
        _refuses_tls_1_1(broker)


async def test_the_plain_broker_takes_anyone(plain_broker: Broker) -> None:
    assert plain_broker.url == f"mqtt://127.0.0.1:{plain_broker.port}"
    async with aiomqtt.Client(plain_broker.host, plain_broker.port, timeout=5) as c:
        await c.subscribe("anything/#", qos=1)
        await c.publish("anything/at/all", b"x", qos=1)
        assert await collect_until(c, "anything/at/all", b"x") == [("anything/at/all", b"x")]
