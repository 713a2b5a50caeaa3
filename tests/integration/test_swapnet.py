"""`swapnet` against a real mosquitto (plain MQTT on loopback, started here): keygen's
files, send's signed command answered by a responder that verifies it with the keyring,
its exit codes, and watch's lines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import aiomqtt
import jsonschema
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from station.cloud.envelope import CloudCommand, Rejection, parse_command
from station.cloud.signing import Keyring, load_private_key
from station.cloud.swapnet import utc_stamp

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
pytestmark = pytest.mark.skipif(not os.path.exists(MOSQUITTO), reason="mosquitto not installed")
STATION = "PSS-0007"
PREFIX = "swapnet/v1"
RESPONSE_SCHEMA = json.loads(resources.files("station.cloud.schemas")
                             .joinpath("response.json").read_text("utf-8"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    """A mosquitto of this test's own, plain MQTT on a free loopback port."""
    for _attempt in range(5):
        port = _free_port()
        conf = tmp_path / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                        "persistence false\nlog_dest stderr\n")
        log = (tmp_path / "mosquitto.log").open("wb")
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port),
                                                                         0.2):
                break
            time.sleep(0.05)
        if proc.poll() is None:
            break
        log.close()  # the port was taken meanwhile: another one
    else:
        pytest.fail(f"mosquitto did not start: {(tmp_path / 'mosquitto.log').read_text()}")
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def swapnet_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "station.cloud.swapnet", *args]


async def run_swapnet(*args: str, timeout: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*swapnet_argv(*args),
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    out = tmp_path / "keys"
    subprocess.run(swapnet_argv("keygen", "--out", str(out), "--key-id", "ops-1"), check=True,
                   capture_output=True)
    return out


def test_keygen_writes_a_private_key_only_its_owner_reads(keys: Path) -> None:
    priv, pub = keys / "ops-1.key", keys / "ops-1.pub"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    assert priv.read_text().startswith("-----BEGIN PRIVATE KEY-----")  # PKCS8
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")  # SubjectPublicKeyInfo
    key = load_private_key(priv)
    ring = Keyring.load(keys)  # the public half is a trusted_keys_dir as it is
    assert ring.key_ids == ["ops-1"]
    assert key.public_key().public_bytes_raw() == \
        ring._keys["ops-1"].public_bytes_raw()
    again = subprocess.run(swapnet_argv("keygen", "--out", str(keys), "--key-id", "ops-1"),
                           capture_output=True, text=True)
    assert again.returncode == 2 and "exists; not overwritten" in again.stderr
    assert load_private_key(priv).public_key().public_bytes_raw() == \
        key.public_key().public_bytes_raw()


def test_keygen_refuses_a_bad_key_id(tmp_path: Path) -> None:
    r = subprocess.run(swapnet_argv("keygen", "--out", str(tmp_path), "--key-id", "../x"),
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--key-id" in r.stderr
    assert list(tmp_path.iterdir()) == []


@contextlib.asynccontextmanager
async def responder(port: int, ring: Keyring, seen: list[Any]) -> AsyncIterator[None]:
    """A stand-in for the station's link: verifies each command with the keyring and
    answers on the response topic the command asked for (MQTT 5), else on responses."""
    ready = asyncio.Event()

    async def serve() -> None:
        async with aiomqtt.Client("127.0.0.1", port,
                                  protocol=aiomqtt.ProtocolVersion.V5) as client:
            await client.subscribe(f"{PREFIX}/{STATION}/commands", qos=1)
            ready.set()
            async for msg in client.messages:
                assert isinstance(msg.payload, bytes)
                r = parse_command(msg.payload, station_id=STATION, keyring=ring,
                                  now_wall=time.time(), max_bytes=65536,
                                  max_lifetime_s=3600, clock_skew_s=30)
                seen.append((r, msg.properties))
                resp: dict[str, Any] = {
                    "schema": "swapnet.response/1", "station_id": STATION,
                    "sent_at": utc_stamp(time.time()), "repeated": False, "result": None}
                if isinstance(r, CloudCommand):
                    resp.update(request_id=r.request_id, command=r.command, accepted=True,
                                code="ok", reason=None, state="Idle")
                else:
                    resp.update(request_id=r.request_id, command=r.command, accepted=False,
                                code=r.code, reason=r.reason, state=None)
                jsonschema.Draft202012Validator(RESPONSE_SCHEMA).validate(resp)
                props = Properties(PacketTypes.PUBLISH)
                topic = f"{PREFIX}/{STATION}/responses"
                asked = getattr(msg.properties, "ResponseTopic", None)
                if asked and msg.properties is not None:
                    topic = asked
                    props.CorrelationData = getattr(msg.properties, "CorrelationData", b"")
                await client.publish(topic, json.dumps(resp), qos=1, properties=props)

    task = asyncio.create_task(serve())
    try:
        await asyncio.wait_for(ready.wait(), 10)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await task


async def test_send_signs_publishes_and_prints_the_response(broker: int, keys: Path) -> None:
    seen: list[Any] = []
    args = {"slot": 4, "action": "lock", "reason": "door sensor"}
    async with responder(broker, Keyring.load(keys), seen):
        rc, out, err = await run_swapnet(
            "send", "--broker", f"mqtt://127.0.0.1:{broker}", "--signing-key",
            str(keys / "ops-1.key"), "--key-id", "ops-1", "--station", STATION,
            "slot_maintenance", "--args", json.dumps(args), "--ttl", "120", "--timeout", "10")
    assert rc == 0, (out, err)
    resp = json.loads(out)
    assert resp["accepted"] is True and resp["code"] == "ok"
    [(cmd, props)] = seen
    assert isinstance(cmd, CloudCommand)
    assert (cmd.command, cmd.args, cmd.key_id) == ("slot_maintenance", args, "ops-1")
    assert resp["request_id"] == cmd.request_id
    assert cmd.expires_at - cmd.issued_at == pytest.approx(120, abs=0.01)
    # MQTT 5: the command names where to answer and how to correlate
    assert props.ResponseTopic == f"{PREFIX}/{STATION}/responses"
    assert props.CorrelationData == cmd.request_id.encode()


async def test_send_exits_1_when_the_station_rejects(broker: int, keys: Path,
                                                     tmp_path: Path) -> None:
    other = tmp_path / "other"
    subprocess.run(swapnet_argv("keygen", "--out", str(other), "--key-id", "ops-2"),
                   check=True, capture_output=True)
    seen: list[Any] = []
    async with responder(broker, Keyring.load(keys), seen):
        rc, out, _ = await run_swapnet(
            "send", "--broker", f"mqtt://127.0.0.1:{broker}", "--signing-key",
            str(other / "ops-2.key"), "--key-id", "ops-2", "--station", STATION, "snapshot")
        assert rc == 1
        assert json.loads(out)["code"] == "unknown_key"
        rc, out, _ = await run_swapnet(
            "send", "--broker", f"mqtt://127.0.0.1:{broker}", "--signing-key",
            str(keys / "ops-1.key"), "--key-id", "ops-1", "--station", STATION,
            "slot_maintenance", "--args", '{"slot": 0}')
        assert rc == 1
        assert json.loads(out)["code"] == "bad_args"
    assert [r.code for r, _ in seen] == ["unknown_key", "bad_args"]
    assert all(isinstance(r, Rejection) for r, _ in seen)


async def test_send_exits_2_on_timeout_and_on_connection_error(broker: int,
                                                               keys: Path) -> None:
    common = ["--signing-key", str(keys / "ops-1.key"), "--key-id", "ops-1", "--station",
              STATION, "snapshot", "--timeout", "1"]
    rc, out, err = await run_swapnet("send", "--broker", f"mqtt://127.0.0.1:{broker}",
                                     *common)
    assert (rc, out) == (2, "")
    assert "no response to swapnet-" in err and "within 1 s" in err
    closed = _free_port()
    rc, out, err = await run_swapnet("send", "--broker", f"mqtt://127.0.0.1:{closed}",
                                     *common)
    assert (rc, out) == (2, "")
    assert f"cannot connect to mqtt://127.0.0.1:{closed}" in err
    assert "Traceback" not in err


async def test_send_refuses_a_signing_key_others_can_read(broker: int, keys: Path) -> None:
    (keys / "ops-1.key").chmod(0o644)
    rc, _, err = await run_swapnet(
        "send", "--broker", f"mqtt://127.0.0.1:{broker}", "--signing-key",
        str(keys / "ops-1.key"), "--key-id", "ops-1", "--station", STATION, "snapshot")
    assert rc == 2
    assert f"{keys / 'ops-1.key'}: mode 0644: a private key must not be readable by " \
        "others (chmod 600)" in err
    assert "PRIVATE" not in err and "Traceback" not in err


async def test_watch_prints_a_line_per_message_and_warns_on_gaps(broker: int) -> None:
    state = {"schema": "swapnet.state/1", "station_id": STATION, "sent_at": utc_stamp(0),
             "packml_state": "Execute", "packml_state_number": 6, "step": "LIFT",
             "swap_id": 12, "active_interlocks": [], "reason": None, "start_inhibited": None,
             "locked_out_slots": {}, "power_cap_kw": 500.0, "authorisation_version": None}
    rack = {"schema": "swapnet.rack/1", "station_id": STATION, "sent_at": utc_stamp(0),
            "power_kw": 120.5, "power_cap_kw": 500.0,
            "slots": [{"slot": i, "state": s} for i, s in
                      enumerate(["ready", "ready", "charging", "empty", "locked_out"], 1)]}

    def event(seq: int, replayed: bool = False) -> dict[str, Any]:
        return {"schema": "swapnet.event/1", "station_id": STATION, "sent_at": utc_stamp(0),
                "event_id": 100 + seq, "seq": seq, "kind": "swap_started",
                "at": utc_stamp(0), "replayed": replayed, "data": {}}

    async with aiomqtt.Client("127.0.0.1", broker) as pub:
        await pub.publish(f"{PREFIX}/{STATION}/state", json.dumps(state), qos=1, retain=True)
        await pub.publish(f"{PREFIX}/{STATION}/rack", json.dumps(rack), qos=1, retain=True)
        proc = await asyncio.create_subprocess_exec(
            *swapnet_argv("watch", "--broker", f"mqtt://127.0.0.1:{broker}", "--station",
                          STATION, "--count", "6"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        lines: list[str] = []

        async def read_line() -> str:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode().rstrip()
            lines.append(line)
            return line

        try:
            # the retained messages arrive first: watch is subscribed from here on
            assert await read_line() == (f"{STATION} state Execute step LIFT swap 12 "
                                         "cap 500 kW")
            assert await read_line() == (f"{STATION} rack 2 ready, 1 charging of 5 slots "
                                         "(1 locked_out), 120.5 of 500.0 kW")
            for seq, replayed in ((1, False), (3, False), (3, True)):
                await pub.publish(f"{PREFIX}/{STATION}/events",
                                  json.dumps(event(seq, replayed)), qos=1)
            await pub.publish(f"{PREFIX}/PSS-OTHER/events", json.dumps(event(9)), qos=1)
            await pub.publish(f"{PREFIX}/{STATION}/swaps", b"not json", qos=1)
            rc = await asyncio.wait_for(proc.wait(), 15)
            assert proc.stdout is not None
            lines.extend((await proc.stdout.read()).decode().splitlines())
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert rc == 0
    text = "\n".join(lines)
    assert f"{STATION} event #1 swap_started (event id 101)" in text
    assert f"WARNING {STATION}: events seq gap: #3 after #1 (1 missing)" in text
    assert f"WARNING {STATION}: event #3 again (last #3)" in text
    assert f"WARNING {STATION}: event #3 replayed" in text
    assert "[replayed]" in text
    assert f"{STATION} swaps: unreadable message (8 bytes)" in text
    assert "PSS-OTHER" not in text  # --station: that station's topics only


async def test_watch_json_prints_raw_messages(broker: int) -> None:
    swap = {"schema": "swapnet.swap/1", "station_id": STATION, "record_id": 5}
    async with aiomqtt.Client("127.0.0.1", broker) as pub:
        await pub.publish(f"{PREFIX}/{STATION}/status", json.dumps(swap), qos=1, retain=True)
    rc, out, err = await run_swapnet("watch", "--broker", f"mqtt://127.0.0.1:{broker}",
                                     "--json", "--count", "1")
    assert rc == 0, err
    [line] = out.splitlines()
    assert err.startswith("watching swapnet/v1/+/{status,state,rack,events,swaps}")
    assert json.loads(line) == {"topic": f"{PREFIX}/{STATION}/status", "retained": True,
                                "message": swap}
