"""The cloud link: swapd's MQTT client (aiomqtt, MQTT 5), one per station.

What it does, per connection ("session"):
1. connects with TLS and the station's client certificate (the broker's CA pinned), the
   will set to `status` offline with this session's number;
2. subscribes to its commands topic; publishes `status` online (its birth), then `state`
   and `rack`: what the station is doing now goes first;
3. publishes the journal's events after the outbox cursor, in journal order, at QoS 1,
   up to `max_in_flight` awaiting their PUBACK at once; the cursor moves only past events
   the broker acknowledged (a swap_ended carries its swap record, and both must be
   acknowledged). State and rack changes go out as they happen, between the backlog's
   messages, so a long backlog never hides the present;
4. answers every message on its commands topic (station/cloud/envelope.py checks it; the
   daemon's one command entry decides).

A refused PUBACK (MQTT 5 reason code: an ACL denial) ends the session before the cursor
passes the refused event: nothing is counted delivered that the broker did not take. Any
error ends the session; the link reconnects with exponential back-off and jitter. The
station's own work never waits for any of this: the link runs in its own tasks and reads
the journal the scan has already written.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import random
import ssl
import stat
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
import structlog
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from station.cloud import messages
from station.cloud.envelope import CloudCommand, Rejection, parse_command
from station.cloud.outbox import Cursor, Outbox
from station.cloud.signing import Keyring
from station.cloud.topics import Topics
from station.commands import CommandRequest, CommandResult, Origin
from station.config import StationConfig
from station.events import CloudCommandRejected, Event
from station.journal import Journal

log = structlog.get_logger("swapd.cloud")

CONFIRM_EVERY_S = 0.2  # the outbox cursor is written at most this often (an fsync each)
STATE_CHECK_S = 1.0  # state and rack are compared this often even without an event
RACK_MIN_GAP_S = 1.0  # a rack change is published at most this often
RACK_SOC_STEP_PCT = 5.0  # a slot's SOC moving this much is a significant change
REJECTIONS_PER_MIN = 60  # journaled; more are counted (a flood must not fill the journal)
MAX_PACKET_BYTES = 2 * 1024 * 1024  # MQTT 5 Maximum Packet Size we accept from the broker
ROWS_PER_READ = 500


class CloudConfigError(Exception):
    """The cloud section cannot be used (a key file readable by others, a missing file)."""


class _Closed(Exception):
    """The daemon is stopping: the session said offline and ends."""


class PublishRefused(Exception):
    """The broker answered a publication with a failure reason code (an ACL denial)."""


def check_private_file(path: Path, what: str) -> None:
    """A key or password file: a regular file, not readable or writable by others."""
    try:
        st = path.stat()
    except OSError as exc:
        raise CloudConfigError(f"{what} {path}: cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CloudConfigError(f"{what} {path}: not a regular file")
    if st.st_mode & 0o077:
        raise CloudConfigError(
            f"{what} {path}: mode {stat.S_IMODE(st.st_mode):04o}: a secret must not be "
            "readable by others (chmod 600, owned by the service user)")


def tls_context(cfg: StationConfig) -> ssl.SSLContext | None:
    c = cfg.cloud
    if not c.tls:
        return None
    assert c.ca_file is not None and c.cert_file is not None and c.key_file is not None
    check_private_file(c.key_file, "cloud.key_file")
    try:
        # cafile given: only that CA is trusted (pinned), never the system's store
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(c.ca_file))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(c.cert_file), str(c.key_file))
    except (OSError, ssl.SSLError) as exc:
        # the message names the file, never its contents
        raise CloudConfigError(f"cloud TLS files: {type(exc).__name__}: "
                               f"{getattr(exc, 'strerror', None) or exc}") from None
    return ctx


class _LastError(logging.Handler):
    """paho says why a TLS session failed (an unknown CA, a certificate the broker does not
    take) only in its log, while aiomqtt reports a timeout: keep paho's last error for the
    link's own log line and status."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.text: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.text = record.getMessage()[:300]


@dataclass
class LinkStats:
    connected: bool = False
    session: int = 0
    sessions: int = 0
    published: int = 0  # QoS 1 messages acknowledged by the broker
    replayed: int = 0
    acked_event_id: int = 0
    last_error: str | None = None
    rejected: dict[str, int] = field(default_factory=dict)  # command rejections by code
    rejections_not_journaled: int = 0
    commands: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}


class _Client(aiomqtt.Client):
    """aiomqtt, with two additions for the outbox:
    - the PUBACK's reason code: aiomqtt drops it, but a refused publication (an ACL
      denial, MQTT 5) must not count as delivered; it fails that message's future and is
      kept in `refused`, set before anything waiting on it wakes up;
    - `publish_nowait`: the publication handed to paho at once (in call order, so in
      journal order) and a future resolved by its PUBACK, without a task, an event and a
      timer per message as `publish` has (replay of a long backlog is CPU-bound)."""

    refused: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acks: dict[int, asyncio.Future[None]] = {}

    def publish_nowait(self, topic: str, payload: bytes) -> asyncio.Future[None]:
        """QoS 1; the future is done when the broker has acknowledged it."""
        info = self._client.publish(topic, payload, 1, False, None)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, f"could not publish on {topic}")
        fut: asyncio.Future[None] = self._loop.create_future()
        if info.is_published():
            fut.set_result(None)
        else:  # the PUBACK cannot have come yet: paho reads only in the loop's callbacks
            self._acks[info.mid] = fut
        return fut

    def fail_pending(self, exc: BaseException) -> None:
        for fut in self._acks.values():
            if not fut.done():
                fut.set_exception(exc)
        self._acks.clear()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        failed = getattr(reason_code, "is_failure", False)
        if failed and self.refused is None:
            self.refused = str(reason_code)
        fut = self._acks.pop(mid, None)
        if fut is not None and not fut.done():
            if failed:
                fut.set_exception(PublishRefused(f"the broker refused a publication: "
                                                 f"{reason_code}"))
            else:
                fut.set_result(None)
        super()._on_publish(client, userdata, mid, reason_code, properties)


class CloudLink:
    def __init__(
        self,
        cfg: StationConfig,
        journal: Journal,
        *,
        status: Callable[[], dict[str, Any]],
        rack: Callable[[], dict[str, Any]],
        submit: Callable[[CommandRequest], Awaitable[CommandResult]],
        record: Callable[[list[Event]], Awaitable[None]],
        contracts: Mapping[str, str],
        software_version: str,
        started_wall: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.cfg, self.journal = cfg, journal
        self.topics = Topics(cfg.cloud.topic_prefix, cfg.station.id)
        self.status, self.rack, self.submit, self.record = status, rack, submit, record
        self.contracts, self.software_version = dict(contracts), software_version
        self.started_wall, self.clock, self.wall = started_wall, clock, wall
        self.outbox = Outbox(journal.path)
        self.config_hash = messages.config_hash(cfg)
        self.stats = LinkStats(acked_event_id=self.outbox.cursor().event_id)
        self._tls = tls_context(cfg)
        self._password = self._read_password()
        if cfg.cloud.trusted_keys_dir is None:
            raise CloudConfigError("cloud.trusted_keys_dir is not set")
        self.keyring = Keyring.load(cfg.cloud.trusted_keys_dir)
        self._paho_error = _LastError()
        self._mqtt_log = logging.getLogger(f"swapd.cloud.mqtt.{cfg.station.id}")
        self._mqtt_log.addHandler(self._paho_error)
        self._mqtt_log.propagate = False  # said once, in cloud.disconnected
        self._wake_outbox = asyncio.Event()
        self._wake_state = asyncio.Event()
        self._snapshot = False
        self._rejections: collections.deque[float] = collections.deque()
        self._closing = asyncio.Event()  # the daemon is stopping
        self._drained = asyncio.Event()  # ... and every journaled event is acknowledged
        self._give_up = asyncio.Event()  # ... or it waited long enough: say offline anyway
        self._closed = asyncio.Event()  # offline said
        self._acked: Cursor | None = None
        self._confirmed_at = 0.0
        # "replayed": journaled before this process started, or while the link was down
        # (not the few events of the start-up before its first connection)
        self._boot_last = self.outbox.last_event_id()
        self._had_outage = False
        # MQTT 5 where the broker offers it (a refused PUBACK is visible only in 5); a
        # broker that answers "unsupported protocol version" gets 3.1.1 from then on
        self.protocol = aiomqtt.ProtocolVersion.V5

    def _read_password(self) -> str | None:
        p = self.cfg.cloud.password_file
        if p is None:
            return None
        check_private_file(p, "cloud.password_file")
        return p.read_text(encoding="utf-8").strip()

    # ---- called by the daemon ----------------------------------------------------------
    def notify(self, _ev: Event | None = None) -> None:
        """Something was journaled: the outbox and the state view may have news. A live
        sink of the event bus (cheap: it only sets two flags)."""
        self._wake_outbox.set()
        self._wake_state.set()

    def snapshot(self) -> None:
        """Publish status, state and rack now (the `snapshot` command)."""
        self._snapshot = True
        self._wake_state.set()

    async def close(self, timeout: float) -> None:
        """The daemon is stopping: deliver what is journaled (for at most `timeout`), then
        publish status offline ("shutdown": a clean stop sends no will) and disconnect.
        What is not delivered stays in the journal for the next start."""
        self._closing.set()
        self._wake_outbox.set()
        if not self.stats.connected:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._drained.wait()
        except TimeoutError:
            self._give_up.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await self._closed.wait()

    def describe(self) -> dict[str, Any]:
        """For the operator's status (swapctl status)."""
        out = self.stats.as_dict()
        out["backlog"] = self.outbox.backlog()
        out["broker"] = f"{self.cfg.cloud.host}:{self.cfg.cloud.port}"
        return out

    # ---- the connection loop ----------------------------------------------------------
    async def run(self) -> None:
        c = self.cfg.cloud
        delay = c.reconnect_min_s
        while not self._closing.is_set():
            started = self.clock()
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure ends the session, never the daemon
                if self._no_mqtt5(exc):
                    self.protocol = aiomqtt.ProtocolVersion.V311
                    log.warning("cloud.mqtt311", broker=f"{c.host}:{c.port}",
                                consequence="the broker does not offer MQTT 5: using 3.1.1, "
                                "where a publication its ACL refuses cannot be told from a "
                                "delivered one")
                    continue
                self._had_outage = True
                self.stats.last_error = _explain(exc, self._paho_error.text)
                self._paho_error.text = None
                log.warning("cloud.disconnected", broker=f"{c.host}:{c.port}",
                            error=self.stats.last_error, session=self.stats.session,
                            retry_in_s=round(delay, 2))
            finally:
                self.stats.connected = False
            if self._closing.is_set():
                return
            if self.clock() - started > 60.0:  # it had worked for a while: retry soon
                delay = c.reconnect_min_s
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2.0, c.reconnect_max_s)

    def _no_mqtt5(self, exc: BaseException) -> bool:
        """A CONNACK "unsupported protocol version" (5: 0x84; a 3.1.1 broker's own 0x01)
        to an MQTT 5 CONNECT."""
        if self.protocol != aiomqtt.ProtocolVersion.V5 or \
                not isinstance(exc, MqttConnectError):
            return False
        rc = getattr(exc, "rc", None)
        return getattr(rc, "value", rc) in (0x84, 0x01)

    def _client(self, session: int) -> _Client:
        c = self.cfg.cloud
        will = aiomqtt.Will(self.topics.status, messages.encode(self._status_body(
            online=False, session=session, reason="connection lost")), qos=1, retain=True)
        v5 = self.protocol == aiomqtt.ProtocolVersion.V5
        props = Properties(PacketTypes.CONNECT) if v5 else None
        if props is not None:
            props.MaximumPacketSize = MAX_PACKET_BYTES
        client = _Client(
            c.host, c.port, identifier=self.cfg.station.id, username=c.username,
            password=self._password, protocol=self.protocol, will=will,
            logger=self._mqtt_log,
            keepalive=c.keepalive_s, timeout=c.connect_timeout_s, tls_context=self._tls,
            # room above the outbox's window: state and responses never queue behind it
            max_inflight_messages=c.max_in_flight + 20, properties=props,
        )
        # the outbox keeps max_in_flight publications pending by design: not a warning
        client.pending_calls_threshold = c.max_in_flight + 50
        return client

    async def _session(self) -> None:
        session = self.outbox.next_session()
        self.stats.session = session
        client = self._client(session)
        async with client:
            # unacknowledged up to here: replayed
            live_from = self.outbox.last_event_id() if self._had_outage else self._boot_last
            self.stats.connected, self.stats.last_error = True, None
            self.stats.sessions += 1
            log.info("cloud.connected", broker=f"{self.cfg.cloud.host}:{self.cfg.cloud.port}",
                     session=session, backlog=self.outbox.backlog())
            await client.subscribe(self.topics.commands, qos=1)
            await self._publish(client, self.topics.status, self._status_body(
                online=True, session=session), qos=1, retain=True)
            state = _State()
            await self._publish_state(client, state, force=True)
            tasks = [
                asyncio.create_task(self._pump(client, live_from), name="cloud:outbox"),
                asyncio.create_task(self._state_loop(client, state), name="cloud:state"),
                asyncio.create_task(self._commands(client), name="cloud:commands"),
                asyncio.create_task(self._closer(client, session), name="cloud:closer"),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for t in done:
                    exc = t.exception()
                    if isinstance(exc, _Closed):
                        return
                    if exc is not None:
                        raise exc
            finally:
                for t in tasks:
                    t.cancel()
                for t in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t
                self._confirm(force=True)

    async def _closer(self, client: _Client, session: int) -> None:
        await self._closing.wait()
        while not self._give_up.is_set():
            acked = self._acked.event_id if self._acked is not None else 0
            if acked >= self.outbox.last_event_id():
                self._drained.set()
                break
            await asyncio.sleep(0.02)
        self._confirm(force=True)
        await self._publish(client, self.topics.status, self._status_body(
            online=False, session=session, reason="shutdown"), qos=1, retain=True)
        self._closed.set()
        raise _Closed

    async def _publish(self, client: _Client, topic: str, body: dict[str, Any], *, qos: int,
                       retain: bool = False, properties: Properties | None = None) -> None:
        await client.publish(topic, messages.encode(body), qos=qos, retain=retain,
                             properties=properties)
        if client.refused is not None:
            raise PublishRefused(f"the broker refused a publication on {topic}: "
                                 f"{client.refused} (check its ACL for station "
                                 f"{self.cfg.station.id})")

    # ---- the outbox: events and swap records, in journal order ---------------------------
    async def _pump(self, client: _Client, live_from: int) -> None:
        start = self.outbox.cursor()
        self._acked = start
        self._confirmed_at = self.clock()
        window = asyncio.Semaphore(self.cfg.cloud.max_in_flight)
        queue: asyncio.Queue[_Sent] = asyncio.Queue()
        acker = asyncio.create_task(self._ack(client, queue, window), name="cloud:ack")
        pos, seq = start.event_id, start.seq
        try:
            while True:
                if acker.done():
                    acker.result()  # raises the failure that ends the session
                rows = self.journal.events_after(pos, limit=ROWS_PER_READ)
                if not rows:
                    self._wake_outbox.clear()
                    waiter = asyncio.create_task(self._wake_outbox.wait())
                    await asyncio.wait({waiter, acker}, timeout=CONFIRM_EVERY_S,
                                       return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    self._confirm()
                    continue
                sent_wall = self.wall()  # one per read: utc() is not free at 3,000/s
                for row in rows:
                    await window.acquire()
                    if acker.done():
                        acker.result()
                    seq += 1
                    event_id = int(row["id"])
                    replayed = event_id <= live_from
                    acks = [client.publish_nowait(topic, messages.encode(body))
                            for topic, body in self._outbox_messages(row, seq, replayed,
                                                                     sent_wall)]
                    queue.put_nowait(_Sent(Cursor(event_id, seq), acks, replayed))
                    pos = event_id
        finally:
            acker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await acker
            client.fail_pending(ConnectionError("session ended"))

    def _outbox_messages(self, row: Any, seq: int, replayed: bool,
                         sent_wall: float) -> list[tuple[str, dict[str, Any]]]:
        sid = self.cfg.station.id
        data = {k: v for k, v in json.loads(row["data"]).items() if k != "t"}
        out: list[tuple[str, dict[str, Any]]] = []
        if row["kind"] == "swap_ended":
            swap = self.journal.db.execute("SELECT * FROM swaps WHERE swap_id = ?",
                                           (data.get("swap_id"),)).fetchone()
            if swap is not None:
                out.append((self.topics.swaps, messages.swap_record(
                    sid, swap, ended_wall=float(row["wall"]), event_id=int(row["id"]),
                    replayed=replayed, sent_wall=sent_wall)))
        out.append((self.topics.events, messages.event_message(
            sid, int(row["id"]), seq, str(row["kind"]), data, float(row["wall"]), replayed,
            sent_wall)))
        return out

    async def _ack(self, client: _Client, queue: asyncio.Queue[_Sent],
                   window: asyncio.Semaphore) -> None:
        """Moves the cursor past each event once all its messages are acknowledged, in
        order; a failure (or a refused PUBACK) leaves it before that event."""
        while True:
            sent = await queue.get()
            try:
                for ack in sent.acks:
                    await ack
            except BaseException:
                for _ in range(self.cfg.cloud.max_in_flight):
                    window.release()  # the publisher must not wait for an acker that died
                raise
            window.release()
            if client.refused is not None:
                raise PublishRefused(f"the broker refused a publication: {client.refused} "
                                     f"(check its ACL for station {self.cfg.station.id})")
            self._acked = sent.cursor
            self.stats.acked_event_id = sent.cursor.event_id
            self.stats.published += len(sent.acks)
            self.stats.replayed += len(sent.acks) if sent.replayed else 0
            self._confirm()

    def _confirm(self, force: bool = False) -> None:
        acked = self._acked
        if acked is None:
            return
        now = self.clock()
        if force or now - self._confirmed_at >= CONFIRM_EVERY_S:
            self._confirmed_at = now
            self.outbox.confirm(acked)

    # ---- state and rack: the present, not backlog --------------------------------------
    def _status_body(self, *, online: bool, session: int,
                     reason: str | None = None) -> dict[str, Any]:
        return messages.status_message(
            self.cfg.station.id, online, session, self.software_version, self.config_hash,
            self.contracts, self.started_wall, self.wall(), reason=reason)

    async def _state_loop(self, client: _Client, state: _State) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STATE_CHECK_S):
                    await self._wake_state.wait()
            self._wake_state.clear()
            if self._snapshot:
                self._snapshot = False
                await self._publish(client, self.topics.status, self._status_body(
                    online=True, session=self.stats.session), qos=1, retain=True)
                await self._publish_state(client, state, force=True)
            else:
                await self._publish_state(client, state)

    async def _publish_state(self, client: _Client, state: _State, force: bool = False) -> None:
        sid, now = self.cfg.station.id, self.clock()
        body = messages.state_message(sid, self.status(), self.wall())
        key = {k: v for k, v in body.items() if k != "sent_at"}
        if force or key != state.last_state:
            await self._publish(client, self.topics.state, body, qos=1, retain=True)
            state.last_state = key
        rack = self.rack()
        sig = _rack_signature(rack)
        due = now >= state.next_rack
        changed = sig != state.last_rack and now - state.rack_at >= RACK_MIN_GAP_S
        if force or due or changed:
            await client.publish(self.topics.rack, messages.encode(
                messages.rack_message(sid, rack, self.wall())), qos=0, retain=True)
            state.last_rack, state.rack_at = sig, now
            state.next_rack = now + self.cfg.cloud.rack_period_s

    # ---- commands ----------------------------------------------------------------------
    async def _commands(self, client: _Client) -> None:
        async for msg in client.messages:
            if str(msg.topic) != self.topics.commands:
                continue
            payload = msg.payload if isinstance(msg.payload, bytes | bytearray) else \
                str(msg.payload or "").encode()
            self.stats.commands += 1
            reply = await self.handle_command(bytes(payload))
            await self._respond(client, reply, msg.properties)

    async def handle_command(self, payload: bytes) -> dict[str, Any]:
        """One message from the commands topic -> the response body. Never raises on bad
        input: every refusal is an answer with a code and a reason, journaled, counted."""
        c = self.cfg.cloud
        parsed = parse_command(payload, station_id=self.cfg.station.id, keyring=self.keyring,
                               now_wall=self.wall(), max_bytes=c.max_command_bytes,
                               max_lifetime_s=c.max_command_lifetime_s,
                               clock_skew_s=c.clock_skew_s)
        if isinstance(parsed, Rejection):
            await self._rejected(parsed)
            return self._response(parsed.request_id, parsed.command, False, parsed.code,
                                  parsed.reason, None, False, None)
        return await self._submit(parsed)

    async def _submit(self, cmd: CloudCommand) -> dict[str, Any]:
        req = CommandRequest(cmd.command, Origin.CLOUD, f"cloud key {cmd.key_id}",
                             request_id=cmd.request_id, args=dict(cmd.args))
        res = await self.submit(req)
        if res.accepted and cmd.command == "snapshot" and not res.repeated:
            self.snapshot()
        code = getattr(res, "code", "ok" if res.accepted else "refused")
        if not res.accepted:
            self.stats.rejected[code] = self.stats.rejected.get(code, 0) + 1
        return self._response(res.request_id, res.command, res.accepted, code, res.reason,
                              res.state, res.repeated, getattr(res, "result", None))

    async def _rejected(self, r: Rejection) -> None:
        self.stats.rejected[r.code] = self.stats.rejected.get(r.code, 0) + 1
        log.warning("cloud.command_rejected", code=r.code, reason=r.reason,
                    request_id=r.request_id, key_id=r.key_id, size=r.size)
        now = self.clock()
        while self._rejections and now - self._rejections[0] > 60.0:
            self._rejections.popleft()
        if len(self._rejections) >= REJECTIONS_PER_MIN:
            self.stats.rejections_not_journaled += 1  # counted, in the status
            return
        self._rejections.append(now)
        await self.record([CloudCommandRejected(
            t=now, request_id=r.request_id, command=r.command, code=r.code, reason=r.reason,
            key_id=r.key_id, size=r.size)])

    def _response(self, request_id: str | None, command: str | None, accepted: bool,
                  code: str, reason: str | None, state: str | None, repeated: bool,
                  result: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "schema": "swapnet.response/1", "station_id": self.cfg.station.id,
            "sent_at": messages.utc(self.wall()), "request_id": request_id,
            "command": command, "accepted": accepted, "code": code, "reason": reason,
            "state": state, "repeated": repeated, "result": result,
        }

    async def _respond(self, client: _Client, body: dict[str, Any],
                       request_props: Properties | None) -> None:
        topic = self.topics.responses
        props = None
        asked = getattr(request_props, "ResponseTopic", None) if request_props else None
        if isinstance(asked, str) and self.topics.is_response_topic(asked):
            topic = asked
        corr = getattr(request_props, "CorrelationData", None) if request_props else None
        if corr is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = corr
        await self._publish(client, topic, body, qos=1, properties=props)


@dataclass
class _Sent:
    cursor: Cursor
    acks: list[asyncio.Future[None]]
    replayed: bool


@dataclass
class _State:
    last_state: dict[str, Any] | None = None
    last_rack: tuple[Any, ...] | None = None
    rack_at: float = float("-inf")
    next_rack: float = float("-inf")


def _rack_signature(rack: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes a rack change significant: a slot's state, pack or reservation, its SOC
    in steps of RACK_SOC_STEP_PCT, the cap; not every tenth of a percent."""
    slots = tuple(
        (s.get("slot"), s.get("state"), s.get("serial"), s.get("reserved_for"),
         None if s.get("soc_pct") is None else int(s["soc_pct"] // RACK_SOC_STEP_PCT))
        for s in rack.get("slots", ()))
    return slots, rack.get("power_cap_kw")


def _explain(exc: BaseException, paho_error: str | None = None) -> str:
    """A failure in words for the log: no payload, no secret, just what and where."""
    if paho_error and "ssl" in paho_error.lower():
        return (f"TLS refused: {paho_error} (check cloud.ca_file is the broker's CA and "
                "that the broker trusts this station's certificate)")
    if isinstance(exc, aiomqtt.MqttCodeError):
        return f"MQTT: {exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "broker unreachable: connection refused"
    if isinstance(exc, OSError):
        return f"network: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


def disk_free_mb(path: Path) -> float:
    st = os.statvfs(path if path.is_dir() else path.parent)
    return st.f_bavail * st.f_frsize / 1e6
