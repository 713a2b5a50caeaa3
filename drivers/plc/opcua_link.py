"""PLC link over OPC UA (asyncua client), driven by the node map (the contract's OPC UA
addressing, drivers/plc/nodemap.py).

Inputs arrive by subscription: every contract input is a monitored item (data change) of
one subscription. Each publish response is applied as a whole: its data changes update
the link's copy of the input image, and once the image is complete, good and of the right
types, it goes to the core with the time the response arrived. A keep-alive (a publish
response without data) says the server still samples and nothing changed, so the same
image goes out again with the keep-alive's time. An input with a bad status or a value of
the wrong type withholds the whole image (the core sees the inputs age, as for a Modbus
exception reply) and is logged naming the node.

The subscription is watched: no publish response within `keepalive_count` publishing
intervals (x 1.5, for the network), nor within `[plc] stale_after_s`, means it is dead; the
link drops the session and connects anew. Waiting out the staleness first is deliberate:
until then a late keep-alive (a busy server, a garbage collection) costs nothing, while a
new secure channel and session take long enough to make the inputs stale themselves.
Every connection is a new client, session and subscription: swapd never reactivates an
old session or transfers a subscription (an S7-1500 answers TransferSubscriptions with
BadServiceUnsupported anyway), and a response of a session it gave up is ignored, so
nothing from before a reconnect reaches the core.

Outputs: the whole block at once by a method call ("method" mode of the node map), or
Write requests in the map's order with cmd_seq alone and last ("write" mode), on change,
every heartbeat period (the link owns ctrl_heartbeat) and at once with write_now(). After a
reconnect the whole block is written again before anything else.

Security: the policy and mode of `[plc.opcua]` (Basic256Sha256 / SignAndEncrypt by
default), swapd's application certificate, the trust list (drivers/plc/opcua_security.py:
an unknown server certificate is refused and copied to rejected/), username/password or an
X.509 user certificate. A connection whose server certificate expires is dropped at that
moment (and the next one is refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import structlog
from asyncua import Client, ua
from asyncua.crypto import security_policies
from pydantic import BaseModel

from drivers.plc.contract import PlcContract
from drivers.plc.link import HEARTBEAT, Clock, LinkStats, OutputBlock, PlcLink
from drivers.plc.nodemap import NodeMap, NodeSignal, NodeValueError, load_node_map
from drivers.plc.opcua_security import (
    CertificateRejectedError,
    TrustList,
    check_private_key_file,
    read_password,
)
from drivers.ratelimit import RateLimitedWarnings
from station.config import OpcUaSection, PlcSection

# The command handshake's inputs: a new echo is delivered only with (or after) its status.
ECHO = "cmd_ack_seq"
HANDSHAKE_STATE = frozenset({"cmd_status", "cmd_error_code"})
LOG_INTERVAL = 1.0  # at most one log line per error kind per second
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
STALL_MARGIN = 1.5  # a keep-alive may come this much later than promised (network, load)
CLOSE_TIMEOUT_S = 1.0  # closing a session politely; a dead server is not waited for


def silence_limit_s(keepalive_s: float, stale_after_s: float) -> float:
    """How long a subscription with this keep-alive period may be silent before it is judged
    dead: the longer of STALL_MARGIN keep-alive periods and the inputs' staleness (what
    docs/plc-interface.md states, rendered from here)."""
    return max(keepalive_s * STALL_MARGIN, stale_after_s)

POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes256Sha256RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
    "Aes128Sha256RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
}
MODES = {"SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
         "Sign": ua.MessageSecurityMode.Sign}

# asyncua logs every publish at INFO and tracebacks of expected failures (a refused
# certificate, a lost connection) at ERROR; the link reports those itself, once and clearly.
logging.getLogger("asyncua").setLevel(logging.CRITICAL)


def _without_password(arg: object) -> object:
    """An ActivateSession request with its user token's secret replaced; anything else as
    it is."""
    if not isinstance(arg, ua.ActivateSessionRequest):
        return arg
    token = arg.Parameters.UserIdentityToken
    if isinstance(token, ua.UserNameIdentityToken):
        token = dataclasses.replace(token, Password=b"(hidden)")
    elif isinstance(token, ua.IssuedIdentityToken):
        token = dataclasses.replace(token, TokenData=b"(hidden)")
    else:
        return arg
    params = dataclasses.replace(arg.Parameters, UserIdentityToken=token)
    return dataclasses.replace(arg, Parameters=params)


class _HidePasswords(logging.Filter):
    """asyncua's client logs every request it sends at DEBUG ("Sending: %s"), the
    ActivateSession request with the user's password in it (in the clear when the server's
    user token policy leaves it to the channel's encryption). Whatever level an operator
    gives asyncua's loggers, the password is replaced before any handler sees the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
                isinstance(a, ua.ActivateSessionRequest) for a in record.args):
            record.args = tuple(_without_password(a) for a in record.args)
        return True


_REQUEST_LOGGER = "asyncua.client.ua_client.UASocketProtocol"  # logs each request sent
if not any(isinstance(f, _HidePasswords) for f in logging.getLogger(_REQUEST_LOGGER).filters):
    logging.getLogger(_REQUEST_LOGGER).addFilter(_HidePasswords())


class OpcUaLinkError(Exception):
    """A connection that cannot be used: the message says why, naming the node or the file."""


class RefusedByServer(OpcUaLinkError):
    """A write or method call answered with a bad status: `status` is its name, the message
    names the node or the method."""

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class OpcUaLinkStats(LinkStats):
    publishes: int = 0  # publish responses received (data and keep-alives)
    keepalives: int = 0
    stalls: int = 0  # subscriptions judged dead (no publish within the keep-alive period)
    bad_values: int = 0  # publish responses withheld: an input bad or of the wrong type
    held_echoes: int = 0  # a new cmd_ack_seq that came without its status: held one response


def describe_error(exc: BaseException) -> str:
    """One line for an asyncua failure: the status name and its meaning where known."""
    if isinstance(exc, ua.UaStatusCodeError):
        name, doc = ua.status_codes.code_to_name_doc.get(exc.code, (f"0x{exc.code:08X}", ""))
        return f"{name}: {doc}" if doc else name
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


class _Session:
    """One connection: its client, resolved nodes and subscription. Thrown away whole."""

    def __init__(self, client: Client, generation: int) -> None:
        self.client = client
        self.generation = generation
        self.nodes: dict[str, ua.NodeId] = {}  # signal -> resolved NodeId
        self.method: tuple[ua.NodeId, ua.NodeId] | None = None
        self.handles: dict[int, NodeSignal] = {}  # monitored item client handle -> signal
        self.subscription_id: int | None = None
        self.raw: dict[str, Any] = {}  # signal -> last value (wire form)
        self.bad: dict[str, str] = {}  # signal -> why its latest value is unusable
        self.last_publish: float = 0.0  # loop time of the last publish response
        self.server_cert_expires: datetime | None = None
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self.problems: list[str] = []  # mapped nodes missing or not as the map says
        self.held_echo: Any = None  # a new cmd_ack_seq held back for its status
        self.publishing_s = 0.0  # the subscription as the server granted it
        self.keepalive_s = 0.0


class OpcUaPlcLink(PlcLink):
    """PlcLink over OPC UA. Stats: `polls` images delivered, `poll_errors` input updates
    missed (publish responses withheld for bad or wrong-typed inputs, dead subscriptions,
    failed connects), `writes` /
    `write_errors` acknowledged / failed output writes, `exceptions` bad status codes by
    name, `reconnects` connection attempts after a failure, plus `publishes`,
    `keepalives`, `stalls` and `bad_values`.

    An exception raised by on_inputs or on_connection ends run(): a broken core must not
    keep the heartbeat alive."""

    def __init__(
        self,
        section: OpcUaSection,
        nmap: NodeMap,
        *,
        heartbeat_period: float,
        stale_after: float = 0.0,
        clock: Clock = time.monotonic,
        backoff_min: float = BACKOFF_MIN_S,
        backoff_max: float = BACKOFF_MAX_S,
        logger: Any = None,
    ) -> None:
        super().__init__()
        self.stats: OpcUaLinkStats = OpcUaLinkStats()
        hb = nmap.signals.get(HEARTBEAT)
        if hb is None or hb.direction != "out" or hb.enum is not None or hb.type == "Boolean":
            raise ValueError(f"the contract has no numeric output signal {HEARTBEAT}")
        self.section = section
        self.nmap = nmap
        self.heartbeat_period = heartbeat_period
        self.stale_after = stale_after  # [plc] stale_after_s: the shortest silence judged dead
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self._clock = clock
        self._log = (logger or structlog.get_logger(__name__)).bind(plc=section.endpoint)
        self._limited = RateLimitedWarnings(self._log, LOG_INTERVAL)
        self._security = None if section.security_policy == "None" else \
            POLICIES[section.security_policy]
        self._session: _Session | None = None
        self._generation = 0
        self._out = OutputBlock(
            lambda name: name in nmap.signals and nmap.signals[name].direction == "out",
            nmap.encode, heartbeat_period)
        self._written: dict[str, Any] | None = None  # wire values the PLC last acknowledged
        self._write_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._closing = False
        self._reported: bool | None = None
        self._fatal: BaseException | None = None  # raised by on_inputs: ends run()
        self._trust: TrustList | None = None  # made on first use
        self.last_refusal: str | None = None  # why the last connection was refused

    @classmethod
    def from_config(
        cls, plc: PlcSection, section: BaseModel, contract: PlcContract, clock: Clock
    ) -> Self:
        """`[plc]` gives the heartbeat period, `[plc.opcua]` the endpoint, the node map
        (None: the one shipped with the package), security and the subscription's
        intervals."""
        if not isinstance(section, OpcUaSection):
            raise TypeError(f"OpcUaPlcLink needs an OpcUaSection, not {type(section).__name__}")
        nmap = load_node_map(section.node_map, contract=contract)
        return cls(section, nmap, heartbeat_period=plc.heartbeat_period_s,
                   stale_after=plc.stale_after_s, clock=clock)

    # ------------------------------------------------------------------ interface

    @property
    def connected(self) -> bool:
        s = self._session
        return s is not None and s.subscription_id is not None and not s.lost.is_set()

    def set_outputs(self, values: dict[str, Any]) -> None:
        if self._out.merge(values):
            self._wake.set()

    async def write_now(self) -> float | None:
        if not self.connected:
            return None
        return await self._write(force=True)

    async def run(self) -> None:
        self._closing = False
        self._fatal = None
        self._stop.clear()
        backoff = self.backoff_min
        if self._security is None:
            self._log.warning("plc.opcua_insecure", policy="None",
                              note="no signature, no encryption: anyone on the network can "
                              "read and forge the PLC's signals")
        try:
            while not self._closing:
                session = await self._open()
                if session is not None:
                    self._report(True)
                    self._log.info("plc.connected", generation=session.generation)
                    if await self._cycle(session):
                        backoff = self.backoff_min  # only after a good image
                    if self._fatal is not None:
                        raise self._fatal
                    if self._closing:
                        break
                    self._log.warning("plc.disconnected", reason=session.lost_reason,
                                      last_error=self.stats.last_error)
                    await self._drop()
                self._report(False)
                self.stats.reconnects += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), backoff)
                backoff = min(backoff * 2, self.backoff_max)
        finally:
            await self._drop()
            if self._reported:
                self._report(False)

    async def close(self) -> None:
        self._closing = True
        self._stop.set()
        self._wake.set()
        s = self._session
        if s is not None:
            s.lost_reason = "closed"
            s.lost.set()

    # ------------------------------------------------------------------ connection

    def _new_client(self) -> Client:
        sec = self.section
        client = Client(sec.endpoint, timeout=sec.request_timeout_s, watchdog_intervall=1.0)
        client.application_uri = sec.application_uri
        client.name = "swapd"
        client.description = "swapd station controller"
        client.session_timeout = int(sec.session_timeout_s * 1000)
        return client

    async def _open(self) -> _Session | None:
        """Connect a new client within the connect deadline; None (logged) on failure."""
        self._generation += 1
        client = self._new_client()
        session = _Session(client, self._generation)
        self._session = session
        try:
            await asyncio.wait_for(self._connect(session), self.section.connect_timeout_s)
        except (Exception, TimeoutError) as exc:  # every asyncua failure is an Exception
            error = self._refusal(exc)
            self.stats.poll_errors += 1  # an input update that could not be had
            self.stats.last_error = f"connect: {error}"
            self._limited.warning("plc.connect_failed", error=error,
                                  reconnects=self.stats.reconnects)
            await self._drop()
            return None
        self.last_refusal = None
        self._out.resend()  # the PLC may have restarted: the whole block again
        self._written = None
        return session

    def _refusal(self, exc: BaseException) -> str:
        """Why a connect failed, in words an operator can act on."""
        text = describe_error(exc)
        if isinstance(exc, TimeoutError):
            text = (f"no answer within {self.section.connect_timeout_s:g} s "
                    "(plc.opcua.connect_timeout_s)")
        elif isinstance(exc, ua.UaError) and "No matching endpoints" in str(exc):
            text = (f"the server offers no endpoint with security policy "
                    f"{self.section.security_policy} and mode {self._mode_name()} "
                    "(plc.opcua.security_policy / security_mode)")
        elif isinstance(exc, ua.UaStatusCodeError) and exc.code in (
                ua.StatusCodes.BadUserAccessDenied, ua.StatusCodes.BadIdentityTokenRejected,
                ua.StatusCodes.BadIdentityTokenInvalid):
            text = self._user_refused(text)
        if isinstance(exc.__cause__, CertificateRejectedError):  # we refused the PLC
            text = str(exc.__cause__)
        elif isinstance(exc, ua.UaStatusCodeError) and "Certificate" in describe_error(exc):
            text = (f"{text} (the PLC refused swapd's certificate "
                    f"{self.section.certificate_path}: put it in the PLC's trusted list)")
        self.last_refusal = text
        return text

    def _user_refused(self, status: str) -> str:
        """The server refused the session's user: who, and what to check. A user token of a
        kind the server's endpoint does not offer is said so, with the kinds it offers."""
        sec = self.section
        if sec.username is not None:
            who, kind = f"user {sec.username}", ua.UserTokenType.UserName
            hint = f"check the password file {sec.password_file} or the user's rights on the PLC"
        elif sec.user_certificate is not None:
            who, kind = f"the X.509 user certificate {sec.user_certificate}", \
                ua.UserTokenType.Certificate
            hint = "check that the PLC accepts this certificate for a user, and its rights"
        else:
            who, kind = "an anonymous session", ua.UserTokenType.Anonymous
            hint = ("the PLC may want a user: plc.opcua.username and password_file, or "
                    "user_certificate and user_private_key")
        s = self._session
        policies = getattr(s.client, "_policy_ids", None) if s is not None else None
        if policies:  # the user token policies of the endpoint chosen (asyncua keeps them)
            offered = sorted({p.TokenType.name for p in policies
                              if isinstance(p.TokenType, ua.UserTokenType)})
            if kind.name not in offered:
                hint = (f"the endpoint offers no {kind.name} user token, only "
                        f"{', '.join(offered) or 'none'}")
        return f"the server refused {who}: {status} ({hint})"

    def _mode_name(self) -> str:
        return "None" if self._security is None else self.section.security_mode

    async def _connect(self, session: _Session, *, subscribe: bool = True) -> None:
        client, sec = session.client, self.section
        # swapd's own secret files first: one that cannot be used is refused before any
        # byte goes to the PLC (set_security asks the server for its endpoints)
        password = None
        if sec.username is not None and sec.password_file is not None:
            password = read_password(sec.password_file)
        elif sec.user_private_key is not None:
            check_private_key_file(sec.user_private_key, "plc.opcua.user_private_key")
        if self._security is not None:
            check_private_key_file(sec.private_key_path, "plc.opcua.private_key")
            if self._trust is None:
                self._trust = TrustList(sec.pki_dir, peer="server")
            client.certificate_validator = self._trust.validate
            await client.set_security(self._security, str(sec.certificate_path),
                                      str(sec.private_key_path),
                                      mode=MODES[sec.security_mode])
        if sec.username is not None and password is not None:
            client.set_user(sec.username)
            client.set_password(password)
        elif sec.user_certificate is not None and sec.user_private_key is not None:
            await client.load_client_certificate(str(sec.user_certificate))
            await client.load_private_key(Path(sec.user_private_key))
        await client.connect(auto_reconnect=False)
        # the session is up: an earlier refusal no longer holds (set again if what follows
        # fails), and no image goes out while it would still say so
        self.last_refusal = None
        client.connection_lost_callback = self._lost_callback(session)
        peer = getattr(client.security_policy, "peer_certificate", None)
        if peer:
            from cryptography import x509

            cert = x509.load_der_x509_certificate(peer)
            session.server_cert_expires = cert.not_valid_after_utc
        session.problems = await self._resolve(session)
        if not subscribe:
            return
        if session.problems:
            raise OpcUaLinkError("; ".join(session.problems))
        await self._subscribe(session)

    async def probe(self) -> list[str]:
        """Connect with the configured security and user, resolve every mapped node, check
        each one's node class, data type, array size and access, read the inputs once."""
        self._generation += 1
        session = _Session(self._new_client(), self._generation)
        self._session = session
        try:
            try:
                await asyncio.wait_for(self._connect(session, subscribe=False),
                                       self.section.connect_timeout_s)
            except (Exception, TimeoutError) as exc:
                raise ConnectionError(f"{self.section.endpoint}: {self._refusal(exc)}") \
                    from None
            problems = session.problems
            if not problems:
                problems = await self._read_inputs_once(session)
                # kept for check-config --probe's set-point comparison
                self.probed_inputs = dict(session.raw)
            return problems
        finally:
            await self._drop()

    async def _read_inputs_once(self, session: _Session) -> list[str]:
        params = ua.ReadParameters()
        inputs = self.nmap.inputs()
        for sig in inputs:
            params.NodesToRead.append(ua.ReadValueId(NodeId=session.nodes[sig.name],
                                                     AttributeId=ua.AttributeIds.Value))
        problems = []
        for sig, dv in zip(inputs, await session.client.uaclient.read(params), strict=True):
            item = ua.MonitoredItemNotification(ClientHandle=0, Value=dv)
            session.handles[0] = sig
            self._apply_item(session, item)
            if sig.name in session.bad:
                problems.append(f"{sig.name} ({sig.address}): {session.bad[sig.name]}")
        return problems

    def _lost_callback(self, session: _Session) -> Any:
        async def lost(exc: Exception) -> None:
            self._lose(session, f"connection lost: {describe_error(exc)}")
        return lost

    def _lose(self, session: _Session, reason: str) -> None:
        if not session.lost.is_set():
            session.lost_reason = reason
            session.lost.set()
            self._wake.set()

    async def _resolve(self, session: _Session) -> list[str]:
        """The NodeIds of every mapped signal (the namespace index, browse paths), checked
        to exist with the map's data type, array size and access: the problems found."""
        client, nmap = session.client, self.nmap
        try:
            ns = await client.get_namespace_index(nmap.namespace_uri)
        except ValueError:
            return [f"the server has no namespace {nmap.namespace_uri!r} "
                    f"(server.namespace_uri in {nmap.origin})"]
        problems: list[str] = []
        for sig in nmap.signals.values():
            if sig.node is not None:
                session.nodes[sig.name] = ua.NodeId.from_string(f"ns={ns};{sig.node}")
                continue
            assert sig.path is not None
            names = [f"{ns}:{p}" for p in (*nmap.root, *sig.path)]
            try:
                node = await client.nodes.objects.get_child(names)
            except ua.UaStatusCodeError as exc:
                problems.append(f"{sig.name} ({'/'.join((*nmap.root, *sig.path))}): no such "
                                f"browse path ({describe_error(exc)})")
                continue
            session.nodes[sig.name] = node.nodeid
        if nmap.output_mode == "method":
            assert nmap.method_object is not None and nmap.method is not None
            session.method = (ua.NodeId.from_string(f"ns={ns};{nmap.method_object}"),
                              ua.NodeId.from_string(f"ns={ns};{nmap.method}"))
        return problems + await check_nodes(client, nmap, session.nodes, session.method)

    async def _subscribe(self, session: _Session) -> None:
        sec, client = self.section, session.client
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = sec.publishing_interval_ms
        params.RequestedMaxKeepAliveCount = sec.keepalive_count
        params.RequestedLifetimeCount = sec.lifetime_count
        params.MaxNotificationsPerPublish = 0
        params.PublishingEnabled = True
        params.Priority = 0
        result = await client.uaclient.create_subscription(
            params, self._publish_callback(session))
        session.subscription_id = result.SubscriptionId
        # The server may revise both; the watchdog judges by what it granted.
        session.publishing_s = (result.RevisedPublishingInterval or
                                sec.publishing_interval_ms) / 1000
        session.keepalive_s = session.publishing_s * (result.RevisedMaxKeepAliveCount or
                                                      sec.keepalive_count)
        if session.keepalive_s > sec.quiet_period_s:
            self._limited.warning(
                "plc.subscription_revised", publishing_ms=session.publishing_s * 1000,
                keepalive_s=session.keepalive_s, requested_keepalive_s=sec.quiet_period_s,
                note="the server grants a slower subscription than configured; inputs may "
                "go stale between keep-alives")
        session.last_publish = asyncio.get_running_loop().time()
        items = []
        for i, sig in enumerate(self.nmap.inputs(), start=1):
            item = ua.MonitoredItemCreateRequest()
            item.ItemToMonitor = ua.ReadValueId(NodeId=session.nodes[sig.name],
                                                AttributeId=ua.AttributeIds.Value)
            item.MonitoringMode = ua.MonitoringMode.Reporting
            item.RequestedParameters = ua.MonitoringParameters(
                ClientHandle=i, SamplingInterval=sec.sampling_interval_ms,
                QueueSize=sec.queue_size, DiscardOldest=True)
            items.append(item)
            session.handles[i] = sig
        mparams = ua.CreateMonitoredItemsParameters()
        mparams.SubscriptionId = result.SubscriptionId
        mparams.TimestampsToReturn = ua.TimestampsToReturn.Neither
        mparams.ItemsToCreate = items
        results = await client.uaclient.create_monitored_items(mparams)
        bad = [f"{session.handles[i + 1].name}: {_code_name(r.StatusCode)}"
               for i, r in enumerate(results) if not r.StatusCode.is_good()]
        if bad:
            raise OpcUaLinkError(f"monitored items refused: {'; '.join(bad)}")

    async def _drop(self) -> None:
        """Throw the current client away: close the session politely if the server still
        answers within CLOSE_TIMEOUT_S, else cut the socket and end the client's tasks."""
        s = self._session
        self._session = None
        if s is None:
            return
        s.lost.set()
        client = s.client
        try:
            await asyncio.wait_for(client.disconnect(), CLOSE_TIMEOUT_S)
        except (Exception, TimeoutError):
            with contextlib.suppress(Exception):
                client.disconnect_socket()
        tasks = [getattr(client, name, None) for name in
                 ("_supervisor_task", "_stale_watchdog_task", "_renew_channel_task")]
        tasks.append(getattr(client.uaclient.session, "_publish_task", None))
        for task in tasks:
            if isinstance(task, asyncio.Task) and not task.done():
                task.cancel()

    def _report(self, up: bool) -> None:
        if self._reported is not up:
            self._reported = up
            if self.on_connection is not None:
                self.on_connection(up)

    # ------------------------------------------------------------------ inputs

    def _publish_callback(self, session: _Session) -> Any:
        def on_publish(result: ua.PublishResult) -> None:
            if session is not self._session or session.lost.is_set():
                return  # a session given up: nothing from before a reconnect
            t = self._clock()
            session.last_publish = asyncio.get_running_loop().time()
            self.stats.publishes += 1
            data = result.NotificationMessage.NotificationData or []
            if not data:
                self.stats.keepalives += 1
            if session.held_echo is not None:  # a response later: its state has come too
                session.raw[ECHO], session.held_echo = session.held_echo, None
            echo_before = session.raw.get(ECHO)
            changed: set[str] = set()
            for notification in data:
                if isinstance(notification, ua.DataChangeNotification):
                    for item in notification.MonitoredItems:
                        name = self._apply_item(session, item)
                        if name is not None:
                            changed.add(name)
                elif isinstance(notification, ua.StatusChangeNotification):
                    self._lose(session, "subscription ended by the server: "
                               f"{_code_name(notification.Status)}")
                    return
            echo = session.raw.get(ECHO)
            if echo_before is not None and echo != echo_before and \
                    not changed & HANDSHAKE_STATE:
                # A new echo without its status: separate monitored items may be sampled
                # from different PLC scans, so the status of this command may come in the
                # next response. Until then the image keeps the previous echo, never the
                # new echo with the old command's "done".
                session.held_echo, session.raw[ECHO] = echo, echo_before
                self.stats.held_echoes += 1
            self._deliver(session, t)
        return on_publish

    def _apply_item(self, session: _Session,
                    item: ua.MonitoredItemNotification) -> str | None:
        """Take one data change into the session's image; the signal's name if it was
        taken (good and of the right type), else None."""
        sig = session.handles.get(item.ClientHandle)
        if sig is None:
            return None
        dv = item.Value
        status = dv.StatusCode if dv is not None else None
        if status is not None and not status.is_good():
            name = _code_name(status)
            session.bad[sig.name] = f"{sig.name} ({sig.address}): status {name}"
            self.stats.exceptions[name] = self.stats.exceptions.get(name, 0) + 1
            return None
        variant = dv.Value if dv is not None else None
        try:
            if variant is None or variant.Value is None:
                raise NodeValueError(f"{sig.name} ({sig.address}): no value")
            expected = getattr(ua.VariantType, sig.type)
            if variant.VariantType != expected:
                raise NodeValueError(f"{sig.name} ({sig.address}): {sig.type} expected, got "
                                     f"{variant.VariantType.name}")
            sig.from_wire(variant.Value)
        except NodeValueError as exc:
            session.bad[sig.name] = str(exc)
            self.stats.exceptions["type_mismatch"] = \
                self.stats.exceptions.get("type_mismatch", 0) + 1
            return None
        session.raw[sig.name] = variant.Value
        session.bad.pop(sig.name, None)
        return sig.name

    def _deliver(self, session: _Session, t: float) -> None:
        if session.bad:
            self.stats.poll_errors += 1
            self.stats.bad_values += 1
            name, why = next(iter(session.bad.items()))
            self.stats.last_error = f"input {why}"
            self._limited.warning("plc.input_bad", signal=name, node=self.nmap.signals[
                name].address, error=why, bad=sorted(session.bad))
            return
        if len(session.raw) < len(session.handles):
            return  # not every input has come yet: no half image
        values = self.nmap.decode(session.raw)
        self.stats.polls += 1
        # the first image may come before run() has seen the connect end: the connection is
        # reported up first, never inputs from a link that says it is down
        self._report(True)
        if self.on_inputs is not None:
            try:
                self.on_inputs(values, t)
            except Exception as exc:  # asyncua's publish loop would swallow it: run() raises
                self._fatal = exc
                self._lose(session, f"on_inputs failed: {exc!r}")

    # ------------------------------------------------------------------ cycle

    async def _cycle(self, session: _Session) -> bool:
        """Write outputs until the session is lost or the link closes, while the watchdog
        judges the subscription. Returns True if at least one image was delivered."""
        loop = asyncio.get_running_loop()
        polls = self.stats.polls
        watchdog = asyncio.create_task(self._watch(session), name="opcua-watchdog")
        try:
            while not session.lost.is_set() and not self._closing:
                if self._out.due(loop.time()):
                    await self._write(force=False)
                self._wake.clear()
                wait = max(self._out.heartbeat_due - loop.time(), 0.001)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        return self.stats.polls > polls

    async def _watch(self, session: _Session) -> None:
        """The session's watchdog: no publish response (data or keep-alive) within the
        keep-alive period the server granted (x STALL_MARGIN), nor within the inputs'
        staleness, means a dead subscription; a server certificate that expires ends the
        session at that moment."""
        loop = asyncio.get_running_loop()
        while not session.lost.is_set():
            stall_after = self.silence_limit(session.keepalive_s)
            silent = loop.time() - session.last_publish
            if silent > stall_after:
                # A response may be waiting in the socket while this process was busy (the
                # loop itself late): give it one publishing interval before judging.
                await asyncio.sleep(session.publishing_s)
                if loop.time() - session.last_publish < silent:
                    continue
                silent = loop.time() - session.last_publish
                self.stats.stalls += 1
                self.stats.poll_errors += 1
                self._lose(session, f"subscription silent for {silent:.3f} s (keep-alive "
                           f"promised every {session.keepalive_s:g} s)")
                return
            expires = session.server_cert_expires
            if expires is not None and datetime.now(UTC) >= expires:
                self._lose(session, f"the server certificate expired at {expires.isoformat()}")
                return
            pause = max(stall_after - silent, session.publishing_s / 2, 0.001)
            if expires is not None:  # wake at the expiry, not up to a keep-alive period later
                left = (expires - datetime.now(UTC)).total_seconds()
                pause = min(pause, max(left, 0.001))
            await asyncio.sleep(pause)

    def silence_limit(self, keepalive_s: float) -> float:
        return silence_limit_s(keepalive_s, self.stale_after)

    async def _race(self, session: _Session, request: Any, timeout: float) -> Any:
        """Await a request, at most `timeout`, giving up at once if the session is lost."""
        task = asyncio.ensure_future(request)
        lost = asyncio.ensure_future(session.lost.wait())
        try:
            await asyncio.wait({task, lost}, timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if task.cancelled():
            if session.lost.is_set():
                raise ConnectionError(session.lost_reason or "connection lost")
            raise TimeoutError
        return task.result()

    async def _write(self, force: bool) -> float | None:
        """Write the outputs if they changed or the heartbeat is due (always if `force`);
        return the acknowledgement time, or None on failure."""
        async with self._write_lock:
            session = self._session
            if session is None or session.lost.is_set():
                return None
            loop = asyncio.get_running_loop()
            now = loop.time()
            if not force and not self._out.due(now):
                return None
            version, values = self._out.take(now)
            block = self.nmap.encode({**self.nmap.zero("out"), **values})
            try:
                if self.nmap.output_mode == "method":
                    await self._call(session, block)
                else:
                    await self._write_steps(session, block)
            except (Exception, TimeoutError) as exc:
                self.stats.write_errors += 1
                error = describe_error(exc)
                if isinstance(exc, RefusedByServer | ua.UaStatusCodeError):
                    name = exc.status if isinstance(exc, RefusedByServer) else \
                        error.split(":", 1)[0]
                    self.stats.exceptions[name] = self.stats.exceptions.get(name, 0) + 1
                self.stats.last_error = f"write: {error}"
                self._limited.warning("plc.write_error", error=error)
                if isinstance(exc, TimeoutError | ConnectionError | OSError):
                    self._lose(session, f"write: {error}")
                return None
            t = self._clock()
            self.stats.writes += 1
            self._out.acked(version)
            self._written = block
            return t

    async def _call(self, session: _Session, block: dict[str, Any]) -> None:
        assert session.method is not None
        request = ua.CallMethodRequest()
        request.ObjectId, request.MethodId = session.method
        request.InputArguments = [
            ua.Variant(block[name], getattr(ua.VariantType, self.nmap.signals[name].type))
            for name in self.nmap.arguments]
        (result,) = await self._race(session, session.client.uaclient.call([request]),
                                     self.section.request_timeout_s)
        if not result.StatusCode.is_good():
            status = _code_name(result.StatusCode)
            wrong = [f"{name} {_code_name(arg)}" for name, arg in zip(
                self.nmap.arguments, result.InputArgumentResults or [], strict=False)
                if not arg.is_good()]
            raise RefusedByServer(
                f"call {self.nmap.method} on {self.nmap.method_object}: {status}"
                + (f" (arguments: {', '.join(wrong)})" if wrong else ""), status)

    async def _write_steps(self, session: _Session, block: dict[str, Any]) -> None:
        previous = self._written
        for step in self.nmap.write_order:
            if previous is not None and HEARTBEAT not in step and \
                    all(previous.get(n) == block[n] for n in step):
                continue  # unchanged since the PLC last acknowledged it
            params = ua.WriteParameters()
            for name in step:
                sig = self.nmap.signals[name]
                wv = ua.WriteValue()
                wv.NodeId = session.nodes[name]
                wv.AttributeId = ua.AttributeIds.Value
                wv.Value = ua.DataValue(ua.Variant(block[name], getattr(ua.VariantType,
                                                                         sig.type)))
                params.NodesToWrite.append(wv)
            results = await self._race(session, session.client.uaclient.write(params),
                                       self.section.request_timeout_s)
            for name, status in zip(step, results, strict=True):
                if not status.is_good():
                    raise RefusedByServer(f"write {name} ({self.nmap.signals[name].address}): "
                                          f"{_code_name(status)}", _code_name(status))


def _code_name(status: ua.StatusCode | None) -> str:
    if status is None:
        return "Good"
    return ua.status_codes.code_to_name_doc.get(status.value, (f"0x{status.value:08X}", ""))[0]


def _good(dv: ua.DataValue) -> bool:
    return dv.StatusCode is None or dv.StatusCode.is_good()


def _value(dv: ua.DataValue) -> Any:
    return dv.Value.Value if dv.Value is not None else None


async def check_nodes(client: Client, nmap: NodeMap, nodes: dict[str, ua.NodeId],
                      method: tuple[ua.NodeId, ua.NodeId] | None) -> list[str]:
    """Every mapped node: does it exist, is it a variable of the map's data type and array
    size, can the controller read it (inputs) and write it ("write" mode outputs)? One
    line per problem, naming the signal and the node; empty when all is well."""
    attrs = (ua.AttributeIds.NodeClass, ua.AttributeIds.DataType, ua.AttributeIds.ValueRank,
             ua.AttributeIds.ArrayDimensions, ua.AttributeIds.UserAccessLevel)
    params = ua.ReadParameters()
    names = list(nodes)
    for name in names:
        for attr in attrs:
            params.NodesToRead.append(ua.ReadValueId(NodeId=nodes[name], AttributeId=attr))
    if method is not None:
        for node in method:
            params.NodesToRead.append(ua.ReadValueId(NodeId=node,
                                                     AttributeId=ua.AttributeIds.NodeClass))
    results = await client.uaclient.read(params)
    problems: list[str] = []
    for i, name in enumerate(names):
        sig = nmap.signals[name]
        where = f"{name} ({sig.address})"
        ncls, dtype, rank, dims, access = results[i * len(attrs):(i + 1) * len(attrs)]
        if not _good(ncls):
            problems.append(f"{where}: missing ({_code_name(ncls.StatusCode)})")
            continue
        if _value(ncls) != ua.NodeClass.Variable:
            problems.append(f"{where}: not a variable ({ua.NodeClass(_value(ncls)).name})")
            continue
        want = ua.NodeId(getattr(ua.ObjectIds, sig.type), ua.Int16(0))
        if _value(dtype) != want:
            problems.append(f"{where}: data type {_type_name(_value(dtype))}, the map says "
                            f"{sig.type}")
        r, d = _value(rank), _value(dims)
        if sig.count > 1:
            if r != 1 or (d and list(d) != [sig.count]):
                problems.append(f"{where}: expected a one-dimensional array of {sig.count}, "
                                f"value rank {r}, dimensions {d}")
        elif r not in (-1, None):
            problems.append(f"{where}: expected a scalar, value rank {r}")
        level = _value(access)
        if isinstance(level, int):
            if not level & ua.AccessLevel.CurrentRead.mask:
                problems.append(f"{where}: not readable by this user")
            if sig.direction == "out" and nmap.output_mode == "write" and \
                    not level & ua.AccessLevel.CurrentWrite.mask:
                problems.append(f"{where}: not writable by this user (output, write mode)")
    if method is not None:
        base = len(names) * len(attrs)
        for label, node, res, want_cls in (
                ("outputs.object", method[0], results[base], ua.NodeClass.Object),
                ("outputs.method", method[1], results[base + 1], ua.NodeClass.Method)):
            if not _good(res):
                problems.append(f"{label} ({node.to_string()}): missing "
                                f"({_code_name(res.StatusCode)})")
            elif _value(res) != want_cls:
                problems.append(f"{label} ({node.to_string()}): not of node class "
                                f"{want_cls.name}")
    return problems


def _type_name(node: Any) -> str:
    if isinstance(node, ua.NodeId) and node.NamespaceIndex == 0:
        for name in ("Boolean", "SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64",
                     "UInt64", "Float", "Double", "String", "DateTime", "ByteString"):
            if node.Identifier == getattr(ua.ObjectIds, name):
                return name
    return str(node)
