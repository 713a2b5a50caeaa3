"""The Modbus register map: one data file shared by the driver and the simulated PLC.

The map is the PLC interface contract (docs/plc-interface.md is generated from it), so it
is loaded and checked here once and both sides encode and decode through this module.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

SignalType = Literal["u16", "i16", "bool"]
Direction = Literal["in", "out"]

DEFAULT_MAP = "modbus_map.toml"


class RegisterMapError(ValueError):
    """The register map file is inconsistent."""


@dataclass(frozen=True)
class Signal:
    name: str
    address: int
    type: SignalType
    direction: Direction
    description: str
    count: int = 1
    scale: float = 1.0
    unit: str = ""

    def decode(self, raw: int) -> float | int | bool:
        """Raw 16-bit register -> engineering value."""
        if self.type == "bool":
            return raw != 0
        value = raw - 0x10000 if self.type == "i16" and raw >= 0x8000 else raw
        return value * self.scale if self.scale != 1.0 else value

    def encode(self, value: float | int | bool) -> int:
        """Engineering value -> raw 16-bit register; raises ValueError when out of range."""
        if self.type == "bool":
            return 1 if value else 0
        raw = round(float(value) / self.scale)
        lo, hi = (-0x8000, 0x7FFF) if self.type == "i16" else (0, 0xFFFF)
        if not lo <= raw <= hi:
            raise ValueError(f"{self.name}: {value} out of range for {self.type}")
        return raw & 0xFFFF


@dataclass(frozen=True)
class Command:
    name: str
    code: int
    description: str


@dataclass(frozen=True)
class RegisterMap:
    unit_id: int
    input_start: int
    input_length: int
    output_start: int
    output_length: int
    signals: dict[str, Signal] = field(default_factory=dict)
    commands: dict[str, Command] = field(default_factory=dict)

    def inputs(self) -> list[Signal]:
        return [s for s in self.signals.values() if s.direction == "in"]

    def outputs(self) -> list[Signal]:
        return [s for s in self.signals.values() if s.direction == "out"]

    def command_code(self, name: str) -> int:
        return self.commands[name].code

    def command_name(self, code: int) -> str | None:
        for c in self.commands.values():
            if c.code == code:
                return c.name
        return None

    def decode_block(self, start: int, registers: list[int], direction: Direction) -> dict:
        """Decode a block of raw registers into {name: value}; arrays become lists."""
        out: dict[str, object] = {}
        for sig in self.signals.values():
            if sig.direction != direction:
                continue
            off = sig.address - start
            if off < 0 or off + sig.count > len(registers):
                continue
            if sig.count == 1:
                out[sig.name] = sig.decode(registers[off])
            else:
                out[sig.name] = [sig.decode(r) for r in registers[off : off + sig.count]]
        return out

    def encode_block(self, start: int, length: int, values: dict) -> list[int]:
        """Encode {name: value} into a block of raw registers; absent signals stay 0."""
        regs = [0] * length
        for name, value in values.items():
            sig = self.signals[name]
            off = sig.address - start
            if sig.count == 1:
                regs[off] = sig.encode(value)
            else:
                for i, v in enumerate(value[: sig.count]):
                    regs[off + i] = sig.encode(v)
        return regs


def load_register_map(path: str | Path | None = None) -> RegisterMap:
    """Load and check a register map; None loads the map shipped with the package."""
    if path is None:
        text = resources.files("drivers.plc.maps").joinpath(DEFAULT_MAP).read_text()
        origin = DEFAULT_MAP
    else:
        text = Path(path).read_text()
        origin = str(path)
    try:
        data = tomllib.loads(text)
        dev = data["device"]
        rmap = RegisterMap(
            unit_id=int(dev["unit_id"]),
            input_start=int(dev["input_block_start"]),
            input_length=int(dev["input_block_length"]),
            output_start=int(dev["output_block_start"]),
            output_length=int(dev["output_block_length"]),
        )
        for raw in data.get("signal", []):
            sig = Signal(**raw)
            if sig.name in rmap.signals:
                raise RegisterMapError(f"{origin}: signal {sig.name} defined twice")
            rmap.signals[sig.name] = sig
        for raw in data.get("command", []):
            cmd = Command(**raw)
            rmap.commands[cmd.name] = cmd
    except (KeyError, TypeError, tomllib.TOMLDecodeError) as exc:
        raise RegisterMapError(f"{origin}: {exc}") from exc
    _check(rmap, origin)
    return rmap


def _check(rmap: RegisterMap, origin: str) -> None:
    used: dict[int, str] = {}
    for sig in rmap.signals.values():
        start, length = (
            (rmap.input_start, rmap.input_length)
            if sig.direction == "in"
            else (rmap.output_start, rmap.output_length)
        )
        for a in range(sig.address, sig.address + sig.count):
            if not start <= a < start + length:
                raise RegisterMapError(f"{origin}: {sig.name} address {a} outside its block")
            if a in used:
                raise RegisterMapError(f"{origin}: {sig.name} overlaps {used[a]} at {a}")
            used[a] = sig.name
