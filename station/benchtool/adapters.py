"""Fault adapters: how a bench makes a fault happen for real.

- `RelayAdapter`: a Modbus TCP relay / IO module; switching a coil on makes the fault
  wired to it (a relay opening the e-stop chain, shorting CAN-H to CAN-L, cutting the
  PLC's Ethernet). Every write is read back. On close every coil it switched on is
  switched off again: a fault left on could mask the next scenario's.
- `PromptAdapter`: the engineer, asked on a terminal to make the fault by hand (a heat
  gun on a pack) and to confirm; also asked to arrange the physical set-up.
- `FaultMeans`: which adapter makes which fault, built from the bench config.

Every failure raises `AdapterError` (a `TargetError`): the runner reports the scenario as
an error with the message, which names the relay, the coil and the reply.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import TextIO

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from sim_hw.faults import SPEC_BY_NAME
from station.benchtool.bench_config import (
    BenchConfig,
    CoilFault,
    RelayModule,
    describe_fault,
)
from station.benchtool.target import TargetError

Target = str | int | None
Value = float | str | None


class AdapterError(TargetError):
    """A fault could not be made or cleared: the message says by what and why."""


def fault_phrase(fault: str) -> str:
    """A fault's description up to its first ':' or ';' (what it is, not how the
    simulator shows it): "e-stop chain open"."""
    spec = SPEC_BY_NAME.get(fault)
    if spec is None:
        return fault
    text = spec.description
    for sep in (":", ";"):
        text = text.split(sep, 1)[0]
    return text.strip()


def _norm(v: Target | Value) -> str | None:
    """Targets and values compared as the scenario and the config may write them."""
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip().lower()


def coil_makes(cf: CoilFault, fault: str, target: Target, value: Value) -> bool:
    """Whether the coil's wiring makes this fault with this target and value. An action
    without a target or value asks for the fault's default; a coil without one makes the
    default (or the fault takes none)."""
    if cf.fault != fault:
        return False
    spec = SPEC_BY_NAME[fault]
    want_t = target if target is not None else spec.default_target
    have_t = cf.target if cf.target is not None else spec.default_target
    if _norm(want_t) != _norm(have_t):
        return False
    default_v = spec.value.default if spec.value is not None else None
    want_v = value if value is not None else default_v
    have_v = cf.value if cf.value is not None else default_v
    return _norm(want_v) == _norm(have_v)


# ---- relay module ----------------------------------------------------------------------

class RelayAdapter:
    """One Modbus TCP relay module (pymodbus client, FC5 write single coil, FC1 read)."""

    kind = "relay"

    def __init__(self, module: RelayModule) -> None:
        self.module = module
        self.name = module.name
        self._client: AsyncModbusTcpClient | None = None
        self.on: set[int] = set()  # coils this adapter switched on and not yet off

    def _where(self, address: int | None = None) -> str:
        m = self.module
        coil = f" coil {address}" if address is not None else ""
        return f"relay {m.name} ({m.host}:{m.port} device {m.device_id}){coil}"

    def coil_for(self, fault: str, target: Target, value: Value) -> int | None:
        for addr, cf in sorted(self.module.coils.items()):
            if coil_makes(cf, fault, target, value):
                return addr
        return None

    async def connect(self) -> None:
        if self._client is not None and self._client.connected:
            return
        m = self.module
        # retries=0: a relay that does not answer is reported, not retried behind our back
        client = AsyncModbusTcpClient(m.host, port=m.port, timeout=m.timeout_s, retries=0,
                                      reconnect_delay=0)
        try:
            ok = await client.connect()
        except (OSError, ModbusException) as exc:
            raise AdapterError(f"{self._where()}: cannot connect: {exc}") from exc
        if not ok:
            client.close()
            raise AdapterError(f"{self._where()}: cannot connect")
        self._client = client

    async def set_coil(self, address: int, on: bool) -> None:
        """Switch one coil and read it back; AdapterError naming the relay, the coil and
        the reply when the module refuses, does not answer or reads back otherwise."""
        await self.connect()
        client = self._client
        assert client is not None
        did = self.module.device_id
        what = "on" if on else "off"
        try:
            reply = await client.write_coil(address, on, device_id=did)
            if reply.isError():
                raise AdapterError(f"{self._where(address)}: switching {what} refused: "
                                   f"{_reply(reply)}")
            back = await client.read_coils(address, count=1, device_id=did)
            if back.isError():
                raise AdapterError(f"{self._where(address)}: read-back refused: "
                                   f"{_reply(back)}")
        except ModbusException as exc:  # no answer within timeout_s, connection lost
            self._drop()
            raise AdapterError(f"{self._where(address)}: switching {what}: no answer "
                               f"({exc})") from exc
        if not back.bits or bool(back.bits[0]) != on:
            raise AdapterError(f"{self._where(address)}: switched {what} but reads back "
                               f"{'on' if back.bits and back.bits[0] else 'off'}")
        if on:
            self.on.add(address)
        else:
            self.on.discard(address)

    async def make(self, fault: str, target: Target, value: Value) -> str:
        addr = self.coil_for(fault, target, value)
        if addr is None:
            raise AdapterError(f"{self._where()}: no coil makes {fault} "
                               f"(target {target}, value {value})")
        await self.set_coil(addr, True)
        return f"{fault}: {self.name} coil {addr} on"

    async def clear(self, fault: str, target: Target) -> str:
        addrs = [a for a, cf in sorted(self.module.coils.items()) if cf.fault == fault
                 and (target is None or _norm(cf.target) == _norm(target))]
        if not addrs:
            raise AdapterError(f"{self._where()}: no coil makes {fault}")
        for a in addrs:  # every coil of that fault off: which one made it does not matter
            await self.set_coil(a, False)
        return f"{fault} cleared: {self.name} coil{'s' if len(addrs) > 1 else ''} " \
            + ", ".join(str(a) for a in addrs) + " off"

    async def close(self) -> None:
        """Switch off every coil this adapter switched on, then disconnect; AdapterError
        (after trying every coil) naming those that may still be on."""
        failed: list[str] = []
        for addr in sorted(self.on):
            try:
                await self.set_coil(addr, False)
            except AdapterError as exc:
                failed.append(str(exc))
        self._drop()
        if failed:
            raise AdapterError("coils possibly left on: " + "; ".join(failed))

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _reply(reply: object) -> str:
    code = getattr(reply, "exception_code", None)
    names = {1: "ILLEGAL FUNCTION", 2: "ILLEGAL DATA ADDRESS", 3: "ILLEGAL DATA VALUE",
             4: "SERVER DEVICE FAILURE", 6: "SERVER DEVICE BUSY",
             11: "GATEWAY TARGET DEVICE FAILED TO RESPOND"}
    if isinstance(code, int):
        return f"Modbus exception {code:02d} {names.get(code, '')}".rstrip()
    return str(reply)


# ---- prompt ----------------------------------------------------------------------------

class PromptDeclined(AdapterError):
    """The engineer typed 'skip', did not answer in time, or the input closed."""


class PromptAdapter:
    """The engineer at the bench: told what to do on `output`, confirms on `input`.

    Enter confirms; 'skip' (or the input closing, or no answer within `timeout_s`) fails
    the action with that reason. A read that timed out keeps running in its thread (a
    blocked readline cannot be cancelled); an answer it gets late is thrown away, never
    taken as the answer to the next question."""

    kind = "prompt"
    name = "prompt"

    def __init__(self, input_stream: TextIO | None = None, output_stream: TextIO | None = None,
                 timeout_s: float = 600.0) -> None:
        self.input = input_stream if input_stream is not None else sys.stdin
        self.output = output_stream if output_stream is not None else sys.stdout
        self.timeout_s = timeout_s
        self._pending: asyncio.Future[str] | None = None
        self.made: dict[str, tuple[Target, Value]] = {}  # faults made and not yet undone

    def say(self, text: str) -> None:
        print(text, file=self.output, flush=True)

    async def ask(self, text: str, timeout_s: float | None = None) -> None:
        """Print `text` and wait for Enter; PromptDeclined on 'skip', EOF or timeout."""
        if self._pending is not None and self._pending.done():
            self._pending = None  # a late answer to an earlier question: not this one's
        self.say(text)
        if self._pending is None:
            self._pending = asyncio.ensure_future(asyncio.to_thread(self.input.readline))
        limit = self.timeout_s if timeout_s is None else timeout_s
        try:
            line = await asyncio.wait_for(asyncio.shield(self._pending), limit)
        except TimeoutError:
            raise PromptDeclined(f"no answer within {limit:g} s to: {text}") from None
        self._pending = None
        if line == "":
            raise PromptDeclined(f"input closed while asking: {text}")
        if line.strip().lower() == "skip":
            raise PromptDeclined(f"skipped by the engineer: {text}")

    async def make(self, fault: str, target: Target, value: Value) -> str:
        spec = SPEC_BY_NAME.get(fault)
        unit = spec.value.unit if spec is not None and spec.value is not None else None
        where = f" at {target}" if target is not None else ""
        val = f", value {value}{' ' + unit if unit else ''}" if value is not None else ""
        await self.ask(f"Make fault {fault}{where}{val} ({fault_phrase(fault)}) now, then "
                       "press Enter; type 'skip' to abandon")
        self.made[fault] = (target, value)
        return f"{fault}: made by hand (confirmed)"

    async def clear(self, fault: str, target: Target) -> str:
        where = f" at {target}" if target is not None else ""
        await self.ask(f"Clear fault {fault}{where} ({fault_phrase(fault)}): undo it now, "
                       "then press Enter; type 'skip' to abandon")
        self.made.pop(fault, None)
        return f"{fault} cleared by hand (confirmed)"

    async def close(self) -> None:
        """Ask the engineer to undo every fault made by hand and not cleared yet."""
        failed: list[str] = []
        for fault, (target, _value) in list(self.made.items()):
            try:
                await self.clear(fault, target)
            except PromptDeclined as exc:
                failed.append(str(exc))
        self.made.clear()
        if failed:
            raise AdapterError("faults made by hand possibly still there: "
                               + "; ".join(failed))


# ---- which adapter makes which fault ---------------------------------------------------

FaultAdapter = RelayAdapter | PromptAdapter


@dataclass
class FaultMeans:
    """The bench's means of making faults: its relay modules, then the prompt (for the
    faults `[bench.prompt] faults` lists, when someone is there to answer)."""

    relays: list[RelayAdapter]
    prompt: PromptAdapter | None
    prompt_faults: frozenset[str]
    origin: str = "the bench config"

    @classmethod
    def from_config(cls, cfg: BenchConfig, prompt: PromptAdapter | None) -> FaultMeans:
        return cls([RelayAdapter(m) for m in cfg.bench.relay], prompt,
                   frozenset(cfg.bench.prompt.faults), cfg.path or "the bench config")

    def find(self, fault: str, target: Target = None,
             value: Value = None) -> FaultAdapter | str:
        """The adapter that makes this fault as asked, or why none can."""
        for r in self.relays:
            if r.coil_for(fault, target, value) is not None:
                return r
        if fault in self.prompt_faults:
            if self.prompt is not None:
                return self.prompt
            return (f"needs fault {fault}: [bench.prompt] lists it but no one can be asked "
                    "(not a terminal; give --yes to be asked anyway)")
        wired = [f"{r.name} coil {a} makes {cf.describe()}" for r in self.relays
                 for a, cf in sorted(r.module.coils.items()) if cf.fault == fault]
        if wired:
            asked = describe_fault(fault, target, value)
            return (f"needs fault {asked}: no relay coil makes that target/value "
                    f"({'; '.join(wired)}) and no prompt for it in {self.origin}")
        return f"needs fault {fault}: no relay coil or prompt for it in {self.origin}"

    def for_clear(self, fault: str, target: Target = None) -> FaultAdapter | None:
        """The adapter that made (or would make) this fault, to undo it."""
        for r in self.relays:
            if any(cf.fault == fault and (target is None or _norm(cf.target) == _norm(target))
                   for cf in r.module.coils.values()):
                return r
        if self.prompt is not None and fault in self.prompt_faults:
            return self.prompt
        return None

    async def close(self) -> None:
        """Every relay's coils off and every hand-made fault undone; one AdapterError with
        everything that failed."""
        failed: list[str] = []
        adapters: list[FaultAdapter] = [*self.relays]
        if self.prompt is not None:
            adapters.append(self.prompt)
        for a in adapters:
            try:
                await a.close()
            except AdapterError as exc:
                failed.append(str(exc))
        if failed:
            raise AdapterError("; ".join(failed))


__all__ = ["AdapterError", "FaultAdapter", "FaultMeans", "PromptAdapter", "PromptDeclined",
           "RelayAdapter", "coil_makes", "fault_phrase"]
