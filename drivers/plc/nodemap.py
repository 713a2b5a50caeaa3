"""The OPC UA addressing of the PLC contract: one data file, loaded against the contract.

The contract (drivers/plc/contract.toml) says what each signal is; the node map
(maps/opcua_map.toml) says where it lives in the PLC's address space and how it is typed
there: a NodeId in the map's namespace (`s=SwapStation.Inputs.lift_height`), or a browse
path under the map's root, and the OPC UA built-in data type of the variable. Loading checks
the two together: every contract signal mapped exactly once, no name the contract does not
know, data types that carry the engineering types, no node used twice, and an output
block the controller can write safely.

Outputs are written in one of two ways (`[outputs] mode`):
- "method": one call of a method whose input arguments are the whole output block, in
  `[outputs] arguments` order: the PLC takes the set as one consistent block.
- "write": one Write request per step of `[outputs] write_order`, in that order, each
  awaited before the next; `cmd_seq` must come last, so a PLC never sees a new sequence
  number with the previous command's code or parameters.

Values: OPC UA carries engineering values (no scale). Enumerated signals carry their code.
Like the register map, two vocabularies: "names" (the contract's value names, what the
link hands to the core) and "codes" (the integer on the wire, as the simulator uses them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, get_args

from drivers.datafile import load_toml
from drivers.plc.contract import (
    UNKNOWN_PREFIX,
    AddressedSignal,
    ContractSignal,
    Direction,
    Enumeration,
    PlcContract,
    load_contract,
)

OpcType = Literal["Boolean", "Int16", "UInt16", "Int32", "UInt32", "Float", "Double"]
OutputMode = Literal["method", "write"]
Vocabulary = Literal["names", "codes"]

DEFAULT_MAP = "opcua_map.toml"
SEQ_SIGNAL = "cmd_seq"  # written last: a new value asks the PLC to run the command
INT_RANGES: dict[str, tuple[int, int]] = {
    "Int16": (-0x8000, 0x7FFF), "UInt16": (0, 0xFFFF),
    "Int32": (-0x8000_0000, 0x7FFF_FFFF), "UInt32": (0, 0xFFFF_FFFF),
}
FLOAT_MAX = {"Float": 3.4028234663852886e38, "Double": 1.7976931348623157e308}
# A NodeId inside the map's namespace: numeric, string, GUID or opaque (base64)
_NODE_ID = re.compile(r"^(i=\d{1,10}|s=[^\x00-\x1f]{1,400}|"
                      r"g=[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-"
                      r"[0-9A-Fa-f]{12}|b=[A-Za-z0-9+/=]{1,400})$")
_BROWSE_NAME = re.compile(r"^[^/\x00-\x1f]{1,200}$")
_SIGNAL_KEYS = {"name", "node", "path", "type"}
_TOP_KEYS = {"contract_version", "server", "outputs", "signal"}
_SERVER_KEYS = {"namespace_uri", "root"}
_OUTPUT_KEYS = {"mode", "object", "method", "arguments", "write_order"}


class NodeMapError(ValueError):
    """The node map file is inconsistent, or does not fit the contract; the message names
    the file and the signal."""


class NodeValueError(ValueError):
    """A value read from, or to be written to, a node does not fit its signal (wrong
    type, wrong length, out of range); the message names the signal and the node."""


@dataclass(frozen=True)
class NodeSignal(AddressedSignal):
    """One contract signal at its node."""

    name: str
    node: str | None  # a NodeId in the map's namespace ("s=..."), or None: `path`
    path: tuple[str, ...] | None  # browse names under the map's root
    type: OpcType
    spec: ContractSignal
    enum: Enumeration | None = None

    @property
    def address(self) -> str:
        """Where the signal lives, as the map says it ("s=..." or a browse path)."""
        if self.node is not None:
            return self.node
        assert self.path is not None
        return "/".join(self.path)

    # -------------------------------------------------------------- element <-> wire

    def _element_to_wire(self, value: Any) -> bool | int | float:
        t = self.type
        if t == "Boolean":
            if not isinstance(value, bool | int) or (isinstance(value, int) and \
                    not isinstance(value, bool) and value not in (0, 1)):
                raise NodeValueError(f"{self.name}: {value!r} is not a boolean")
            return bool(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise NodeValueError(f"{self.name}: {value!r} is not a number")
        if t in INT_RANGES:
            if isinstance(value, float) and not value.is_integer():
                raise NodeValueError(f"{self.name}: {value!r} is not an integer ({t})")
            lo, hi = INT_RANGES[t]
            if not lo <= value <= hi:
                raise NodeValueError(f"{self.name}: {value} out of range for {t} "
                                     f"({lo}..{hi})")
            return int(value)
        f = float(value)
        if not math.isfinite(f) or abs(f) > FLOAT_MAX[t]:
            raise NodeValueError(f"{self.name}: {value!r} is not a finite {t}")
        return f

    def _element_from_wire(self, raw: Any) -> bool | int | float:
        t = self.type
        if t == "Boolean":
            if not isinstance(raw, bool):
                raise NodeValueError(f"{self.name} ({self.address}): Boolean expected, got "
                                     f"{type(raw).__name__} {raw!r:.40}")
            return raw
        if t in INT_RANGES:
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise NodeValueError(f"{self.name} ({self.address}): {t} expected, got "
                                     f"{type(raw).__name__} {raw!r:.40}")
            lo, hi = INT_RANGES[t]
            if not lo <= raw <= hi:
                raise NodeValueError(f"{self.name} ({self.address}): {raw} out of range "
                                     f"for {t}")
            return raw
        if isinstance(raw, bool) or not isinstance(raw, int | float) or \
                not math.isfinite(raw):
            raise NodeValueError(f"{self.name} ({self.address}): a finite {t} expected, "
                                 f"got {type(raw).__name__} {raw!r:.40}")
        return float(raw) if self.spec.type == "float" else int(raw)

    # -------------------------------------------------------------- whole values

    def to_wire(self, value: Any, enums: Vocabulary = "names") -> Any:
        """Contract value -> the node's value (a list of `count` for an array; absent
        trailing elements are 0). An enumerated signal takes a value name ("names") or a
        code ("codes"). NodeValueError naming the signal for a bad value."""
        if self.count > 1:
            if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
                raise NodeValueError(f"{self.name}: an array of {self.count} expected")
            items = list(value)
            if len(items) > self.count:
                raise NodeValueError(f"{self.name}: {len(items)} elements, at most "
                                     f"{self.count}")
            zero = False if self.type == "Boolean" else 0
            items += [zero] * (self.count - len(items))
            return [self._element_to_wire(v) for v in items]
        if self.enum is not None and enums == "names":
            code = self.enum.code(value) if isinstance(value, str) else None
            if code is None:
                raise NodeValueError(f"{self.name}: {value!r} is not a value of enumeration "
                                     f"{self.enum.name} ({', '.join(self.enum.names())})")
            value = code
        return self._element_to_wire(value)

    def from_wire(self, raw: Any, enums: Vocabulary = "names") -> Any:
        """The node's value -> contract value (enumerated: value name, "unknown_<code>"
        for a code the contract does not define). NodeValueError, naming the signal and
        the node, for a value of the wrong type or length."""
        if self.count > 1:
            if not isinstance(raw, list | tuple) or len(raw) != self.count:
                got = f"{len(raw)} elements" if isinstance(raw, list | tuple) else \
                    f"{type(raw).__name__}"
                raise NodeValueError(f"{self.name} ({self.address}): an array of "
                                     f"{self.count} {self.type} expected, got {got}")
            return [self._element_from_wire(v) for v in raw]
        value = self._element_from_wire(raw)
        if self.enum is not None and enums == "names":
            name = self.enum.name_of(int(value))
            return name if name is not None else f"{UNKNOWN_PREFIX}{int(value)}"
        return value


@dataclass(frozen=True)
class NodeMap:
    contract: PlcContract
    origin: str  # the node map file, for messages
    namespace_uri: str
    root: tuple[str, ...]  # browse names from the Objects folder to the station's object
    output_mode: OutputMode
    method_object: str | None  # "method" mode: the object that owns the method (NodeId)
    method: str | None  # and the method (NodeId)
    arguments: tuple[str, ...]  # "method" mode: the output signals, in argument order
    write_order: tuple[tuple[str, ...], ...]  # "write" mode: the Write requests, in order
    signals: dict[str, NodeSignal] = field(default_factory=dict)

    def inputs(self) -> list[NodeSignal]:
        return [s for s in self.signals.values() if s.direction == "in"]

    def outputs(self) -> list[NodeSignal]:
        return [s for s in self.signals.values() if s.direction == "out"]

    def decode(self, raw: Mapping[str, Any], enums: Vocabulary = "names") -> dict[str, Any]:
        """{signal: node value} -> {signal: contract value}; NodeValueError for the first
        value that does not fit."""
        return {n: self.signals[n].from_wire(v, enums) for n, v in raw.items()}

    def encode(self, values: Mapping[str, Any], enums: Vocabulary = "names") -> dict[str, Any]:
        """{signal: contract value} -> {signal: node value}; NodeValueError (a ValueError)
        naming the signal for an unknown name or a bad value."""
        out: dict[str, Any] = {}
        for name, value in values.items():
            sig = self.signals.get(name)
            if sig is None:
                raise NodeValueError(f"{name} is not a signal of the PLC contract")
            out[name] = sig.to_wire(value, enums)
        return out

    def zero(self, direction: Direction, enums: Vocabulary = "names") -> dict[str, Any]:
        """Every signal of a direction at its zero value (enumerated: the code 0's name)."""
        out: dict[str, Any] = {}
        for sig in self.signals.values():
            if sig.direction != direction:
                continue
            z: Any = False if sig.type == "Boolean" else 0.0 if sig.spec.type == "float" else 0
            if sig.enum is not None and enums == "names":
                z = sig.enum.name_of(0) or f"{UNKNOWN_PREFIX}0"
            out[sig.name] = [z] * sig.count if sig.count > 1 else z
        return out


def load_node_map(path: str | Path | None = None, *,
                  contract: PlcContract | None = None) -> NodeMap:
    """Load a node map and check it against the contract. None loads the map shipped with
    the package; a contract of None the contract shipped with the package."""
    contract = contract or load_contract()
    data, origin = load_toml(path, "drivers.plc.maps", DEFAULT_MAP, NodeMapError)
    return _build(data, origin, contract)


# ---------------------------------------------------------------------------- checks

_Fail = Callable[[str], NodeMapError]


def _build(data: dict[str, Any], origin: str, contract: PlcContract) -> NodeMap:
    def fail(msg: str) -> NodeMapError:
        return NodeMapError(f"{origin}: {msg}")

    extra = set(data) - _TOP_KEYS
    if extra:
        raise fail(f"unknown top-level keys {sorted(extra)}")
    version = data.get("contract_version")
    if version != contract.version:
        raise fail(f"contract_version {version!r} does not match the contract "
                   f"({contract.origin}, version {contract.version!r})")
    server = data.get("server")
    if not isinstance(server, dict) or set(server) != _SERVER_KEYS:
        have = sorted(server) if isinstance(server, dict) else []
        raise fail(f"[server] must have exactly {sorted(_SERVER_KEYS)}, has {have}")
    uri = server["namespace_uri"]
    if not isinstance(uri, str) or not uri or len(uri) > 400 or not uri.isprintable():
        raise fail(f"server.namespace_uri {uri!r} must be a non-empty URI")
    root = _browse_path(server["root"], "server.root", fail)

    raw_signals = data.get("signal", [])
    if not isinstance(raw_signals, list) or not all(isinstance(t, dict) for t in raw_signals):
        raise fail("signal must be an array of tables [[signal]]")
    signals: dict[str, NodeSignal] = {}
    where: dict[str, str] = {}
    for i, raw in enumerate(raw_signals):
        sig = _signal(raw, i, contract, fail)
        if sig.name in signals:
            raise fail(f"signal {sig.name} defined twice")
        if sig.address in where:
            raise fail(f"signal {sig.name}: node {sig.address} is already {where[sig.address]}")
        signals[sig.name] = sig
        where[sig.address] = sig.name
    missing = [n for n in contract.signals if n not in signals]
    if missing:
        raise fail(f"contract signal(s) {', '.join(missing)} not mapped "
                   f"(contract {contract.origin})")
    ordered = {n: signals[n] for n in contract.signals}
    mode, obj, method, arguments, write_order = _outputs(data.get("outputs"), ordered, fail)
    if obj is not None and (obj in where or method in where or obj == method):
        raise fail("outputs.object and outputs.method must be nodes of their own")
    return NodeMap(contract=contract, origin=origin, namespace_uri=uri, root=root,
                   output_mode=mode, method_object=obj, method=method, arguments=arguments,
                   write_order=write_order, signals=ordered)


def _browse_path(raw: object, where: str, fail: _Fail) -> tuple[str, ...]:
    if not isinstance(raw, str) or not raw:
        raise fail(f"{where} must be a browse path (names joined by '/')")
    parts = tuple(raw.split("/"))
    for p in parts:
        if not _BROWSE_NAME.fullmatch(p):
            raise fail(f"{where}: {p!r} is not a browse name")
    return parts


def _node_id(raw: object, where: str, fail: _Fail) -> str:
    if not isinstance(raw, str) or not _NODE_ID.fullmatch(raw):
        raise fail(f"{where}: {raw!r} is not a NodeId in the map's namespace (i=NUMBER, "
                   "s=STRING, g=GUID or b=BASE64; the namespace is server.namespace_uri)")
    return raw


def _signal(raw: Mapping[str, Any], index: int, contract: PlcContract,
            fail: _Fail) -> NodeSignal:
    name = raw.get("name")
    if not isinstance(name, str):
        raise fail(f"signal #{index + 1}: name missing")
    spec = contract.signals.get(name)
    if spec is None:
        raise fail(f"signal {name} is not a signal of the contract ({contract.origin})")
    extra = set(raw) - _SIGNAL_KEYS
    if extra:
        raise fail(f"signal {name}: unknown keys {sorted(extra)} (only name, node or path, "
                   "and type here; the rest is in the contract)")
    if ("node" in raw) == ("path" in raw):
        raise fail(f"signal {name}: give either node (a NodeId) or path (a browse path "
                   "under server.root)")
    node = _node_id(raw["node"], f"signal {name} node", fail) if "node" in raw else None
    path = _browse_path(raw["path"], f"signal {name} path", fail) if "path" in raw else None
    type_ = raw.get("type")
    if type_ not in get_args(OpcType):
        raise fail(f"signal {name}: type {type_!r} is not one of {', '.join(get_args(OpcType))}")
    type_ = cast(OpcType, type_)
    fits = {"bool": ("Boolean",), "int": tuple(INT_RANGES), "float": ("Float", "Double")}
    if type_ not in fits[spec.type]:
        raise fail(f"signal {name}: OPC UA type {type_} does not carry the contract's "
                   f"{spec.type} ({', '.join(fits[spec.type])})")
    enum = contract.enums[spec.enum] if spec.enum is not None else None
    if enum is not None:
        lo, hi = INT_RANGES[type_]
        too_big = [v.name for v in enum.values if not lo <= v.code <= hi]
        if too_big:
            raise fail(f"signal {name}: codes of {', '.join(too_big)} do not fit {type_}")
    return NodeSignal(name=name, node=node, path=path, type=type_, spec=spec, enum=enum)


def _outputs(
    raw: object, signals: dict[str, NodeSignal], fail: _Fail,
) -> tuple[OutputMode, str | None, str | None, tuple[str, ...], tuple[tuple[str, ...], ...]]:
    if not isinstance(raw, dict):
        raise fail("[outputs] missing (mode = \"method\" or \"write\")")
    extra = set(raw) - _OUTPUT_KEYS
    if extra:
        raise fail(f"[outputs]: unknown keys {sorted(extra)}")
    mode = raw.get("mode")
    if mode not in get_args(OutputMode):
        raise fail(f"outputs.mode {mode!r} must be \"method\" or \"write\"")
    outputs = [n for n, s in signals.items() if s.direction == "out"]

    def names(value: object, where: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fail(f"{where} must be a list of output signal names")
        for v in value:
            if v not in outputs:
                raise fail(f"{where}: {v!r} is not an output signal of the contract")
        return list(value)

    if mode == "method":
        if set(raw) != {"mode", "object", "method", "arguments"}:
            raise fail("[outputs] mode \"method\" takes object, method and arguments")
        obj = _node_id(raw["object"], "outputs.object", fail)
        method = _node_id(raw["method"], "outputs.method", fail)
        args = names(raw["arguments"], "outputs.arguments")
        if sorted(args) != sorted(outputs):
            raise fail(f"outputs.arguments must name every output signal once "
                       f"({', '.join(outputs)})")
        return "method", obj, method, tuple(args), ()
    if set(raw) != {"mode", "write_order"}:
        raise fail("[outputs] mode \"write\" takes write_order")
    steps = raw["write_order"]
    if not isinstance(steps, list) or not steps:
        raise fail("outputs.write_order must be a list of lists of output signal names")
    order = [tuple(names(step, f"outputs.write_order[{i}]")) for i, step in enumerate(steps)]
    flat = [n for step in order for n in step]
    if sorted(flat) != sorted(outputs):
        raise fail(f"outputs.write_order must name every output signal once "
                   f"({', '.join(outputs)})")
    if SEQ_SIGNAL in outputs and order[-1] != (SEQ_SIGNAL,):
        raise fail(f"outputs.write_order: {SEQ_SIGNAL} must be alone in the last write, so "
                   "the PLC sees a new command only once its code and parameters are in")
    return "write", None, None, (), tuple(order)
