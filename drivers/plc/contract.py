"""The PLC interface contract: one data file (contract.toml), loaded and checked here.

The contract names every signal the controller and the station PLC exchange, its
engineering type, unit and direction, the enumerations that give names to coded values,
and the command table. It says nothing about where a signal lives on the wire: each
protocol has its own addressing file that refers to the signals by name (Modbus TCP:
drivers/plc/regmap.py and maps/modbus_map.toml).

Enumerated signals are spoken of by value name on the controller's side (`cmd_status` is
"busy", `cmd_code` is "LIFT"); `encode_enum` / `decode_enum` convert to and from the codes
on the wire. The station core's own vocabulary (station.image) uses the same names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from drivers.datafile import load_toml

EngineeringType = Literal["bool", "int", "float"]
Direction = Literal["in", "out"]

DEFAULT_CONTRACT = "contract.toml"
COMMAND_ENUM = "command"  # the enumeration made of the [[command]] table
UNKNOWN_PREFIX = "unknown_"  # decode_enum of a code the contract does not know: unknown_<code>
_UNKNOWN_NAME = re.compile(rf"{UNKNOWN_PREFIX}\d+")

_SIGNAL_KEYS = {"name", "type", "direction", "description", "unit", "count", "enum"}
_VALUE_KEYS = {"name", "code", "description"}
_TOP_KEYS = {"version", "timing", "signal", "enum", "command"}


class ContractError(ValueError):
    """The contract file is inconsistent; the message names the file and the entry."""


_Fail = Callable[[str], ContractError]


@dataclass(frozen=True)
class EnumValue:
    name: str
    code: int
    description: str


@dataclass(frozen=True)
class Enumeration:
    """Named codes of an enumerated signal, in file order."""

    name: str
    values: tuple[EnumValue, ...]

    def names(self) -> list[str]:
        return [v.name for v in self.values]

    def code(self, name: str) -> int | None:
        for v in self.values:
            if v.name == name:
                return v.code
        return None

    def name_of(self, code: int) -> str | None:
        for v in self.values:
            if v.code == code:
                return v.name
        return None


@dataclass(frozen=True)
class ContractSignal:
    name: str
    type: EngineeringType
    direction: Direction
    description: str
    unit: str = ""
    count: int = 1
    enum: str | None = None


class AddressedSignal:
    """What a protocol's addressing of a signal (regmap.Signal, nodemap.NodeSignal) says
    through the contract: its direction, array size, unit and meaning come from `spec`."""

    spec: ContractSignal

    @property
    def direction(self) -> Direction:
        return self.spec.direction

    @property
    def count(self) -> int:
        return self.spec.count

    @property
    def unit(self) -> str:
        return self.spec.unit

    @property
    def description(self) -> str:
        return self.spec.description


@dataclass(frozen=True)
class Command:
    name: str
    code: int
    description: str


@dataclass(frozen=True)
class Timing:
    """What each side promises the other, in milliseconds."""

    ctrl_heartbeat_period_ms: int  # the controller writes a new ctrl_heartbeat at least this often
    ctrl_heartbeat_timeout_ms: int  # the PLC stops when ctrl_heartbeat is frozen this long
    plc_heartbeat_period_ms: int  # the PLC increments plc_heartbeat at least this often
    plc_heartbeat_timeout_ms: int  # the controller judges the PLC dead after this long
    handshake_timeout_ms: int  # the PLC echoes a new cmd_seq within this
    sensor_grace_ms: int  # after done, the result's inputs agree within this
    stop_cause_grace_ms: int  # after error stopped, its cause is reported within this


@dataclass(frozen=True)
class PlcContract:
    version: str
    origin: str  # the file it was loaded from, for messages
    timing: Timing
    signals: dict[str, ContractSignal] = field(default_factory=dict)
    commands: dict[str, Command] = field(default_factory=dict)
    # Every enumeration by name, the command table included as COMMAND_ENUM.
    enums: dict[str, Enumeration] = field(default_factory=dict)

    def inputs(self) -> list[ContractSignal]:
        return [s for s in self.signals.values() if s.direction == "in"]

    def outputs(self) -> list[ContractSignal]:
        return [s for s in self.signals.values() if s.direction == "out"]

    def enum_of(self, signal: str) -> Enumeration | None:
        """The enumeration of an enumerated signal, None for any other signal."""
        sig = self.signals.get(signal)
        if sig is None:
            raise ValueError(f"{signal} is not a signal of the PLC contract ({self.origin})")
        return self.enums[sig.enum] if sig.enum is not None else None

    def encode_enum(self, signal: str, name: str) -> int:
        """Value name -> code of an enumerated signal; ValueError naming the signal when the
        name is not one of its values (or the signal is not enumerated)."""
        enum = self.enum_of(signal)
        if enum is None:
            raise ValueError(f"{signal} is not an enumerated signal of the PLC contract")
        code = enum.code(name) if isinstance(name, str) else None
        if code is None:
            raise ValueError(f"{signal}: {name!r} is not a value of enumeration {enum.name} "
                             f"({', '.join(enum.names())})")
        return code

    def decode_enum(self, signal: str, raw: int) -> str:
        """Code -> value name of an enumerated signal; a code the contract does not know
        decodes to "unknown_<code>" (never a valid name, so it matches nothing)."""
        enum = self.enum_of(signal)
        if enum is None:
            raise ValueError(f"{signal} is not an enumerated signal of the PLC contract")
        name = enum.name_of(raw)
        return name if name is not None else f"{UNKNOWN_PREFIX}{raw}"

    def command_code(self, name: str) -> int:
        """Command name -> its code; ValueError for a name not in the command table."""
        cmd = self.commands.get(name)
        if cmd is None:
            raise ValueError(f"{name!r} is not a command of the PLC contract "
                             f"({', '.join(self.commands)})")
        return cmd.code

    def command_name(self, code: int) -> str | None:
        return self.enums[COMMAND_ENUM].name_of(code)


def load_contract(path: str | Path | None = None) -> PlcContract:
    """Load and check a contract file; None loads the contract shipped with the package."""
    data, origin = load_toml(path, "drivers.plc", DEFAULT_CONTRACT, ContractError)
    return _build(data, origin)


# ---------------------------------------------------------------------------- checks


def _build(data: dict[str, Any], origin: str) -> PlcContract:
    def fail(msg: str) -> ContractError:
        return ContractError(f"{origin}: {msg}")

    extra = set(data) - _TOP_KEYS
    if extra:
        raise fail(f"unknown top-level keys {sorted(extra)}")
    version = data.get("version")
    if not isinstance(version, str) or not version:
        raise fail("version missing (a string, e.g. version = \"1.0\")")
    timing = _timing(data.get("timing"), fail)

    commands: dict[str, Command] = {}
    for i, raw in enumerate(_tables(data.get("command", []), "command", fail)):
        value = _value(raw, f"command #{i + 1}", fail)
        if value.name in commands:
            raise fail(f"command {value.name} defined twice")
        commands[value.name] = Command(value.name, value.code, value.description)
    if not commands:
        raise fail("no [[command]] table")
    _unique_codes(COMMAND_ENUM, [(c.name, c.code) for c in commands.values()], fail)

    enums: dict[str, Enumeration] = {
        COMMAND_ENUM: Enumeration(COMMAND_ENUM, tuple(
            EnumValue(c.name, c.code, c.description) for c in commands.values()))
    }
    raw_enums = data.get("enum", {})
    if not isinstance(raw_enums, dict):
        raise fail("enum must be tables [enum.NAME]")
    for ename, body in raw_enums.items():
        if ename == COMMAND_ENUM:
            raise fail(f"enumeration {COMMAND_ENUM!r} is the [[command]] table; "
                       "do not define it under [enum]")
        if not isinstance(body, dict) or set(body) != {"value"}:
            raise fail(f"enumeration {ename}: expected only [[enum.{ename}.value]] entries")
        values: list[EnumValue] = []
        for i, raw in enumerate(_tables(body["value"], f"enum.{ename}.value", fail)):
            v = _value(raw, f"enumeration {ename} value #{i + 1}", fail)
            if v.name in {x.name for x in values}:
                raise fail(f"enumeration {ename}: value {v.name} defined twice")
            values.append(v)
        if not values:
            raise fail(f"enumeration {ename} has no values")
        _unique_codes(ename, [(v.name, v.code) for v in values], fail)
        enums[ename] = Enumeration(ename, tuple(values))

    signals: dict[str, ContractSignal] = {}
    for i, raw in enumerate(_tables(data.get("signal", []), "signal", fail)):
        sig = _signal(raw, i, fail)
        if sig.name in signals:
            raise fail(f"signal {sig.name} defined twice")
        if sig.enum is not None and sig.enum not in enums:
            raise fail(f"signal {sig.name}: enum {sig.enum!r} is not defined (enumerations: "
                       f"{', '.join(sorted(enums))})")
        signals[sig.name] = sig
    if not signals:
        raise fail("no [[signal]] table")
    return PlcContract(version=version, origin=origin, timing=timing, signals=signals,
                       commands=commands, enums=enums)


def _tables(raw: object, what: str, fail: _Fail) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise fail(f"{what} must be an array of tables [[{what}]]")
    return raw


def _timing(raw: object, fail: _Fail) -> Timing:
    keys = set(Timing.__dataclass_fields__)
    if not isinstance(raw, dict):
        raise fail("[timing] missing")
    if set(raw) != keys:
        missing, extra = keys - set(raw), set(raw) - keys
        raise fail(f"[timing]: missing {sorted(missing)}, unknown {sorted(extra)}")
    for k, v in raw.items():
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise fail(f"timing.{k}: {v!r} must be a positive integer (milliseconds)")
    return Timing(**raw)


def _value(raw: Mapping[str, Any], where: str, fail: _Fail) -> EnumValue:
    if set(raw) != _VALUE_KEYS:
        raise fail(f"{where}: expected keys {sorted(_VALUE_KEYS)}, got {sorted(raw)}")
    name, code, description = raw["name"], raw["code"], raw["description"]
    if not isinstance(name, str) or not name.isidentifier():
        raise fail(f"{where}: name {name!r} must be an identifier")
    if _UNKNOWN_NAME.fullmatch(name):
        raise fail(f"{where}: name {name!r} is reserved for undefined codes")
    if not isinstance(code, int) or isinstance(code, bool) or code < 0:
        raise fail(f"{where} ({name}): code {code!r} must be an integer >= 0")
    if not isinstance(description, str) or not description:
        raise fail(f"{where} ({name}): description missing")
    return EnumValue(name, code, description)


def _unique_codes(enum: str, values: list[tuple[str, int]], fail: _Fail) -> None:
    seen: dict[int, str] = {}
    for name, code in values:
        if code in seen:
            raise fail(f"enumeration {enum}: {name} and {seen[code]} share code {code}")
        seen[code] = name


def _signal(raw: Mapping[str, Any], index: int, fail: _Fail) -> ContractSignal:
    name = raw.get("name")
    where = f"signal {name}" if isinstance(name, str) else f"signal #{index + 1}"
    if not isinstance(name, str) or not name.isidentifier():
        raise fail(f"{where}: name missing or not an identifier")
    extra = set(raw) - _SIGNAL_KEYS
    if extra:
        raise fail(f"{where}: unknown keys {sorted(extra)} (addressing belongs in the "
                   "protocol's own file)")
    for key in ("type", "direction", "description"):
        if key not in raw:
            raise fail(f"{where}: {key} missing")
    type_, direction = raw["type"], raw["direction"]
    if type_ not in get_args(EngineeringType):
        raise fail(f"{where}: type {type_!r} is not one of {', '.join(get_args(EngineeringType))}")
    if direction not in get_args(Direction):
        raise fail(f"{where}: direction {direction!r} is not 'in' or 'out'")
    count = raw.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise fail(f"{where}: count {count!r} must be an integer >= 1")
    enum = raw.get("enum")
    if enum is not None:
        if not isinstance(enum, str):
            raise fail(f"{where}: enum must be the name of an enumeration")
        if type_ != "int" or count != 1:
            raise fail(f"{where}: an enumerated signal must be a single int")
    description, unit = raw["description"], raw.get("unit", "")
    if not isinstance(description, str) or not description:
        raise fail(f"{where}: description missing")
    if not isinstance(unit, str):
        raise fail(f"{where}: unit must be a string")
    return ContractSignal(name=name, type=type_, direction=direction, description=description,
                          unit=unit, count=count, enum=enum)
