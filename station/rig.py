"""One rig for the tests, the benches and the demo: the simulated station and swapd pointed
at it.

`Rig` runs both in this process: `sim_hw.station_sim.SimStation` (Modbus TCP, or OPC UA
with `plc="opcua"`, on a free loopback port; CAN on a python-can `virtual` channel of its
own, or `udp_multicast`) and `station.daemon.Daemon` configured for it. `ProcessRig` runs
the daemon as a `swapd` subprocess instead (CAN over `udp_multicast`, which crosses
processes; the operator API on a Unix socket), for kill/restart tests and resource
benchmarks.

    async with Rig(speed=50, vehicles=3, config={"operation": {"auto_start": False}}) as rig:
        await rig.wait_for(lambda: rig.core.ready_to_start, timeout=20, what="a vehicle")
        ...

The simulator's `speed` and swapd's `sequence.speed_factor` are always the rig's `speed`.
Overrides: `sim` (a dict merged into the rig's `SimConfig`, or a function of it) and
`config` (a dict merged into the rig's `StationConfig`, section by section, or a function
of it); the result is validated like a file.

Artifacts: while a test runs, rigs register with the current `ArtifactSession`
(`begin_artifacts`, called from a pytest hook). When the test fails, the session saves,
for each rig, a copy of the journal, the simulator's state (ground truth, observer
violations, command log, faults, recent events), the daemon's status and events and its
log (the run's log lines as JSON) into the session's directory. `save_artifacts(dest)`
does the same on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from drivers.bms.canbus import UdpPortLease
from sim_hw.config import CanBusConfig, CanConfig, ModbusConfig, OpcUaConfig, SimConfig
from sim_hw.station_sim import SimStation
from station.config import (
    PLC_PROTOCOL_SECTIONS,
    ApiSection,
    CanBus,
    CanSection,
    JournalSection,
    LogSection,
    MetricsSection,
    ModbusSection,
    OpcUaSection,
    PlcSection,
    SequenceSection,
    StationConfig,
    load_config,
)

PlcProtocol = Literal["modbus", "opcua"]
SimOverrides = Mapping[str, Any] | Callable[[SimConfig], SimConfig] | None
ConfigOverrides = Mapping[str, Any] | Callable[[StationConfig], StationConfig] | None
M = TypeVar("M", bound=BaseModel)

JOURNAL_FILE = "journal.sqlite"
LOG_FILE = "swapd.log.jsonl"
MAX_SAVED_RIGS = 10  # a test that ran more rigs (hypothesis) keeps the last ones


# ---- configuration --------------------------------------------------------------------

def default_plc() -> PlcProtocol:
    """The rigs' PLC protocol when a test does not choose: $SWAP_PLC, else Modbus TCP (so
    `SWAP_PLC=opcua pytest` runs every rig over OPC UA)."""
    value = os.environ.get("SWAP_PLC", "modbus")
    if value not in ("modbus", "opcua"):
        raise ValueError(f"SWAP_PLC={value!r}: 'modbus' or 'opcua'")
    return value  # type: ignore[return-value]


def merge_model(model: M, changes: Mapping[str, Any]) -> M:
    """`model` with `changes` applied: a mapping given for a field that holds a model is
    merged into it (recursively), anything else replaces the field (`model_copy`)."""
    fields = type(model).model_fields
    update: dict[str, Any] = {}
    for key, value in changes.items():
        if key not in fields:
            raise KeyError(f"{type(model).__name__} has no field {key!r} "
                           f"(fields: {', '.join(fields)})")
        current = getattr(model, key)
        if isinstance(value, Mapping) and isinstance(current, BaseModel):
            value = merge_model(current, value)
        update[key] = value
    return model.model_copy(update=update)


def _revalidate(model: M) -> M:
    """Validate a model built with model_copy (which does not), as a file would be."""
    return type(model).model_validate(model.model_dump())


def bay_and_rack(slots: int = 13) -> dict[str, list[str]]:
    """A two-bus layout for `Rig(can_buses=...)`: the bay on "bay", rack slots 1..slots on
    "rack" (the simulator's default station has 13)."""
    return {"bay": ["bay"], "rack": [f"slot:1-{slots}"]}


def multicast_group() -> str:
    return f"239.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"


def config_toml(cfg: StationConfig) -> str:
    """The configuration as a swapd TOML file (only what differs from the defaults)."""
    lines: list[str] = []
    _toml_table(lines, [], cfg.model_dump(mode="json", exclude_defaults=True))
    return "\n".join(lines) + "\n"


def write_config_toml(cfg: StationConfig, path: Path) -> Path:
    """Write `cfg` for a swapd process and check that the file loads back to it."""
    path.write_text(config_toml(cfg))
    loaded = load_config(path)
    if loaded != cfg:
        raise ValueError(f"{path}: the configuration does not survive TOML:\n"
                         f"{loaded!r}\n!=\n{cfg!r}")
    return path


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.match(k) else json.dumps(k, ensure_ascii=False)


def _toml_value(where: str, v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # JSON's escapes are TOML's
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(where, x) for x in v) + "]"
    raise TypeError(f"{where}: {v!r} cannot be written in TOML")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _toml_table(lines: list[str], path: list[str], table: dict[str, Any],
                header: str | None = None) -> None:
    scalars = {k: v for k, v in table.items()
               if not isinstance(v, dict) and not _is_table_array(v)}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    arrays = {k: v for k, v in table.items() if _is_table_array(v)}  # [[can.buses]]
    if header is not None:
        lines.append(header)
    elif path and (scalars or not (tables or arrays)):
        lines.append(f"[{'.'.join(_toml_key(p) for p in path)}]")
    for k, v in scalars.items():
        where = ".".join([*path, k])
        if v is None:
            raise TypeError(f"{where}: None (a non-default) cannot be written in TOML")
        lines.append(f"{_toml_key(k)} = {_toml_value(where, v)}")
    for k, v in tables.items():
        _toml_table(lines, [*path, k], v)
    for k, items in arrays.items():
        name = ".".join(_toml_key(p) for p in [*path, k])
        for item in items:
            _toml_table(lines, [*path, k], item, header=f"[[{name}]]")


# ---- artifacts ------------------------------------------------------------------------

def artifacts_root(rootdir: Path) -> Path:
    """Where failed tests leave their artifacts: $SWAP_ARTIFACTS, else rootdir/test-artifacts."""
    env = os.environ.get("SWAP_ARTIFACTS")
    return Path(env) if env else rootdir / "test-artifacts"


def artifact_dir_name(test_name: str) -> str:
    """A test's name as a directory name (parameters kept, unsafe characters replaced)."""
    name = re.sub(r"[^A-Za-z0-9_.,=+\-\[\]]", "_", test_name).strip(".") or "test"
    return name[:200]


class ArtifactSession:
    """The rigs of one test and whether it failed; `finish()` saves them if it did."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.rigs: list[_Harness] = []
        self.failures: list[str] = []
        self._cleanups: list[Callable[[], None]] = []

    @property
    def failed(self) -> bool:
        return bool(self.failures)

    def mark_failed(self, reason: str = "") -> None:
        self.failures.append(reason or "failed")

    def defer_cleanup(self, fn: Callable[[], None]) -> None:
        self._cleanups.append(fn)

    def save(self) -> Path:
        if self.dest.exists():
            shutil.rmtree(self.dest)  # left by an earlier run of the same test
        self.dest.mkdir(parents=True)
        (self.dest / "failure.txt").write_text("\n\n".join(self.failures) + "\n")
        rigs = self.rigs[-MAX_SAVED_RIGS:]
        skipped = len(self.rigs) - len(rigs)
        if len(self.rigs) == 1:
            self.rigs[0].save_artifacts(self.dest)
        else:
            for i, rig in enumerate(rigs, start=skipped + 1):
                rig.save_artifacts(self.dest / f"rig-{i:02d}")
            if skipped:
                (self.dest / "rigs.txt").write_text(
                    f"{len(self.rigs)} rigs ran; the first {skipped} were not saved\n")
        return self.dest

    def finish(self) -> Path | None:
        """Save the rigs if the test failed (and ran any); then remove their temporary
        directories. Returns where the artifacts went, if anywhere."""
        try:
            return self.save() if self.failed and self.rigs else None
        finally:
            for fn in self._cleanups:
                with contextlib.suppress(OSError):
                    fn()
            self._cleanups.clear()


_session: ArtifactSession | None = None


def begin_artifacts(dest: Path) -> ArtifactSession:
    """Start collecting the rigs of one test; artifacts go to `dest` if it fails."""
    global _session
    end_artifacts()
    _session = ArtifactSession(dest)
    return _session


def current_artifacts() -> ArtifactSession | None:
    return _session


def end_artifacts() -> Path | None:
    global _session
    session, _session = _session, None
    return session.finish() if session is not None else None


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, set | frozenset):
        return sorted(o, key=str)
    if isinstance(o, BaseModel):
        return o.model_dump(mode="json")
    return str(o)


def _dump(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def copy_journal(src: Path, dst: Path) -> None:
    """A consistent copy of a SQLite journal (WAL included), even while it is written."""
    if not src.exists():
        return
    try:
        s = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
        try:
            d = sqlite3.connect(dst)
            try:
                s.backup(d)
            finally:
                d.close()
        finally:
            s.close()
    except sqlite3.Error:
        for suffix in ("", "-wal", "-shm"):
            p = Path(f"{src}{suffix}")
            if p.exists():
                shutil.copy2(p, Path(f"{dst}{suffix}"))


class SpeedRefused(ValueError):
    """A simulation speed the controller cannot honour; the message says the highest."""


def highest_speed(sim: SimConfig, poll_period_s: float) -> tuple[float, str, float]:
    """The highest simulation speed at which the controller can still watch the machine:
    every PLC command step of the simulator must last at least two input periods (PLC
    polls) of real time, so that the interlocks see the machine move within each step and
    no sensor judgement is shorter than the inputs can be read. Returns (speed, the
    shortest step, its simulated seconds)."""
    from station.sequence import SEQUENCE

    steps = [(s.name, float(getattr(sim.timing, s.name))) for s in SEQUENCE if s.command]
    name, shortest = min(steps, key=lambda t: t[1])
    return shortest / (2.0 * poll_period_s), name, shortest


def speed_refusal(speed: float, sim: SimConfig, poll_period_s: float) -> str | None:
    top, step, seconds = highest_speed(sim, poll_period_s)
    if speed <= top:
        return None
    return (f"speed {speed:g} refused: the shortest simulated step ({step}, {seconds:g} s) "
            f"would last {seconds / speed * 1000:.0f} ms, less than two PLC polls "
            f"(2 x {poll_period_s * 1000:g} ms); the controller could not see the machine "
            f"move within it. The highest speed this station can honour is {int(top):d}.")


def _guard(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:  # an artifact that cannot be read says so; the rest is saved
        return {"error": f"{type(exc).__name__}: {exc}"}


# ---- the rigs -------------------------------------------------------------------------

class _Harness:
    """What both rigs share: the simulator, the configuration, the workdir, artifacts."""

    can_interface: Literal["virtual", "udp_multicast"]

    def __init__(
        self,
        *,
        speed: float,
        vehicles: int,
        sim: SimOverrides,
        config: ConfigOverrides,
        workdir: Path | None,
        journal: Path | None,
        poll_period_s: float | None,
        name: str,
        plc: PlcProtocol | None = None,
        can_buses: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.plc = plc or default_plc()
        if self.plc not in ("modbus", "opcua"):
            raise ValueError(f"plc {self.plc!r}: 'modbus' or 'opcua'")
        self.speed = float(speed)
        self.vehicles = vehicles
        self.name = name
        self.poll_period_s = poll_period_s
        self._sim_overrides = sim
        self._config_overrides = config
        self.channel = (multicast_group() if self.can_interface == "udp_multicast"
                        else f"{name}-{uuid.uuid4().hex[:10]}")
        # udp_multicast: a port of this run's own (the group does not keep runs apart)
        self._can_lease = UdpPortLease() if self.can_interface == "udp_multicast" else None
        self.can_port = self._can_lease.port if self._can_lease is not None else None
        # Several buses (name -> locations): each on a channel (virtual) or a port
        # (udp_multicast) of its own; the first takes the rig's channel and port.
        self.can_buses = {k: list(v) for k, v in (can_buses or {}).items()}
        self.bus_channels: dict[str, tuple[str, int | None]] = {}
        self._bus_leases: list[UdpPortLease] = []
        for i, bus in enumerate(self.can_buses):
            if i == 0:
                self.bus_channels[bus] = (self.channel, self.can_port)
            elif self.can_interface == "udp_multicast":
                lease = UdpPortLease()
                self._bus_leases.append(lease)
                self.bus_channels[bus] = (self.channel, lease.port)
            else:
                self.bus_channels[bus] = (f"{self.channel}-{bus}", None)
        self.sim_config = self.build_sim_config()
        poll = poll_period_s if poll_period_s is not None else \
            PLC_PROTOCOL_SECTIONS[self.plc]().update_period_s  # type: ignore[attr-defined]
        refusal = speed_refusal(self.speed, self.sim_config, poll)
        if refusal is not None:
            raise SpeedRefused(refusal)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"swapd-{name}-")
            workdir = Path(self._tmp.name)
        self.workdir = workdir
        self.journal_path = journal or workdir / JOURNAL_FILE
        self.log_path: Path | None = None
        self._sim: SimStation | None = None
        self._config: StationConfig | None = None
        self._sim_snapshot: dict[str, Any] | None = None
        self._session: ArtifactSession | None = None
        self._stopped = False

    # configuration
    def build_sim_config(self) -> SimConfig:
        single = CanConfig(interface=self.can_interface, channel=self.channel,
                           udp_port=self.can_port)
        base = SimConfig(speed=self.speed, vehicles=self.vehicles, modbus=ModbusConfig(port=0),
                         plc_protocol=self.plc, opcua=OpcUaConfig(port=0), can=single)
        o = self._sim_overrides
        cfg = o(base) if callable(o) else merge_model(base, o) if o else base
        if self.can_buses:
            # the layout is checked against the station the overrides made (slots), so it
            # goes in after them
            cfg = cfg.model_copy(update={"can": CanConfig(buses=[
                CanBusConfig(name=bus, interface=self.can_interface, channel=channel,
                             udp_port=port, locations=self.can_buses[bus])
                for bus, (channel, port) in self.bus_channels.items()])})
        cfg = _revalidate(cfg)
        if cfg.speed != self.speed:
            raise ValueError(f"sim speed {cfg.speed} != rig speed {self.speed}: set the "
                             "rig's `speed` (it sets the simulator's and swapd's)")
        return cfg

    def build_config(self, plc_port: int) -> StationConfig:
        """swapd's configuration for a simulator whose PLC listens on `plc_port` (Modbus
        TCP, or OPC UA with SignAndEncrypt and the trust list in workdir/pki)."""
        if self.plc == "opcua":
            served = self.sim_config.opcua
            opcua = OpcUaSection(endpoint=f"opc.tcp://{served.host}:{plc_port}{served.path}",
                                 pki_dir=self.workdir / "pki")
            if self.poll_period_s is not None:
                # a slower publishing interval keeps the keep-alive period within half the
                # default staleness, as the configuration requires
                stale = PlcSection.model_fields["stale_after_s"].default
                keepalive = max(1, min(opcua.keepalive_count,
                                       int(stale / (2 * self.poll_period_s))))
                opcua = opcua.model_copy(
                    update={"publishing_interval_ms": self.poll_period_s * 1000,
                            "keepalive_count": keepalive})
            plc = PlcSection(protocol="opcua", opcua=opcua)
        else:
            modbus = ModbusSection(host=self.sim_config.modbus.host, port=plc_port)
            if self.poll_period_s is not None:
                modbus = modbus.model_copy(update={"poll_period_s": self.poll_period_s})
            plc = PlcSection(modbus=modbus)
        cfg = StationConfig(
            plc=plc,
            can=CanSection(buses=[
                CanBus(name=bus, interface=self.can_interface, channel=channel, udp_port=port,
                       locations=self.can_buses[bus])
                for bus, (channel, port) in self.bus_channels.items()]) if self.can_buses else
            CanSection(interface=self.can_interface, channel=self.channel,
                       udp_port=self.can_port),
            sequence=SequenceSection(speed_factor=self.speed),
            journal=JournalSection(path=self.journal_path),
            # any free port: many rigs run at once (the endpoint's port: daemon.metrics.port)
            metrics=MetricsSection(port=0),
            **self._base_sections(),
        )
        o = self._config_overrides
        cfg = o(cfg) if callable(o) else merge_model(cfg, o) if o else cfg
        cfg = _revalidate(cfg)
        if cfg.sequence.speed_factor != self.speed:
            raise ValueError(f"sequence.speed_factor {cfg.sequence.speed_factor} != rig speed "
                             f"{self.speed}: set the rig's `speed` (it sets both)")
        return cfg

    def _base_sections(self) -> dict[str, Any]:
        return {}

    @property
    def sim(self) -> SimStation:
        if self._sim is None:
            raise RuntimeError("the rig is not started")
        return self._sim

    @property
    def config(self) -> StationConfig:
        """swapd's configuration (known once the simulator has its port)."""
        if self._config is None:
            raise RuntimeError("the rig is not started")
        return self._config

    @property
    def modbus(self) -> ModbusSection:
        m = self.config.plc.modbus
        assert m is not None
        return m

    async def _start_sim(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._session = current_artifacts()
        if self._session is not None:
            self._session.rigs.append(self)
            if self._tmp is not None:
                self._session.defer_cleanup(self._tmp.cleanup)
                self._tmp = None  # the session removes it once the artifacts are saved
        sim = SimStation(self.sim_config)
        await sim.start()
        self._sim = sim
        self._config = self.build_config(sim.plc_port)
        if self.plc == "opcua":
            try:
                self.prepare_pki(sim)
            except BaseException:
                await sim.stop()
                raise

    def prepare_pki(self, sim: SimStation) -> None:
        """swapd's trust list for the simulated PLC: its application certificate (made once
        per workdir) and the simulator's server certificate among the trusted ones."""
        from drivers.plc.opcua_security import TrustList, create_application_certificate

        section = self.config.plc.link_section()
        assert isinstance(section, OpcUaSection)
        TrustList(section.pki_dir).ensure_dirs()
        if not section.certificate_path.exists():
            create_application_certificate(
                section.certificate_path, section.private_key_path,
                application_uri=section.application_uri, hostnames=["localhost"])
        from sim_hw.opcua_server import OpcUaPlcServer

        assert isinstance(sim.plc, OpcUaPlcServer)
        trusted = section.pki_dir / "trusted" / "certs" / "sim-plc.der"
        shutil.copyfile(sim.plc.server_certificate_path, trusted)

    async def _stop_sim(self) -> None:
        if self._sim is not None:
            self._sim_snapshot = self.sim_state()
            await self._sim.stop()

    def _cleanup(self) -> None:
        if self._can_lease is not None:
            self._can_lease.close()
        for lease in self._bus_leases:
            lease.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def manual_home(self) -> dict[str, Any]:
        """The technician's hand pendant on the simulator (SimStation.manual_home): bring
        the machine home after an abort, outside swapd. Returns what was done."""
        return self.sim.manual_home()

    # waiting
    async def sim_sleep(self) -> None:
        """A moment for the simulator and the daemon to move on."""
        await asyncio.sleep(0.02)

    def _dead(self) -> str | None:
        """Why the daemon is no longer running, or None while it runs."""
        raise NotImplementedError

    async def _describe(self) -> str:
        raise NotImplementedError

    async def wait_for(self, pred: Callable[[], Any], timeout: float = 60.0, what: str = "",
                       poll: float = 0.005) -> None:
        """Wait until pred() is true; AssertionError with the daemon's status on timeout
        or if the daemon has stopped."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not pred():
            dead = self._dead()
            if dead is not None:
                raise AssertionError(f"waiting for {what or 'a condition'}: {dead}")
            if loop.time() > end:
                raise AssertionError(f"timed out after {timeout:g} s waiting for "
                                     f"{what or 'a condition'}; daemon {await self._describe()}")
            await asyncio.sleep(poll)

    # artifacts
    def sim_state(self) -> dict[str, Any]:
        """The simulator's state: while it runs, now; after the rig stopped, at the stop."""
        if self._sim is None or (self._stopped and self._sim_snapshot is not None):
            return self._sim_snapshot or {}
        sim = self._sim
        return {
            "sim_time_s": _guard(sim.now),
            "truth": _guard(sim.truth),
            "violations": _guard(lambda: list(sim.observer.violations)),
            "command_log": _guard(lambda: list(sim.command_log)),
            "faults_active": _guard(lambda: [f for f in sim.faults.list() if f["active"]]),
            "recent_events": _guard(lambda: list(sim.events)),
            "config": _guard(lambda: sim.config.model_dump(mode="json")),
        }

    def daemon_state(self) -> dict[str, Any]:
        return {}

    def save_artifacts(self, dest: Path) -> Path:
        """Write the journal (a copy), the simulator's state, the daemon's state and its log
        into `dest`: journal.sqlite, sim-state.json, daemon.json, events.jsonl (in-process
        rig), swapd.log.jsonl."""
        dest.mkdir(parents=True, exist_ok=True)
        try:
            copy_journal(self.journal_path, dest / JOURNAL_FILE)
        except OSError as exc:
            (dest / "journal-error.txt").write_text(f"{exc}\n")
        _dump(dest / "sim-state.json", self.sim_state())
        state = {"rig": type(self).__name__, "name": self.name, "speed": self.speed,
                 "workdir": str(self.workdir), "journal": str(self.journal_path),
                 "config": _guard(lambda: self.config.model_dump(mode="json")),
                 **self.daemon_state()}
        _dump(dest / "daemon.json", state)
        self._save_more(dest)
        if self.log_path is not None and self.log_path.exists():
            shutil.copy2(self.log_path, dest / LOG_FILE)
        return dest

    def _save_more(self, dest: Path) -> None:
        pass


class Rig(_Harness):
    """The simulated station and swapd in this process (an async context manager).

    speed       simulated time runs this many times faster; swapd's speed_factor is the same
    vehicles    cars the simulator sends (0: no end)
    sim         dict merged into the SimConfig built by the rig, or a function of it
    config      dict merged into the StationConfig built by the rig (e.g.
                {"operation": {"auto_start": False}}), or a function of it
    workdir     where the journal and the log go (default: a temporary directory)
    journal     the journal's path (default: workdir/journal.sqlite)
    observer    called with every event of the daemon, after `events` has it
    can         "virtual" (default) or "udp_multicast"
    can_buses   several CAN buses, name -> locations (e.g. `bay_and_rack()`), each on a
                channel (virtual) or port (udp_multicast) of its own, the same layout for
                the simulator and swapd; None: one bus serving every location
    poll_period_s  swapd's Modbus poll period, or OPC UA publishing interval; None: swapd's
                default
    plc         "modbus" or "opcua" (SignAndEncrypt, certificates made in workdir/pki);
                None: $SWAP_PLC, else "modbus"
    capture_log the run's log lines as JSON into workdir/swapd.log.jsonl (default: when a
                test's artifact session is active)
    """

    def __init__(
        self,
        *,
        speed: float = 50.0,
        vehicles: int = 3,
        sim: SimOverrides = None,
        config: ConfigOverrides = None,
        workdir: Path | None = None,
        journal: Path | None = None,
        observer: Callable[[Any], None] | None = None,
        can: Literal["virtual", "udp_multicast"] = "virtual",
        poll_period_s: float | None = 0.01,
        capture_log: bool | None = None,
        name: str = "rig",
        plc: PlcProtocol | None = None,
        can_buses: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.can_interface = can
        super().__init__(speed=speed, vehicles=vehicles, sim=sim, config=config,
                         workdir=workdir, journal=journal, poll_period_s=poll_period_s,
                         name=name, plc=plc, can_buses=can_buses)
        self.observer = observer
        self.capture_log = capture_log
        self.events: list[Any] = []
        self._daemon: Any = None
        self.task: asyncio.Task[None] | None = None
        self.stop_event = asyncio.Event()
        self.daemon_error: BaseException | None = None
        self._status_at_stop: dict[str, Any] | None = None
        self._exit = contextlib.ExitStack()

    @property
    def daemon(self) -> Any:
        """The `station.daemon.Daemon` (typed Any: the daemon is being refactored)."""
        if self._daemon is None:
            raise RuntimeError("the rig is not started")
        return self._daemon

    @property
    def core(self) -> Any:
        return self.daemon.core

    def status(self) -> dict[str, Any]:
        return dict(self.daemon.core.status())

    async def command(self, cmd: Any, origin: str = "test") -> None:
        """An operator command (a station.packml.Cmd); raises CommandRefused."""
        await self.daemon.command(cmd, origin=origin)

    def ended(self) -> list[dict[str, Any]]:
        """The data of every swap_ended event so far."""
        return [e.data for e in self.events if e.kind == "swap_ended"]

    def _on_event(self, ev: Any) -> None:
        self.events.append(ev)
        if self.observer is not None:
            self.observer(ev)

    async def start(self) -> Rig:
        from station.daemon import Daemon  # the daemon pulls in the drivers

        capture = self.capture_log
        if capture is None:
            capture = current_artifacts() is not None
        try:
            if capture:
                from station.logs import capture_to_file

                self.log_path = self.workdir / LOG_FILE
                self._exit.enter_context(capture_to_file(self.log_path))
            await self._start_sim()
            self._daemon = Daemon(self.config, observer=self._on_event)
            self.task = asyncio.create_task(self._daemon.run(self.stop_event), name="swapd")
        except BaseException:
            await self._stop_sim()
            self._exit.close()
            self._cleanup()
            raise
        return self

    async def stop(self, timeout: float = 20.0, *, raise_errors: bool = True) -> None:
        """Stop the daemon (waiting up to `timeout` s, then TimeoutError) and the simulator.
        The default is above the daemon's own bounded stop (station/daemon.py `_shutdown`:
        the API's grace 2 s + the scan 5 s + the cloud's drain 2 s and close 1 s + the tasks
        5 s = 15 s): 10 s cut a slow but bounded stop short on a loaded machine.
        The daemon's own failure, if any, is raised (unless raise_errors is False)."""
        if self._stopped:
            return
        self._stopped = True
        failure: BaseException | None = None
        try:
            if self._daemon is not None:
                self._status_at_stop = _guard(self.status)
            self.stop_event.set()
            if self.task is not None:
                try:
                    await asyncio.wait_for(self.task, timeout)
                except TimeoutError as exc:
                    failure = exc
                except Exception as exc:
                    self.daemon_error = failure = exc
        finally:
            try:
                await self._stop_sim()
            finally:
                self._exit.close()
                self._cleanup()
        if failure is not None and raise_errors:
            raise failure

    async def __aenter__(self) -> Rig:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop(raise_errors=exc is None)  # never hide the body's own exception

    def _dead(self) -> str | None:
        if self.task is None or not self.task.done():
            return None
        if self.task.cancelled():
            return "the daemon task was cancelled"
        exc = self.task.exception()
        if exc is not None:
            raise AssertionError(f"the daemon task failed: {exc!r}") from exc
        return f"the daemon stopped; {self.status()}"

    async def _describe(self) -> str:
        return str(_guard(self.status))

    def daemon_state(self) -> dict[str, Any]:
        error = self.daemon_error
        if error is None and self.task is not None and self.task.done() \
                and not self.task.cancelled():
            error = self.task.exception()
        return {
            "status": (self._status_at_stop if self._stopped and self._status_at_stop
                       else _guard(self.status)),
            "running": self.task is not None and not self.task.done(),
            "error": None if error is None else repr(error),
            "events": len(self.events),
        }

    def _save_more(self, dest: Path) -> None:
        with (dest / "events.jsonl").open("w") as f:
            for ev in self.events:
                f.write(json.dumps(_event_line(ev), default=_json_default) + "\n")


def _event_line(ev: Any) -> dict[str, Any]:
    try:
        return {"kind": ev.kind, **ev.data}
    except Exception as exc:
        return {"kind": getattr(ev, "kind", "?"), "error": repr(exc), "repr": repr(ev)}


class DaemonProcess:
    """A `swapd --config FILE` subprocess, its stdout and stderr appended to `log`, and a
    client of its operator API (the `[api] socket` next to the config file)."""

    def __init__(self, config: Path, log: Path, socket: Path | None = None) -> None:
        self.config, self.log = config, log
        self.socket = socket or config.parent / "swapd.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "station.cli", "--config", str(self.config)],
                stdout=logf, stderr=logf, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    async def status(self, timeout: float = 20.0) -> dict[str, Any]:
        """The daemon's status once its API answers."""
        from station.local_api import request

        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            assert self.running, self.log_tail()
            try:
                r = await request(self.socket, {"cmd": "status"}, timeout=2.0)
                return dict(r["status"])
            except (TimeoutError, OSError, ConnectionError, ValueError):
                if loop.time() > end:
                    raise
                await asyncio.sleep(0.05)

    async def command(self, word: str) -> dict[str, Any]:
        from station.local_api import request

        return dict(await request(self.socket, {"cmd": word}, timeout=5.0))


class ProcessRig(_Harness):
    """The simulated station in this process, swapd as a subprocess pointed at it (Modbus
    TCP on loopback, CAN over udp_multicast, operator API on workdir/swapd.sock, JSON log
    in workdir/swapd.log.jsonl). `daemon` is its `DaemonProcess` (start, kill, terminate,
    status, command); `start_daemon=False` leaves starting it to the caller.
    Options as for `Rig`; swapd's configuration file is workdir/swapd.toml."""

    can_interface: Literal["virtual", "udp_multicast"] = "udp_multicast"

    def __init__(
        self,
        *,
        speed: float = 50.0,
        vehicles: int = 3,
        sim: SimOverrides = None,
        config: ConfigOverrides = None,
        workdir: Path | None = None,
        journal: Path | None = None,
        poll_period_s: float | None = 0.01,
        start_daemon: bool = True,
        log_level: Literal["debug", "info", "warning", "error"] = "info",
        name: str = "rig",
        plc: PlcProtocol | None = None,
        can_buses: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        super().__init__(speed=speed, vehicles=vehicles, sim=sim, config=config,
                         workdir=workdir, journal=journal, poll_period_s=poll_period_s,
                         name=name, plc=plc, can_buses=can_buses)
        self.start_daemon = start_daemon
        self.log_level = log_level
        self.daemon_log = self.workdir / LOG_FILE
        self.log_path = self.daemon_log
        self.config_path = self.workdir / "swapd.toml"
        self._daemon: DaemonProcess | None = None

    def _base_sections(self) -> dict[str, Any]:
        return {"api": ApiSection(socket=self.workdir / "swapd.sock", socket_mode=0o600),
                "log": LogSection(format="json", level=self.log_level)}

    @property
    def daemon(self) -> DaemonProcess:
        if self._daemon is None:
            raise RuntimeError("the rig is not started")
        return self._daemon

    async def start(self) -> ProcessRig:
        try:
            await self._start_sim()
            write_config_toml(self.config, self.config_path)
            socket = self.config.api.socket
            self._daemon = DaemonProcess(self.config_path, self.daemon_log, socket)
            if self.start_daemon:
                self._daemon.start()
        except BaseException:
            await self._stop_sim()
            self._cleanup()
            raise
        return self

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            if self._daemon is not None:
                self._daemon.terminate()
        finally:
            try:
                await self._stop_sim()
            finally:
                self._cleanup()

    async def __aenter__(self) -> ProcessRig:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    def _dead(self) -> str | None:
        d = self._daemon
        if d is None or d.proc is None or d.running:
            return None
        return f"swapd exited with {d.proc.returncode}; its log ends:\n{d.log_tail()}"

    async def _describe(self) -> str:
        try:
            return str(await self.daemon.status(timeout=2.0))
        except (AssertionError, TimeoutError, OSError, ValueError) as exc:
            return f"(no status: {exc!r}); its log ends:\n{self.daemon.log_tail()}"

    def daemon_state(self) -> dict[str, Any]:
        d = self._daemon
        return {"pid": d.proc.pid if d and d.proc else None,
                "returncode": d.proc.poll() if d and d.proc else None,
                "config_file": str(self.config_path)}

    def _save_more(self, dest: Path) -> None:
        if self.config_path.exists():
            shutil.copy2(self.config_path, dest / "swapd.toml")


__all__ = [
    "ArtifactSession",
    "DaemonProcess",
    "ProcessRig",
    "Rig",
    "artifact_dir_name",
    "artifacts_root",
    "bay_and_rack",
    "begin_artifacts",
    "config_toml",
    "copy_journal",
    "current_artifacts",
    "end_artifacts",
    "merge_model",
    "multicast_group",
    "write_config_toml",
]
