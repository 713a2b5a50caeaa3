"""The Modbus TCP addressing of the PLC contract: one data file, loaded against the contract.

The contract (drivers/plc/contract.toml, drivers/plc/contract.py) says what each signal is;
the register map (maps/modbus_map.toml) says only where it lives: address, raw register
type and scale. Loading checks the two together: every contract signal addressed exactly
once, no name the contract does not know, raw types that fit the engineering types, every
register inside its block and none used twice. Both the controller's link and the
simulated PLC encode and decode through this module.

Two vocabularies for enumerated signals (`cmd_status`, `cmd_error_code`, `cmd_code`,
`stop_request`):
- names (`decode_inputs`, `encode_outputs`, or `enums="names"`): the contract's value names,
  "busy", "mechanism_fault", "LIFT", "cat1"; what the link hands to the station core.
- codes (the default of `decode_block` / `encode_block`): the integer codes on the wire, as
  the simulated PLC and raw test clients work with them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, get_args

from drivers.datafile import load_toml
from drivers.plc.contract import (
    UNKNOWN_PREFIX,
    AddressedSignal,
    Command,
    ContractSignal,
    Direction,
    Enumeration,
    PlcContract,
    load_contract,
)

RawType = Literal["u16", "i16", "bool"]
Vocabulary = Literal["names", "codes"]
Scalar = bool | int | float
Value = Scalar | str  # an engineering value in the contract's vocabulary

DEFAULT_MAP = "modbus_map.toml"
_SIGNAL_KEYS = {"name", "address", "type", "scale"}
_DEVICE_KEYS = {"unit_id", "input_block_start", "input_block_length", "output_block_start",
                "output_block_length"}


class RegisterMapError(ValueError):
    """The register map file is inconsistent, or does not fit the contract; the message
    names the file and the signal."""


@dataclass(frozen=True)
class Signal(AddressedSignal):
    """One contract signal at its Modbus address."""

    name: str
    address: int
    type: RawType
    spec: ContractSignal  # what the contract says about it
    scale: float = 1.0
    enum: Enumeration | None = None  # set for an enumerated signal

    # -------------------------------------------------------------- wire <-> number

    def from_register(self, raw: int) -> Scalar:
        """Raw 16-bit register -> engineering number (an enumerated signal's code)."""
        if self.type == "bool":
            return raw != 0
        value = raw - 0x10000 if self.type == "i16" and raw >= 0x8000 else raw
        if self.spec.type == "float":
            return float(value * self.scale)
        return int(value * self.scale) if self.scale != 1.0 else value

    def to_register(self, value: Scalar) -> int:
        """Engineering number -> raw 16-bit register; ValueError naming the signal when out
        of range or not a number."""
        if self.type == "bool":
            return 1 if value else 0
        if isinstance(value, str) or not isinstance(value, int | float):
            raise ValueError(f"{self.name}: {value!r} is not a number")
        raw = round(float(value) / self.scale)
        lo, hi = (-0x8000, 0x7FFF) if self.type == "i16" else (0, 0xFFFF)
        if not lo <= raw <= hi:
            raise ValueError(f"{self.name}: {value} out of range for {self.type}")
        return raw & 0xFFFF

    # -------------------------------------------------------------- contract vocabulary

    def decode(self, raw: int) -> Value:
        """Raw register -> contract value: an enumerated signal's value name ("busy";
        "unknown_<code>" for a code the contract does not define), else the number."""
        value = self.from_register(raw)
        if self.enum is None:
            return value
        name = self.enum.name_of(int(value))
        return name if name is not None else f"{UNKNOWN_PREFIX}{int(value)}"

    def encode(self, value: Value) -> int:
        """Contract value -> raw register; an enumerated signal takes a value name only.
        ValueError naming the signal for an unknown name or an out-of-range number."""
        if self.enum is None:
            if isinstance(value, str):
                raise ValueError(f"{self.name}: {value!r} is not a number")
            return self.to_register(value)
        code = self.enum.code(value) if isinstance(value, str) else None
        if code is None:
            raise ValueError(f"{self.name}: {value!r} is not a value of enumeration "
                             f"{self.enum.name} ({', '.join(self.enum.names())})")
        return self.to_register(code)

    def decode_as(self, raw: int, enums: Vocabulary) -> Value:
        return self.decode(raw) if enums == "names" else self.from_register(raw)

    def encode_as(self, value: Any, enums: Vocabulary) -> int:
        return self.encode(value) if enums == "names" else self.to_register(value)


@dataclass(frozen=True)
class RegisterMap:
    contract: PlcContract
    origin: str  # the addressing file, for messages
    unit_id: int
    input_start: int
    input_length: int
    output_start: int
    output_length: int
    signals: dict[str, Signal] = field(default_factory=dict)

    @property
    def commands(self) -> dict[str, Command]:
        """The contract's command table."""
        return self.contract.commands

    def inputs(self) -> list[Signal]:
        return [s for s in self.signals.values() if s.direction == "in"]

    def outputs(self) -> list[Signal]:
        return [s for s in self.signals.values() if s.direction == "out"]

    def command_code(self, name: str) -> int:
        return self.contract.command_code(name)

    def command_name(self, code: int) -> str | None:
        return self.contract.command_name(code)

    def decode_block(
        self, start: int, registers: Sequence[int], direction: Direction, *,
        enums: Vocabulary = "codes",
    ) -> dict[str, Any]:
        """Decode a block of raw registers into {name: value}; arrays become lists; signals
        the block does not cover completely are left out."""
        out: dict[str, Any] = {}
        for sig in self.signals.values():
            if sig.direction != direction:
                continue
            off = sig.address - start
            if off < 0 or off + sig.count > len(registers):
                continue
            if sig.count == 1:
                out[sig.name] = sig.decode_as(registers[off], enums)
            else:
                out[sig.name] = [sig.decode_as(r, enums) for r in registers[off : off + sig.count]]
        return out

    def encode_block(
        self, start: int, length: int, values: Mapping[str, Any], *,
        enums: Vocabulary = "codes",
    ) -> list[int]:
        """Encode {name: value} into a block of raw registers; absent signals stay 0.
        ValueError naming the signal for a name outside the block or a bad value."""
        regs = [0] * length
        for name, value in values.items():
            sig = self.signals.get(name)
            if sig is None:
                raise ValueError(f"{name} is not a signal of the PLC contract")
            off = sig.address - start
            if off < 0 or off + sig.count > length:
                raise ValueError(f"{name} (address {sig.address}) is outside the block "
                                 f"{start}-{start + length - 1}")
            if sig.count == 1:
                regs[off] = sig.encode_as(value, enums)
            else:
                for i, v in enumerate(list(value)[: sig.count]):
                    regs[off + i] = sig.encode_as(v, enums)
        return regs

    def decode_inputs(self, registers: Sequence[int]) -> dict[str, Any]:
        """The input block as read (from input_start) -> inputs in contract vocabulary."""
        return self.decode_block(self.input_start, registers, "in", enums="names")

    def encode_outputs(self, values: Mapping[str, Any]) -> list[int]:
        """Outputs in contract vocabulary -> the whole output block."""
        return self.encode_block(self.output_start, self.output_length, values, enums="names")


def load_register_map(
    path: str | Path | None = None, *, contract: PlcContract | None = None
) -> RegisterMap:
    """Load a register map and check it against the contract. None loads the map shipped
    with the package; a contract of None the contract shipped with the package."""
    contract = contract or load_contract()
    data, origin = load_toml(path, "drivers.plc.maps", DEFAULT_MAP, RegisterMapError)
    rmap = _build(data, origin, contract)
    _check_layout(rmap)
    return rmap


# ---------------------------------------------------------------------------- checks


def _build(data: dict[str, Any], origin: str, contract: PlcContract) -> RegisterMap:
    def fail(msg: str) -> RegisterMapError:
        return RegisterMapError(f"{origin}: {msg}")

    extra = set(data) - {"contract_version", "device", "signal"}
    if extra:
        raise fail(f"unknown top-level keys {sorted(extra)}")
    version = data.get("contract_version")
    if version != contract.version:
        raise fail(f"contract_version {version!r} does not match the contract "
                   f"({contract.origin}, version {contract.version!r})")
    dev = data.get("device")
    if not isinstance(dev, dict) or set(dev) != _DEVICE_KEYS:
        have = sorted(dev) if isinstance(dev, dict) else []
        raise fail(f"[device] must have exactly {sorted(_DEVICE_KEYS)}, has {have}")
    for key, v in dev.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise fail(f"device.{key}: {v!r} must be an integer >= 0")
    if not 0 <= dev["unit_id"] <= 255:  # Modbus unit ids are one byte
        raise fail(f"device.unit_id: {dev['unit_id']} outside 0..255")

    raw_signals = data.get("signal", [])
    if not isinstance(raw_signals, list) or not all(isinstance(t, dict) for t in raw_signals):
        raise fail("signal must be an array of tables [[signal]]")
    signals: dict[str, Signal] = {}
    for i, raw in enumerate(raw_signals):
        sig = _signal(raw, i, contract, fail)
        if sig.name in signals:
            raise fail(f"signal {sig.name} defined twice")
        signals[sig.name] = sig
    missing = [n for n in contract.signals if n not in signals]
    if missing:
        raise fail(f"contract signal(s) {', '.join(missing)} not addressed "
                   f"(contract {contract.origin})")
    # Keep the contract's order, so decoded dicts and docs list signals as the contract does.
    ordered = {n: signals[n] for n in contract.signals}
    return RegisterMap(
        contract=contract, origin=origin, unit_id=dev["unit_id"],
        input_start=dev["input_block_start"], input_length=dev["input_block_length"],
        output_start=dev["output_block_start"], output_length=dev["output_block_length"],
        signals=ordered,
    )


def _signal(
    raw: Mapping[str, Any], index: int, contract: PlcContract,
    fail: Callable[[str], RegisterMapError],
) -> Signal:
    name = raw.get("name")
    if not isinstance(name, str):
        raise fail(f"signal #{index + 1}: name missing")
    spec = contract.signals.get(name)
    if spec is None:
        raise fail(f"signal {name} is not a signal of the contract ({contract.origin})")
    extra = set(raw) - _SIGNAL_KEYS
    if extra:
        raise fail(f"signal {name}: unknown keys {sorted(extra)} (only name, address, type "
                   "and scale here; the rest is in the contract)")
    address, type_, scale = raw.get("address"), raw.get("type", ""), raw.get("scale", 1.0)
    if not isinstance(address, int) or isinstance(address, bool) or not 0 <= address <= 0xFFFF:
        raise fail(f"signal {name}: address {address!r} must be an integer 0..65535")
    if type_ not in get_args(RawType):
        raise fail(f"signal {name}: type {type_!r} is not one of {', '.join(get_args(RawType))}")
    type_ = cast(RawType, type_)
    if not isinstance(scale, int | float) or isinstance(scale, bool) or scale <= 0:
        raise fail(f"signal {name}: scale {scale!r} must be a number above 0")
    scale = float(scale)
    if (type_ == "bool") != (spec.type == "bool"):
        raise fail(f"signal {name}: register type {type_} does not carry the contract's "
                   f"{spec.type}")
    if scale != 1.0 and (spec.type == "bool" or spec.enum is not None):
        raise fail(f"signal {name}: a {'bool' if spec.type == 'bool' else 'enumerated'} "
                   "signal takes no scale")
    if spec.type == "int" and not scale.is_integer():
        raise fail(f"signal {name}: scale {scale:g} would make the contract's int a fraction")
    if spec.enum is not None and type_ != "u16":
        raise fail(f"signal {name}: an enumerated signal is a u16 code, not {type_}")
    enum = contract.enums[spec.enum] if spec.enum is not None else None
    if enum is not None:
        too_big = [v.name for v in enum.values if v.code > 0xFFFF]
        if too_big:
            raise fail(f"signal {name}: codes of {', '.join(too_big)} do not fit a u16")
    return Signal(name=name, address=address, type=type_, spec=spec, scale=scale, enum=enum)


def _check_layout(rmap: RegisterMap) -> None:
    origin = rmap.origin
    blocks = {"in": (rmap.input_start, rmap.input_length),
              "out": (rmap.output_start, rmap.output_length)}
    (i0, il), (o0, ol) = blocks["in"], blocks["out"]
    if i0 < o0 + ol and o0 < i0 + il:
        raise RegisterMapError(f"{origin}: the input and output blocks overlap")
    used: dict[int, str] = {}
    for sig in rmap.signals.values():
        start, length = blocks[sig.direction]
        for a in range(sig.address, sig.address + sig.count):
            if not start <= a < start + length:
                raise RegisterMapError(
                    f"{origin}: {sig.name} address {a} outside its block "
                    f"({'input' if sig.direction == 'in' else 'output'} block "
                    f"{start}-{start + length - 1})")
            if a in used:
                raise RegisterMapError(f"{origin}: {sig.name} overlaps {used[a]} at {a}")
            used[a] = sig.name
