"""The simulated PLC as an OPC UA server: a real asyncua server over the mechanics model.

The node map (drivers/plc/maps/opcua_map.toml, the contract's OPC UA addressing) lays the
address space out: an object for each level of the map's root under Objects, objects
for the dotted levels of each signal's string NodeId below it (`s=SwapStation.Inputs.
lift_height` is the variable `lift_height` of the object `s=SwapStation.Inputs`), every
variable with exactly the map's NodeId and data type. Input variables are read-only for
clients; output variables hold the last block the PLC took and are writable only in map
mode "write". Values go to and from the model as codes, like the Modbus server.

- mode "method": one call of the map's method with the whole output block; the handler
  hands the block to the model exactly as a Modbus write of the block would;
- mode "write": the output nodes of one Write request are merged into the block and
  handed to the model together.

Every `scan_s` real seconds the model is advanced and each input whose value changed is
written to its node (subscriptions see it); an output block taken refreshes the inputs at
once. PackML status after OPC 30050 (`Status/StateCurrent`, `Status/UnitModeCurrent`)
under the station object.

Clients connect through a TCP relay (sim_hw/tcp_relay.py): the server listens on a free
inner port, the relay on the configured one; while the PLC is silent (paused, plc_silent,
network_down) the relay black-holes every byte both ways and keeps the connections open.
`restart()` stops the server and starts it again on the same inner port with the same
certificate and address space contents (after `down_s` seconds with nothing listening, as
a PLC rebooting): every session dies, the relay stays.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import gc
import hmac
import inspect
import ipaddress
import logging
import socket
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from asyncua import Node, Server, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.address_space import AttributeValue, NodeData
from asyncua.server.internal_server import InternalServer
from asyncua.server.internal_session import InternalSession
from asyncua.server.internal_subscription import InternalSubscription
from cryptography import x509

from drivers.plc.nodemap import NodeMap, NodeSignal, NodeValueError
from drivers.plc.opcua_security import TrustList, create_application_certificate
from sim_hw.config import OPCUA_NO_SECURITY, OpcUaConfig
from sim_hw.mechanics import CONTRACT, StationModel
from sim_hw.plc_server import HEARTBEAT_PERIOD_S, Clock
from sim_hw.tcp_relay import TcpRelay

log = logging.getLogger(__name__)

APPLICATION_URI = "urn:swapstation:sim-plc"
PRODUCT_URI = "urn:swapstation:sim"
CERT_NAME = "sim-plc"  # pki_dir/own/certs/sim-plc.der, pki_dir/own/private/sim-plc.pem
CERT_DAYS = 3650
WRONG_TYPE_VALUE = "garbage"  # opcua_wrong_type: the node's value becomes this String

# PackML (ISA-TR88.00.02, OPC 30050 PackML): StateCurrent numbers and UnitModeCurrent
PACKML_STOPPED = 2
PACKML_IDLE = 4
PACKML_EXECUTE = 6
PACKML_ABORTED = 9
PACKML_HELD = 11
UNIT_MODE_PRODUCTION = 1

_CMD_BUSY = CONTRACT.enums["cmd_status"].code("busy")
_STOP_CAT1 = CONTRACT.enums["stop_request"].code("cat1")
_STOP_CAT2 = CONTRACT.enums["stop_request"].code("cat2")


def _map_node_id(spec: str, ns: int) -> ua.NodeId:
    """A map NodeId ("i=..", "s=..", "g=..", "b=..") in namespace `ns`."""
    kind, _, text = spec.partition("=")
    ident: Any = text
    if kind == "i":
        ident = int(text)
    elif kind == "g":
        ident = uuid.UUID(text)
    elif kind == "b":
        ident = base64.b64decode(text)
    return _nid(ident, ns)


def _status(code: int) -> ua.StatusCode:
    return ua.StatusCode(ua.UInt32(code))


def _now() -> Any:
    """Now, for a DataValue's timestamps (asyncua's stubs want their DateTime)."""
    return datetime.now(UTC)


def _nid(ident: Any, ns: Any) -> ua.NodeId:
    """ua.NodeId (asyncua's stubs want its Int16, Int32, String... wrappers)."""
    return ua.NodeId(ident, ns)


_GOOD = _status(ua.StatusCodes.Good)


WriteOutputs = Callable[[list[Any]], "ua.StatusCode | Awaitable[ua.StatusCode | None] | None"]


class _Layout:
    """Lays a node map out in a server's address space (see build_address_space)."""

    def __init__(self, server: Server, node_map: NodeMap) -> None:
        self.server = server
        self.map = node_map
        self.ns = 0
        self.root_ident = ".".join(node_map.root)
        self._declared: set[ua.NodeId] = set()
        self._used: set[ua.NodeId] = set()
        self._objects: dict[tuple[str, ...], Node] = {}
        self._types = {s.name: ua.VariantType[s.type] for s in node_map.signals.values()}

    def qname(self, name: str) -> ua.QualifiedName:
        return ua.QualifiedName(name, self.ns)

    def fresh(self, ident: str) -> ua.NodeId:
        """A string NodeId for a node the map does not name, clear of every map NodeId."""
        nid, n = _nid(ident, self.ns), 1
        while nid in self._declared or nid in self._used:
            nid, n = _nid(f"{ident}~{n}", self.ns), n + 1
        self._used.add(nid)
        return nid

    async def object(self, path: tuple[str, ...], nid: ua.NodeId | None = None) -> Node:
        """The object at a browse path under the root object, made (with its parents)
        if new."""
        have = self._objects.get(path)
        if have is not None:
            if nid is not None and have.nodeid != nid:
                raise ValueError(f"{self.map.origin}: {nid.to_string()} and "
                                 f"{have.nodeid.to_string()} would both be "
                                 f"{'/'.join((*self.map.root, *path))}")
            return have
        up = await self.object(path[:-1])
        if nid is None:
            nid = self.fresh(".".join((self.root_ident, *path)))
        else:
            self._used.add(nid)
        made = await up.add_object(nid, self.qname(path[-1]))
        self._objects[path] = made
        return made

    def place(self, spec: str | None, fallback: str) -> tuple[tuple[str, ...], str]:
        """(object path under root, browse name) of a map NodeId: the dotted levels of a
        string NodeId below the root's name, else a child of the root named `fallback`."""
        if spec is not None and spec.startswith("s="):
            ident, prefix = spec[2:], self.root_ident + "."
            if ident.startswith(prefix) and len(ident) > len(prefix):
                parts = tuple(ident[len(prefix):].split("."))
                if all(parts):
                    return parts[:-1], parts[-1]
        return (), fallback

    async def build(self, write_outputs: WriteOutputs) -> dict[str, Node]:
        m = self.map
        self.ns = ns = await self.server.register_namespace(m.namespace_uri)
        self._declared = {_map_node_id(s.node, ns) for s in m.signals.values() if s.node}
        for spec in (m.method_object, m.method):
            if spec is not None:
                self._declared.add(_map_node_id(spec, ns))
        parent: Node = self.server.nodes.objects
        for i, name in enumerate(m.root):
            parent = await parent.add_object(self.fresh(".".join(m.root[: i + 1])),
                                             self.qname(name))
        self._objects = {(): parent}
        owner: Node | None = None
        if m.output_mode == "method":  # first: the outputs' own object may be the method's
            assert m.method_object is not None
            opath, oname = self.place(m.method_object, "Outputs")
            owner = await self.object((*opath, oname), _map_node_id(m.method_object, ns))
        nodes: dict[str, Node] = {}
        for sig in m.signals.values():
            if sig.node is not None:
                path, name = self.place(sig.node, sig.name)
                nid = _map_node_id(sig.node, ns)
                self._used.add(nid)
            else:
                assert sig.path is not None
                path, name = sig.path[:-1], sig.path[-1]
                nid = self.fresh(".".join((self.root_ident, *sig.path)))
            parent = await self.object(path)
            vt = self._types[sig.name]
            wire = sig.to_wire(m.zero(sig.direction, enums="codes")[sig.name], enums="codes")
            var = await parent.add_variable(nid, self.qname(name), wire, varianttype=vt)
            if sig.count > 1:  # asyncua makes every variable without dimensions
                await var.write_attribute(ua.AttributeIds.ValueRank, ua.DataValue(
                    ua.Variant(ua.ValueRank.OneDimension, ua.VariantType.Int32)))
                await var.write_attribute(ua.AttributeIds.ArrayDimensions, ua.DataValue(
                    ua.Variant([sig.count], ua.VariantType.UInt32)))
            await var.write_attribute(ua.AttributeIds.Description, ua.DataValue(ua.Variant(
                ua.LocalizedText(sig.description), ua.VariantType.LocalizedText)))
            if sig.direction == "out" and m.output_mode == "write":
                await var.set_writable()
            nodes[sig.name] = var
        if owner is not None:
            assert m.method is not None
            _, mname = self.place(m.method, "WriteOutputs")
            args = [ua.Argument(Name=n, DataType=_nid(self._types[n].value, 0), ValueRank=-1,
                                Description=ua.LocalizedText(m.signals[n].description))
                    for n in m.arguments]
            await owner.add_method(_map_node_id(m.method, ns), self.qname(mname),
                                   self._method(owner.nodeid, write_outputs), args, [])
        return nodes

    def _method(self, owner: ua.NodeId,
                write_outputs: WriteOutputs) -> Callable[..., Awaitable[Any]]:
        names = self.map.arguments
        signals = self.map.signals

        async def call(parent: ua.NodeId, *args: Any) -> ua.CallMethodResult:
            if parent != owner:  # called on another object (asyncua does not check)
                return ua.CallMethodResult(StatusCode=_status(ua.StatusCodes.BadMethodInvalid))
            if len(args) != len(names):
                log.info("%s refused: %d arguments, %d expected", self.map.method, len(args),
                         len(names))
                return ua.CallMethodResult(StatusCode=_status(ua.StatusCodes.BadInvalidArgument))
            results = [_GOOD if isinstance(a, ua.Variant) and a.VariantType == self._types[n]
                       and bool(a.is_array) == (signals[n].count > 1)
                       else _status(ua.StatusCodes.BadTypeMismatch)
                       for n, a in zip(names, args, strict=True)]
            if not all(r.is_good() for r in results):
                log.info("%s refused: wrong type for %s", self.map.method, ", ".join(
                    n for n, r in zip(names, results, strict=True) if not r.is_good()))
                return ua.CallMethodResult(StatusCode=_status(ua.StatusCodes.BadTypeMismatch),
                                           InputArgumentResults=results)
            status = write_outputs([a.Value for a in args])
            if inspect.isawaitable(status):
                status = await status
            return ua.CallMethodResult(StatusCode=status or _GOOD, InputArgumentResults=results)

        return call


async def build_address_space(server: Server, node_map: NodeMap,
                              write_outputs: WriteOutputs) -> dict[str, Node]:
    """Lay a node map out in `server` (initialised, not yet started) and return each
    signal's variable by signal name.

    The map's namespace is registered; an object for each level of the map's root under
    Objects; objects for the dotted levels of each string NodeId below the root's name
    (`s=SwapStation.Inputs.lift_height`: object `s=SwapStation.Inputs`, variable
    `lift_height`), other NodeIds and `path` signals placed under the root; every variable
    with exactly the map's NodeId, data type (arrays: ValueRank 1, ArrayDimensions [count])
    and the zero value, read-only, output variables writable in map mode "write". In mode
    "method" the map's method, its input arguments in `arguments` order: a call with a
    wrong count is answered BadInvalidArgument, a wrong type BadTypeMismatch, else
    `write_outputs(values)` (the raw values in argument order; sync or async) decides:
    a StatusCode, or None for Good.
    """
    return await _Layout(server, node_map).build(write_outputs)


class _Users:
    """asyncua user manager: the configured username/password pairs, or anonymous when
    there are none. Refused: get_user returns None and asyncua answers BadUserAccessDenied.
    Passwords are compared in constant time and never logged."""

    def __init__(self, users: dict[str, str]) -> None:
        self._users = {u: p.encode() for u, p in users.items()}

    def get_user(self, iserver: InternalServer, username: str | None = None,
                 password: str | None = None, certificate: Any = None) -> User | None:
        if not self._users:
            return User(role=UserRole.User, name=username)
        if username is None or password is None:
            log.info("OPC UA session refused: no user name (users are configured)")
            return None
        want = self._users.get(username)
        given = password.encode() if isinstance(password, str) else bytes(password)
        if want is None or not hmac.compare_digest(want, given):
            log.info("OPC UA session refused for user %r: wrong user name or password",
                     username)
            return None
        return User(role=UserRole.User, name=username)


class _Session(InternalSession):
    """A client's session: counts the requests, refuses a session over a channel without
    security when "None" is not offered, applies writes to output nodes as one block."""

    plc: OpcUaPlcServer

    def activate_session(self, params: ua.ActivateSessionParameters,
                         peer_certificate: bytes | None) -> ua.ActivateSessionResult:
        # asyncua keeps a channel it could not match to a policy on its default policy
        # None, so a client asking for None gets a channel even when None is not offered;
        # a channel with security always carries the client's certificate.
        if not peer_certificate and not self.plc.offers_no_security:
            log.info("OPC UA session refused: security policy None is not offered")
            raise ServiceError(ua.StatusCodes.BadSecurityPolicyRejected)
        return super().activate_session(params, peer_certificate)

    async def read(self, params: ua.ReadParameters) -> list[ua.DataValue]:
        self.plc.requests += 1
        return await super().read(params)

    async def call(self, params: list[ua.CallMethodRequest]) -> list[ua.CallMethodResult]:
        self.plc.requests += 1
        return await super().call(params)

    def publish(self, acks: Iterable[ua.SubscriptionAcknowledgement] | None = None,
                ) -> tuple[int, list[ua.StatusCode]]:
        self.plc.requests += 1
        return super().publish(acks)

    async def create_subscription(self, params: ua.CreateSubscriptionParameters,
                                  callback: Callable[..., Any],
                                  request_callback: Callable[..., Any] | None = None,
                                  ) -> ua.CreateSubscriptionResult:
        result = await super().create_subscription(params, callback, request_callback)
        sub = self.subscription_service.subscriptions.get(result.SubscriptionId)
        if sub is not None:
            self.plc.hook_subscription(sub)
        return result

    async def write(self, params: ua.WriteParameters) -> list[ua.StatusCode]:
        self.plc.requests += 1
        return await self.plc.client_write(params, super().write)


# The standard address space (nodes of namespace 0) as asyncua makes it, kept after the
# first server of the process: making it takes asyncua 1.5-3 s, copying it 60 ms.
_standard_space: tuple[dict[ua.NodeId, NodeData], dict[int, int]] | None = None


def _copy_nodes(nodes: dict[ua.NodeId, NodeData]) -> dict[ua.NodeId, NodeData]:
    """Nodes a server may change without touching the originals: own attribute holders and
    reference lists; the values (replaced, never changed in place) and the reference
    descriptions are shared."""
    out: dict[ua.NodeId, NodeData] = {}
    for nid, node in nodes.items():
        c = NodeData(nid)
        c.attributes = {a: AttributeValue(cast(ua.DataValue, v.value))
                        for a, v in node.attributes.items()}
        c.references = list(node.references)
        c.call = node.call
        out[nid] = c
    return out


class _InternalServer(InternalServer):
    def __init__(self, plc: OpcUaPlcServer, users: _Users) -> None:
        super().__init__(user_manager=users)  # type: ignore[arg-type]
        self.plc = plc

    async def load_standard_address_space(self, shelf_file: Path | None = None) -> None:
        global _standard_space
        aspace = self.aspace
        if _standard_space is None:
            await super().load_standard_address_space(shelf_file)
            _standard_space = (_copy_nodes(aspace._nodes), dict(aspace._nodeid_counter))
            # Hundreds of thousands of objects kept for the process's life: out of the
            # cyclic collector's sight, or each full collection stops the event loop (the
            # simulated PLC and, in one process, swapd) for 0.3-0.4 s.
            gc.collect()
            gc.freeze()
            return
        nodes, counters = _standard_space
        aspace._nodes = _copy_nodes(nodes)
        aspace._nodeid_counter = dict(counters)

    def create_session(self, name: str, user: User | None = None,
                       external: bool = False) -> InternalSession:
        user = user or User(role=UserRole.Anonymous)
        if not external:
            return super().create_session(name, user, external)
        session = _Session(self, self.aspace, self.subscription_service, name, user=user,
                           external=external)
        session.plc = self.plc
        return session


class OpcUaPlcServer:
    """The PLC over OPC UA. Same surface as PlcServer (`start`, `stop`, `pause`, `resume`,
    `paused`, `silent`, `port`, `requests`, `dropped`) plus `endpoint`, `inner_port`,
    `server_certificate_path`, `refresh()`, `restart()` and the `relay`."""

    def __init__(
        self,
        model: StationModel,
        node_map: NodeMap,
        clock: Clock,
        config: OpcUaConfig | None = None,
    ) -> None:
        if node_map.contract.enums != CONTRACT.enums:
            raise ValueError(f"{node_map.origin}: its contract ({node_map.contract.origin}) "
                             "codes differ from the simulator's")
        promised = node_map.contract.timing.plc_heartbeat_period_ms / 1000
        if promised < HEARTBEAT_PERIOD_S:
            raise ValueError(f"plc_heartbeat every {HEARTBEAT_PERIOD_S} s breaks the contract's "
                             f"{promised} s")
        self.model = model
        self.map = node_map
        self.clock = clock
        self.config = config or OpcUaConfig()
        self.host = self.config.host
        self.port = self.config.port  # the relay's bound port once started (0 = any free)
        self.inner_port = 0  # the asyncua server's own port, behind the relay
        self.requests = 0  # reads, writes, calls and publish requests handled
        self.relay: TcpRelay | None = None
        self._paused = False
        self._server: Server | None = None
        self._nodes: dict[str, ua.NodeId] = {}  # signal -> its variable
        self._by_node: dict[ua.NodeId, NodeSignal] = {}
        self._state_node: ua.NodeId | None = None
        self._mode_node: ua.NodeId | None = None
        self._outputs: dict[str, Any] = node_map.zero("out", enums="codes")
        self._published: dict[str, tuple[Any, str]] = {}
        self._pending: list[tuple[ua.NodeId, ua.DataValue]] = []
        self._notifying: set[asyncio.Task[None]] = set()  # refresh()'s notifications
        self._scan_task: asyncio.Task[None] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._pki: Path | None = None
        self._trust: TrustList | None = None
        self._real0 = 0.0
        self._types = {sig.name: ua.VariantType[sig.type] for sig in node_map.signals.values()}
        self._inputs = node_map.inputs()

    # ------------------------------------------------------------ the surface
    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Go silent: the relay drops every byte both ways (a hung PLC, a cut cable)."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    @property
    def silent(self) -> bool:
        """Not answering: paused, or the plc_silent / network_down fault is set."""
        return self._paused or self.model.faults.plc_silent()

    @property
    def dropped(self) -> int:
        """Chunks the relay dropped while silent (both directions)."""
        return self.relay.dropped if self.relay is not None else 0

    @property
    def endpoint(self) -> str:
        """The URL clients use: opc.tcp://host:port/path (the relay's port)."""
        return f"opc.tcp://{self._url_host}:{self.port}{self.config.path}"

    @property
    def offers_no_security(self) -> bool:
        return OPCUA_NO_SECURITY in self.config.policy_types()

    @property
    def pki_dir(self) -> Path:
        if self._pki is None:
            raise RuntimeError("the OPC UA server has not been started")
        return self._pki

    @property
    def server_certificate_path(self) -> Path:
        """The server's certificate (DER), for a client's trusted/certs."""
        return self.pki_dir / "own" / "certs" / f"{CERT_NAME}.der"

    @property
    def server_key_path(self) -> Path:
        return self.pki_dir / "own" / "private" / f"{CERT_NAME}.pem"

    def node_id(self, signal: str) -> ua.NodeId:
        """The variable of a contract signal (KeyError for an unknown name)."""
        return self._nodes[signal]

    @property
    def _inner_host(self) -> str:
        """Where the server itself listens: loopback, reached only through the relay."""
        return "::1" if ":" in self.host else "127.0.0.1"

    @property
    def _url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    # ------------------------------------------------------------ life cycle
    async def start(self) -> None:
        self._prepare_pki()
        self._real0 = self.clock()[1]
        self.relay = TcpRelay(self.host, self.config.port, silent=lambda: self.silent)
        await self.relay.start()
        self.port = self.relay.port
        try:
            await self._start_server()
        except BaseException:
            await self.relay.stop()
            self.relay = None
            raise
        self.relay.target = (self._inner_host, self.inner_port)
        self._scan_task = asyncio.create_task(self._scan(), name="opcua-plc-scan")
        log.info("OPC UA PLC at %s (server on inner port %d), policies %s, %s", self.endpoint,
                 self.inner_port, ", ".join(self.config.policies),
                 "users " + ", ".join(sorted(self.config.users)) if self.config.users
                 else "anonymous")

    async def stop(self) -> None:
        await self._stop_scan()
        await self._stop_server()
        if self.relay is not None:
            await self.relay.stop()
            self.relay = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def restart(self, down_s: float = 0.0) -> None:
        """Stop the server and start it again on the same inner port, with the same
        certificate and address space contents: every client session dies (its connection
        is closed); the relay keeps listening. For `down_s` seconds between the stop and
        the start nothing listens behind the relay (a PLC takes seconds to reboot): a
        client that connects meanwhile is closed at once, as by a PLC whose port is shut."""
        if self._server is None:
            raise RuntimeError("the OPC UA server is not running")
        await self._stop_scan()
        await self._stop_server()
        if self.relay is not None:
            self.relay.cut()
        if down_s > 0:
            await asyncio.sleep(down_s)
        await self._start_server(self.inner_port)
        self._scan_task = asyncio.create_task(self._scan(), name="opcua-plc-scan")
        log.info("OPC UA PLC restarted at %s", self.endpoint)

    def refresh(self) -> None:
        """Advance the model to now and put every changed input in its node at once, and
        tell its subscribers at once too (a fault, a command taken: as asyncua's own
        monitored items do on a write, not at the next scan). A no-op when stopped."""
        if self._server is None:
            return
        self._pending.extend(self._update_inputs())
        if not self._pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called from outside the loop: the next scan tells them
            return
        task = loop.create_task(self._notify())
        self._notifying.add(task)
        task.add_done_callback(self._notifying.discard)

    # ------------------------------------------------------------ certificates
    def _prepare_pki(self) -> None:
        if self.config.pki_dir is not None:
            self._pki = Path(self.config.pki_dir)
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="sim-plc-pki-")
            self._pki = Path(self._tmp.name)
        self._trust = TrustList(self._pki, peer="client")
        self._trust.ensure_dirs()
        if not self.server_certificate_path.exists() or not self.server_key_path.exists():
            self._make_certificate()

    def _make_certificate(self) -> None:
        # localhost and the configured host, and this machine's name (asyncua warns at
        # every start when its certificate lacks it)
        names: list[str] = []
        ips: list[str] = []
        for name in ("localhost", self.host, socket.gethostname()):
            try:
                ipaddress.ip_address(name)
            except ValueError:
                if name and name not in names:
                    names.append(name)
            else:
                if name not in ips:
                    ips.append(name)
        kwargs: dict[str, Any]
        if self.config.certificate_valid_s is not None:
            start = datetime.now(UTC)
            kwargs = {"not_before": start,
                      "not_after": start + timedelta(seconds=self.config.certificate_valid_s)}
        else:
            kwargs = {"days": CERT_DAYS}
        create_application_certificate(
            self.server_certificate_path, self.server_key_path,
            application_uri=APPLICATION_URI, common_name="swapstation sim PLC",
            hostnames=tuple(names), ip_addresses=tuple(ips), overwrite=True, **kwargs)
        log.info("OPC UA PLC certificate made: %s", self.server_certificate_path)

    async def _validate_client(self, cert: x509.Certificate,
                               app: ua.ApplicationDescription) -> None:
        """Only the client certificates in pki_dir/trusted/certs (or issued by a CA
        there); a refused one is copied to pki_dir/rejected/certs."""
        assert self._trust is not None
        await self._trust.validate(cert, app)

    # ------------------------------------------------------------ the server
    async def _start_server(self, inner_port: int = 0) -> None:
        cfg = self.config
        server = Server(iserver=_InternalServer(self, _Users(cfg.users)))
        await server.init()
        server.set_server_name("swapstation simulated PLC")
        # asyncua's clock task makes stop() wait up to a second; the scan sets the time
        server.disable_clock(True)
        server.product_uri = PRODUCT_URI
        await server.set_application_uri(APPLICATION_URI)
        # Clients reach the server through the relay: the endpoints say the relay's URL
        # (or, as asyncua does by default, the host and port the client asked for), while
        # the server itself listens on the inner port.
        server.set_endpoint(self.endpoint)
        server.socket_address = (self._inner_host, inner_port)
        server.set_match_discovery_client_ip(False)
        server.set_match_discovery_endpoint_url(True)
        server.set_security_policy([ua.SecurityPolicyType[p] for p in cfg.policy_types()])
        server.set_identity_tokens([ua.UserNameIdentityToken] if cfg.users
                                   else [ua.AnonymousIdentityToken])
        await server.load_certificate(str(self.server_certificate_path))
        await server.load_private_key(str(self.server_key_path))
        if not cfg.trust_any_client:
            server.set_certificate_validator(self._validate_client)
        await self._build(server)
        await server.start()
        assert server.bserver is not None
        self.inner_port = int(server.bserver.port)
        self._server = server
        self._published.clear()
        self._pending.clear()
        self._pending.extend(self._update_inputs())
        await self._notify()

    async def _stop_server(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        try:
            await server.stop()
        except Exception:
            log.exception("OPC UA PLC: stopping the server failed")
        # asyncua keeps a session with subscriptions after its connection is lost (for the
        # client to take it over on a new channel) until the session times out; a stopped
        # server forgets them all
        sessions = getattr(server.iserver, "_external_sessions", {})
        for session in list(sessions.values()):
            with contextlib.suppress(Exception):
                await session.close_session(True)

    async def _stop_scan(self) -> None:
        if self._scan_task is not None:
            self._scan_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scan_task
            self._scan_task = None

    async def _build(self, server: Server) -> None:
        """The node map's address space with the current output block, zero inputs (the
        first scan writes them) and the PackML status."""
        layout = _Layout(server, self.map)
        nodes = await layout.build(self._take_block)
        self._nodes = {name: node.nodeid for name, node in nodes.items()}
        self._by_node = {nid: self.map.signals[name] for name, nid in self._nodes.items()}
        for name, value in self._outputs.items():
            sig = self.map.signals[name]
            await nodes[name].write_value(ua.Variant(sig.to_wire(value, enums="codes"),
                                                     self._types[name]))
        status = await layout.object(("Status",))
        state = await status.add_variable(layout.fresh(f"{layout.root_ident}.Status.StateCurrent"),
                                          layout.qname("StateCurrent"),
                                          ua.Variant(PACKML_IDLE, ua.VariantType.Int32))
        mode = await status.add_variable(
            layout.fresh(f"{layout.root_ident}.Status.UnitModeCurrent"),
            layout.qname("UnitModeCurrent"),
            ua.Variant(UNIT_MODE_PRODUCTION, ua.VariantType.Int32))
        self._state_node, self._mode_node = state.nodeid, mode.nodeid

    # ------------------------------------------------------------ inputs
    async def _scan(self) -> None:
        period = self.config.scan_s
        clock_at = 0.0
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                if loop.time() - clock_at >= 1.0:
                    clock_at = loop.time()
                    self._pending.extend(self._server_time())
                self._pending.extend(self._update_inputs())
                self._hook_all_subscriptions()
                await self._notify()
            except Exception:  # a bug must show up loudly, not stop the PLC silently
                log.exception("OPC UA PLC scan failed")
            # a PLC's scan: every period, whatever the work took (changes stored by
            # refresh() meanwhile are readable at once, told to subscribers here)
            next_at = max(next_at + period, loop.time())
            await asyncio.sleep(next_at - loop.time())

    def _update_inputs(self) -> list[tuple[ua.NodeId, ua.DataValue]]:
        """Advance the model, store every changed input in its node (reads see it at
        once) and return the changes, whose subscribers _notify tells."""
        if self._server is None:
            return []
        now, real = self.clock()
        self.model.advance(now, real)
        values = self.model.inputs()
        values["plc_heartbeat"] = int((real - self._real0) / HEARTBEAT_PERIOD_S) & 0xFFFF
        faults = self.model.faults
        bad = faults.active("opcua_bad_status")
        wrong = faults.active("opcua_wrong_type")
        stamp = _now()
        changes: list[tuple[ua.NodeId, ua.DataValue]] = []
        for sig in self._inputs:
            raw = values[sig.name]
            mode = "wrong" if wrong is not None and wrong.target == sig.name else \
                "bad" if bad is not None and bad.target == sig.name else "good"
            key = (tuple(raw) if isinstance(raw, list) else raw, mode)
            if self._published.get(sig.name) == key:
                continue  # unchanged: not encoded again, not written again
            self._published[sig.name] = key
            v = sig.to_wire(raw, enums="codes")
            if mode == "wrong":
                variant = ua.Variant(WRONG_TYPE_VALUE, ua.VariantType.String)
            else:
                variant = ua.Variant(v, self._types[sig.name])
            status = _status(ua.StatusCodes.BadSensorFailure) if mode == "bad" else _GOOD
            changes.append((self._nodes[sig.name], ua.DataValue(
                variant, StatusCode=status, SourceTimestamp=stamp, ServerTimestamp=stamp)))
        state = self.packml_state()
        if self._state_node is not None and self._published.get("StateCurrent") != (state, ""):
            self._published["StateCurrent"] = (state, "")
            changes.append((self._state_node, ua.DataValue(
                ua.Variant(state, ua.VariantType.Int32), StatusCode=_GOOD,
                SourceTimestamp=stamp, ServerTimestamp=stamp)))
        self._store(changes)
        return changes

    def _server_time(self) -> list[tuple[ua.NodeId, ua.DataValue]]:
        """Server/ServerStatus/CurrentTime (and the ServerStatus structure's copy) now,
        as asyncua's own clock task would."""
        if self._server is None:
            return []
        aspace = self._aspace()
        now = _now()
        status_id = _nid(ua.ObjectIds.Server_ServerStatus, 0)
        time_id = _nid(ua.ObjectIds.Server_ServerStatus_CurrentTime, 0)
        changes = [(time_id, ua.DataValue(ua.Variant(now, ua.VariantType.DateTime),
                                          SourceTimestamp=now, ServerTimestamp=now))]
        current = aspace.read_attribute_value(status_id, ua.AttributeIds.Value)
        if current.Value is not None and isinstance(current.Value.Value,
                                                    ua.ServerStatusDataType):
            status = copy.copy(current.Value.Value)
            status.CurrentTime = now
            changes.append((status_id, ua.DataValue(
                ua.Variant(status, ua.VariantType.ExtensionObject), SourceTimestamp=now,
                ServerTimestamp=now)))
        self._store(changes)
        return changes

    def packml_state(self) -> int:
        """PackML StateCurrent from the model: the safety chain open -> Aborted; a stop
        request -> Held (cat2) or Stopped (cat1); a command running -> Execute; else Idle."""
        m = self.model
        if not m.safety_ok:
            return PACKML_ABORTED
        if m.stop_request == _STOP_CAT2:
            return PACKML_HELD
        if m.stop_request == _STOP_CAT1:
            return PACKML_STOPPED
        if m.cmd_status == _CMD_BUSY:
            return PACKML_EXECUTE
        return PACKML_IDLE

    def _store(self, changes: list[tuple[ua.NodeId, ua.DataValue]]) -> None:
        """Put values in their nodes as they are: no type check (opcua_wrong_type puts a
        String in a Float node) and a bad status keeps its value (asyncua's own write
        would null it); subscriptions are told by _notify."""
        if not changes:
            return
        aspace = self._aspace()
        for nid, dv in changes:
            attval = aspace[nid].attributes[ua.AttributeIds.Value]
            attval.value = dv
            attval.value_callback = None

    async def _notify(self) -> None:
        pending, self._pending = self._pending, []
        if not pending or self._server is None:
            return
        aspace = self._aspace()
        for nid, dv in pending:
            attval = aspace[nid].attributes[ua.AttributeIds.Value]
            for handle, callback in list(attval.datachange_callbacks.items()):
                try:
                    await callback(handle, dv)
                except Exception:
                    log.exception("OPC UA data change of %s failed", nid.to_string())

    def _aspace(self) -> Any:
        if self._server is None:
            raise RuntimeError("the OPC UA server is not running")
        return self._server.iserver.aspace

    # ------------------------------------------------------------ outputs
    def _refused(self) -> bool:
        return self.model.faults.is_active("opcua_write_refused")

    def _take_outputs(self, values: dict[str, Any]) -> None:
        """Merge output values (codes) into the block, hand the whole block to the model
        as PlcServer does for a Modbus write, update the output nodes and the inputs."""
        now, real = self.clock()
        block = dict(self._outputs)
        block.update(values)
        self.model.set_outputs(block, now, real)
        self._outputs = block
        stamp = _now()
        changes = []
        for name in values:
            sig = self.map.signals[name]
            changes.append((self._nodes[name], ua.DataValue(
                ua.Variant(sig.to_wire(block[name], enums="codes"), self._types[name]),
                StatusCode=_GOOD, SourceTimestamp=stamp, ServerTimestamp=stamp)))
        self._store(changes)
        self._pending.extend(changes)
        self.refresh()

    def _take_block(self, args: list[Any]) -> ua.StatusCode | None:
        """The map's method, its arguments checked for count and type by the layout: the
        whole output block in `arguments` order."""
        if self._refused():
            return _status(ua.StatusCodes.BadUserAccessDenied)
        try:
            values = {name: self.map.signals[name].from_wire(v, enums="codes")
                      for name, v in zip(self.map.arguments, args, strict=True)}
        except (NodeValueError, ValueError) as exc:
            log.info("WriteOutputs refused: %s", exc)
            return _status(ua.StatusCodes.BadInvalidArgument)
        self._take_outputs(values)
        return None

    async def client_write(
        self, params: ua.WriteParameters,
        write: Callable[[ua.WriteParameters], Any],
    ) -> list[ua.StatusCode]:
        """A client's Write request: output nodes refused while opcua_write_refused is
        set; in map mode "write" the output nodes written are taken as one block."""
        items = list(params.NodesToWrite)
        ours = [wv.AttributeId == ua.AttributeIds.Value and wv.NodeId in self._by_node
                and self._by_node[wv.NodeId].direction == "out" for wv in items]
        if any(ours) and self._refused():
            return [_status(ua.StatusCodes.BadUserAccessDenied) for _ in items]
        results: list[ua.StatusCode | None] = [None] * len(items)
        values: dict[str, Any] = {}
        if self.map.output_mode == "write":
            for i, (wv, mine) in enumerate(zip(items, ours, strict=True)):
                if not mine:
                    continue
                sig = self._by_node[wv.NodeId]
                variant = wv.Value.Value if wv.Value is not None else None
                if variant is None or variant.VariantType != self._types[sig.name]:
                    results[i] = _status(ua.StatusCodes.BadTypeMismatch)
                    continue
                try:
                    values[sig.name] = sig.from_wire(variant.Value, enums="codes")
                except NodeValueError:
                    results[i] = _status(ua.StatusCodes.BadOutOfRange)
        todo = [wv for wv, r in zip(items, results, strict=True) if r is None]
        done = iter(await write(ua.WriteParameters(NodesToWrite=todo)) if todo else [])
        final = [r if r is not None else next(done) for r in results]
        taken = {sig_name: v for sig_name, v in values.items()
                 if final[self._index(items, sig_name)].is_good()}
        if taken:
            self._take_outputs(taken)
        return final

    def _index(self, items: list[ua.WriteValue], name: str) -> int:
        nid = self._nodes[name]
        return next(i for i in range(len(items) - 1, -1, -1) if items[i].NodeId == nid)

    # ------------------------------------------------------------ subscriptions
    def _stalled(self) -> bool:
        return self.model.faults.is_active("opcua_subscription_stall")

    def hook_subscription(self, sub: InternalSubscription) -> None:
        """Make a subscription publish nothing (no data, no keep-alive) while
        opcua_subscription_stall is set; it publishes again once cleared."""
        if getattr(sub, "_sim_hooked", False):
            return
        publish = sub.publish_results

        async def publish_results(requestdata: Any = None) -> bool:
            if self._stalled():
                return False
            return await publish(requestdata)

        sub.publish_results = publish_results  # type: ignore[method-assign]
        sub._sim_hooked = True  # type: ignore[attr-defined]

    def _hook_all_subscriptions(self) -> None:
        if self._server is None:
            return
        for sub in list(self._server.iserver.subscription_service.subscriptions.values()):
            self.hook_subscription(sub)


__all__ = ["APPLICATION_URI", "OpcUaPlcServer"]
