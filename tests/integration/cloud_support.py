"""What the cloud tests share: a back end that listens on a real broker (and keeps its
session across a broker restart), signing keys, signed commands, the station's [cloud]
configuration for a test broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.properties import Properties

from station.cloud import messages
from station.cloud.signing import sign_command

PREFIX = "swapnet/v1"
VALIDATE = True  # the benchmarks turn it off: they measure the link, not jsonschema
SCHEMA_OF_LEAF = {"status": "status", "state": "state", "rack": "rack", "events": "event",
                  "swaps": "swap", "responses": "response"}


def make_keys(keys_dir: Path, key_id: str = "backend-1") -> Ed25519PrivateKey:
    """A signing key; its public half trusted by the station (keys_dir/<key_id>.pub)."""
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    keys_dir.chmod(0o755)
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    (keys_dir / f"{key_id}.pub").write_bytes(pub)
    (keys_dir / f"{key_id}.pub").chmod(0o644)
    return key


def signed(command: str, args: dict[str, Any], *, station: str, key: Ed25519PrivateKey,
           key_id: str = "backend-1", ttl_s: float = 60.0, request_id: str | None = None,
           issued_at: float | None = None) -> dict[str, Any]:
    now = time.time() if issued_at is None else issued_at
    obj = {"command": command, "args": args, "request_id": request_id or uuid.uuid4().hex,
           "station_id": station, "issued_at": messages.utc(now),
           "expires_at": messages.utc(now + ttl_s)}
    return sign_command(obj, key_id, key)


def cloud_config(broker: Any, station: str, keys_dir: Path, **more: Any) -> dict[str, Any]:
    """The [cloud] section for a station on the test broker (TLS with its certificate)."""
    cfg: dict[str, Any] = {"enabled": True, "host": broker.host, "port": broker.port,
                           "trusted_keys_dir": str(keys_dir), "reconnect_min_s": 0.1,
                           "reconnect_max_s": 0.5, "rack_period_s": 1.0,
                           "connect_timeout_s": 3.0}
    if getattr(broker, "tls", True):
        cert, key = broker.client_files(station)
        cfg.update(ca_file=str(broker.ca_file), cert_file=str(cert), key_file=str(key))
    cfg.update(more)
    return cfg


@dataclass
class Received:
    topic: str
    body: dict[str, Any]
    retain: bool
    props: Any = None


@dataclass
class Backend:
    """The network's back end on the broker: everything under <prefix>/<station>/ is kept,
    each message checked against its schema; it reconnects with its session kept (MQTT 5
    session expiry) so a broker restart loses it nothing the broker kept."""

    broker: Any
    station: str = "+"
    name: str = "backend"
    received: list[Received] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _client: aiomqtt.Client | None = None

    def _tls(self) -> ssl.SSLContext | None:
        if not getattr(self.broker, "tls", True):
            return None
        cert, key = self.broker.client_files(self.name)
        ctx = ssl.create_default_context(cafile=str(self.broker.ca_file))
        ctx.load_cert_chain(str(cert), str(key))
        return ctx

    def client(self, first: bool) -> aiomqtt.Client:
        # MQTT 3.1.1 persistent session: mosquitto 2.0.11 restores it (and its subscription)
        # after a restart; an MQTT 5 session with an expiry interval came back without it
        return aiomqtt.Client(self.broker.host, self.broker.port, identifier=f"{self.name}-t",
                              protocol=aiomqtt.ProtocolVersion.V311, tls_context=self._tls(),
                              clean_session=False, timeout=5)

    async def _run(self) -> None:
        first = True
        while True:
            try:
                async with self.client(first) as c:
                    self._client = c
                    if first:
                        await c.subscribe(f"{PREFIX}/{self.station}/#", qos=1)
                    first = False
                    self.connected.set()
                    async for m in c.messages:
                        self._keep(m)
            except aiomqtt.MqttError:
                self.connected.clear()
                self._client = None
                await asyncio.sleep(0.1)

    def _keep(self, m: aiomqtt.Message) -> None:
        topic = str(m.topic)
        leaf = topic.rsplit("/", 1)[-1]
        if leaf == "commands":  # the back end's own (some deliberately broken), not telemetry
            return
        try:
            body = json.loads(bytes(m.payload))  # type: ignore[arg-type]
        except ValueError:
            self.invalid.append(f"{topic}: not JSON")
            return
        schema = SCHEMA_OF_LEAF.get(leaf)
        if schema is not None and VALIDATE:
            try:
                messages.validate(schema, body)
            except Exception as exc:  # the test reports it
                self.invalid.append(f"{topic}: {exc}")
        self.received.append(Received(topic, body, bool(m.retain), m.properties))

    async def __aenter__(self) -> Backend:
        self._task = asyncio.create_task(self._run())
        async with asyncio.timeout(10):
            await self.connected.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task

    async def send(self, station: str, body: dict[str, Any] | bytes,
                   props: Properties | None = None) -> None:
        async with asyncio.timeout(10):
            while self._client is None:
                await asyncio.sleep(0.05)
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        await self._client.publish(f"{PREFIX}/{station}/commands", payload, qos=1,
                                   properties=props)

    def on(self, leaf: str, station: str | None = None) -> list[dict[str, Any]]:
        return [r.body for r in self.received
                if r.topic.rsplit("/", 1)[-1] == leaf
                and (station is None or r.topic.split("/")[2] == station)]

    def response(self, request_id: str) -> dict[str, Any] | None:
        for body in self.on("responses"):
            if body.get("request_id") == request_id:
                return body
        return None

    async def wait_response(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while (r := self.response(request_id)) is None:
                await asyncio.sleep(0.02)
        return r

    def events(self, station: str | None = None) -> list[dict[str, Any]]:
        """Events after deduplication by event id, in the order first received."""
        seen: dict[int, dict[str, Any]] = {}
        for body in self.on("events", station):
            seen.setdefault(int(body["event_id"]), body)
        return list(seen.values())


@contextlib.asynccontextmanager
async def backend(broker: Any, station: str = "+") -> AsyncIterator[Backend]:
    async with Backend(broker, station) as b:
        yield b
