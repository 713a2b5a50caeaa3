"""The bench config (TOML): how swap-bench reaches a hardware-in-the-loop bench's swapd and
how it makes faults there (Modbus TCP relay modules, or the engineer asked by a prompt).

    [bench]           name, socket (swapd's local API), setup ("prompt" | "assume")
    [bench.swapd]     kill / start: the commands that SIGKILL and start swapd
    [bench.broker]    the back end's side of MQTT (signed commands, telemetry), down / up
    [[bench.relay]]   a relay module: name, host, port, device_id, coils (address -> fault)
    [bench.prompt]    faults the engineer makes by hand when asked

Fault names are the simulator's (sim_hw/faults.py FAULT_NAMES), so a scenario reads the
same on both targets; they are checked when the file is loaded. Relative paths are taken
from the file's directory. docs/bench.md is the reference.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sim_hw.faults import FAULT_NAMES, SPEC_BY_NAME
from station.benchtool.tomlfile import first_problem, read_toml

MAX_COIL = 0xFFFF  # Modbus coil addresses are 16-bit


class BenchConfigError(ValueError):
    """A bench config that cannot be used: the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _fault_name(name: str) -> str:
    if name not in FAULT_NAMES:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULT_NAMES)}")
    return name


def describe_fault(fault: str, target: str | int | None, value: float | str | None) -> str:
    """`pack_over_temp @vehicle =75`, as an action's describe() writes it."""
    v = f"{value:g}" if isinstance(value, float) else value
    return fault + (f" @{target}" if target is not None else "") + (
        f" ={v}" if value is not None else "")


class CoilFault(_Strict):
    """What switching one coil on makes: a fault, at a target, with a value (as wired)."""

    fault: str
    target: str | int | None = None  # None: the fault takes none, or its default
    value: float | str | None = None  # None: the fault takes none, or its default

    @model_validator(mode="after")
    def _check(self) -> CoilFault:
        _fault_name(self.fault)
        spec = SPEC_BY_NAME[self.fault]
        if self.target is not None and spec.target is None:
            raise ValueError(f"{self.fault} takes no target (got {self.target!r})")
        if self.value is not None and spec.value is None:
            raise ValueError(f"{self.fault} takes no value (got {self.value!r})")
        return self

    def describe(self) -> str:
        return describe_fault(self.fault, self.target, self.value)


class RelayModule(_Strict):
    """`[[bench.relay]]`: a Modbus TCP relay / IO module; coil ON = the fault is active."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(default=502, ge=1, le=65535)
    device_id: int = Field(default=1, ge=0, le=255)
    timeout_s: float = Field(default=2.0, gt=0, le=60)  # one request's answer
    coils: dict[int, CoilFault] = Field(min_length=1)

    @field_validator("coils", mode="before")
    @classmethod
    def _coils(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        out: dict[int, Any] = {}
        for key, v in raw.items():
            text = str(key).strip()
            if not re.fullmatch(r"\d{1,5}", text) or int(text) > MAX_COIL:
                raise ValueError(f"coil {key!r}: a coil address 0..{MAX_COIL}")
            addr = int(text)
            if addr in out:  # "3" and "03": TOML sees two keys, the relay one coil
                raise ValueError(f"coil {addr} is given twice")
            out[addr] = {"fault": v} if isinstance(v, str) else v
        return out

    @field_validator("coils", mode="after")
    @classmethod
    def _one_coil_per_fault(cls, coils: dict[int, CoilFault]) -> dict[int, CoilFault]:
        seen: dict[str, int] = {}
        for addr, cf in coils.items():
            key = cf.describe()
            if key in seen:
                raise ValueError(f"coils {seen[key]} and {addr} both make {key}")
            seen[key] = addr
        return coils


class SwapdControl(_Strict):
    """`[bench.swapd]`: how to SIGKILL and start swapd (argv lists, no shell)."""

    kill: list[str] = Field(min_length=1)
    start: list[str] = Field(min_length=1)
    timeout_s: float = Field(default=30.0, gt=0)  # each command's run


class BrokerSection(_Strict):
    """`[bench.broker]`: the back end's side: a client certificate the broker lets publish
    commands, the back end's signing key the station trusts, and optional down / up."""

    url: str = Field(pattern=r"^mqtts?://")
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    station_id: str = Field(min_length=1, max_length=64)
    signing_key: Path
    key_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    prefix: str = Field(default="swapnet/v1", min_length=1)
    timeout_s: float = Field(default=10.0, gt=0)  # a command's response
    ttl_s: float = Field(default=60.0, gt=0, le=3600)  # a command's lifetime
    down: list[str] | None = Field(default=None, min_length=1)
    up: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _pairs(self) -> BrokerSection:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together")
        if (self.down is None) != (self.up is None):
            raise ValueError("down and up go together")
        return self


class PromptSection(_Strict):
    """`[bench.prompt]`: faults the engineer makes by hand when asked."""

    faults: list[str] = Field(default_factory=list)
    timeout_s: float = Field(default=600.0, gt=0)  # an unanswered prompt fails the action

    @field_validator("faults")
    @classmethod
    def _names(cls, faults: list[str]) -> list[str]:
        for f in faults:
            _fault_name(f)
        if len(set(faults)) != len(faults):
            raise ValueError("a fault is listed twice")
        return faults


class Bench(_Strict):
    name: str = Field(min_length=1, max_length=80)
    socket: Path
    setup: Literal["prompt", "assume"] = "prompt"
    api_timeout_s: float = Field(default=5.0, gt=0)  # a local API answer
    swapd: SwapdControl | None = None
    broker: BrokerSection | None = None
    relay: list[RelayModule] = Field(default_factory=list)
    prompt: PromptSection = Field(default_factory=PromptSection)

    @model_validator(mode="after")
    def _unique_relays(self) -> Bench:
        names = [r.name for r in self.relay]
        for n in names:
            if names.count(n) > 1:
                raise ValueError(f"relay name {n!r} is given twice")
        return self


class BenchConfig(_Strict):
    bench: Bench
    path: str = ""  # the file it came from

    @property
    def name(self) -> str:
        return self.bench.name


def _resolve(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative paths in the file are the file's directory's."""
    bench = data.get("bench")
    if not isinstance(bench, dict):
        return data
    bench = dict(bench)
    if isinstance(bench.get("socket"), str):
        bench["socket"] = str(base / bench["socket"])
    broker = bench.get("broker")
    if isinstance(broker, dict):
        broker = dict(broker)
        for key in ("ca", "cert", "key", "password_file", "signing_key"):
            if isinstance(broker.get(key), str):
                broker[key] = str(base / broker[key])
        bench["broker"] = broker
    return {**data, "bench": bench}


def parse_bench_config(data: dict[str, Any], origin: str = "<bench config>",
                       base: Path | None = None) -> BenchConfig:
    """Check a bench config already read; BenchConfigError names the origin and the key."""
    if base is not None:
        data = _resolve(data, base)
    try:
        return BenchConfig.model_validate({**data, "path": origin})
    except ValidationError as exc:
        raise BenchConfigError(f"{origin}: {first_problem(exc)}") from exc


def load_bench_config(path: str | Path) -> BenchConfig:
    """Read and check a bench config file."""
    p = Path(path)
    return parse_bench_config(read_toml(p, BenchConfigError), str(p), p.resolve().parent)


__all__ = ["Bench", "BenchConfig", "BenchConfigError", "BrokerSection", "CoilFault",
           "PromptSection", "RelayModule", "SwapdControl", "describe_fault", "load_bench_config",
           "parse_bench_config"]
