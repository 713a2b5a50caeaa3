"""Simulator configuration: one `[sim]` table in a TOML file, validated with pydantic.

Every key has a default, so `SimConfig()` is a complete, working simulator. Errors name
the offending key (`sim.station.slots: ...`) so that a bad file is fixed, not guessed at.
"""

from __future__ import annotations

import random
import tomllib
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from drivers.bms.protocol import MAX_RACK_SLOTS
from sim_hw.packs import AMBIENT_C, CHEMISTRIES, Chemistry
from station.buslayout import BUS_NAME_PATTERN, SHORTHAND_BUS, check_layout, every_location

PackFamily = Literal[20, 25]

# Register map arrays bound these: rack_slot_occupied has 30 entries, bolt_torque 12.
MAX_SLOTS = min(30, MAX_RACK_SLOTS)
MAX_BOLTS = 12
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes on Linux, one for the terminating NUL


# A simulated car's VIN as its BMS sends it (J1939-71 Vehicle Identification, 17 ASCII
# characters then '*'): any 17 printable ASCII characters but '*', so that a bench can also
# send a VIN the station must refuse (ISO 3779 has no I, O or Q; sim_hw.vehicles.default_vin
# makes valid ones).
SimVin = Annotated[str, Field(pattern=r"^[!-)+-~]{17}$")]


class SimConfigError(ValueError):
    """A simulator configuration that cannot be used; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModbusConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=5020, ge=0, le=65535)  # 0 = any free port (tests)


# OPC UA security policies the simulated PLC can offer (asyncua's SecurityPolicyType): a
# base name means SignAndEncrypt, "<base>_Sign" / "<base>_SignAndEncrypt" say the mode,
# "None" is no security at all.
OPCUA_POLICY_BASES = ("Basic128Rsa15", "Basic256", "Basic256Sha256", "Aes128Sha256RsaOaep",
                      "Aes256Sha256RsaPss")
OPCUA_MODES = ("Sign", "SignAndEncrypt")
OPCUA_NO_SECURITY = "NoSecurity"  # asyncua's name for policy "None"


def opcua_policy_type(name: str) -> str:
    """A policy name as configured -> asyncua's SecurityPolicyType member name
    ("Basic256Sha256" -> "Basic256Sha256_SignAndEncrypt", "None" -> "NoSecurity");
    ValueError for a name asyncua does not know."""
    if name in ("None", OPCUA_NO_SECURITY):
        return OPCUA_NO_SECURITY
    base, _, mode = name.partition("_")
    if base in OPCUA_POLICY_BASES and (not mode or mode in OPCUA_MODES):
        return f"{base}_{mode or 'SignAndEncrypt'}"
    known = ", ".join([*OPCUA_POLICY_BASES, "None"])
    raise ValueError(f"security policy {name!r} is not one of {known} (optionally with "
                     "_Sign or _SignAndEncrypt)")


class OpcUaConfig(_Strict):
    """`[sim.opcua]`: the simulated PLC as an OPC UA server (with `plc_protocol = "opcua"`).

    Clients connect to opc.tcp://host:port/path (a relay in front of the server, so that
    the PLC can go silent without closing a connection). Each policy is offered with
    SignAndEncrypt unless it says `_Sign`; "None" (no security) only when listed. The
    server's certificate and key are kept in pki_dir/own (made at the first start);
    with trust_any_client = false only the client certificates in pki_dir/trusted/certs
    are accepted. With `users` a username and password is required, else anonymous.
    """

    host: str = Field(default="127.0.0.1", min_length=1, max_length=253,
                      pattern=r"^[^\s/\x00\[\]]+$")
    port: int = Field(default=4840, ge=0, le=65535)  # 0 = any free port (tests)
    path: str = Field(default="/swapstation", max_length=200, pattern=r"^(/[^\s\x00]*)?$")
    node_map: str | None = Field(default=None, min_length=1)  # None: the shipped map
    policies: list[str] = Field(
        default_factory=lambda: ["Basic256Sha256", "Aes256Sha256RsaPss"], min_length=1)
    pki_dir: str | None = Field(default=None, min_length=1)  # None: a temporary directory
    trust_any_client: bool = True
    users: dict[str, str] = Field(default_factory=dict)  # username -> password
    certificate_valid_s: float | None = Field(default=None, gt=0)  # None: 10 years
    scan_s: float = Field(default=0.005, gt=0, le=1.0)  # real s between input refreshes

    @field_validator("policies")
    @classmethod
    def _known_policies(cls, policies: list[str]) -> list[str]:
        seen: dict[str, str] = {}
        for name in policies:
            kind = opcua_policy_type(name)  # ValueError naming the unknown one
            if kind in seen:
                raise ValueError(f"{name!r} is {seen[kind]!r} again")
            seen[kind] = name
        return policies

    @field_validator("users")
    @classmethod
    def _real_users(cls, users: dict[str, str]) -> dict[str, str]:
        for user, password in users.items():
            if not user or not user.isprintable():
                raise ValueError(f"user name {user!r} must be non-empty and printable")
            if not password:
                raise ValueError(f"user {user}: the password must not be empty")
        return users

    def policy_types(self) -> list[str]:
        """The policies as asyncua SecurityPolicyType member names, in the order given."""
        return [opcua_policy_type(p) for p in self.policies]


class CanBusConfig(_Strict):
    """One `[[sim.can.buses]]` entry: a bus and the pack locations whose BMS are on it
    (as swapd's `[[can.buses]]`: "bay", "slot:N", "slot:N-M")."""

    name: str = Field(pattern=BUS_NAME_PATTERN)
    interface: Literal["virtual", "udp_multicast", "socketcan"] = "virtual"
    channel: str = Field(min_length=1)
    bitrate: int | None = Field(default=None, gt=0)
    udp_port: int | None = Field(default=None, ge=1, le=65535)
    locations: list[str] = Field(min_length=1)


class CanConfig(_Strict):
    """`[sim.can]`: one bus (interface, channel, bitrate, udp_port: every pack on it), or a
    `[[sim.can.buses]]` list; not both."""

    interface: Literal["virtual", "udp_multicast", "socketcan"] = "virtual"
    channel: str = "swapstation"
    bitrate: int | None = Field(default=None, gt=0)
    # udp_multicast only (like swapd's `[can] udp_port`): the UDP port, python-can's 43113
    # when None. Two runs on one host are kept apart by the port, not by the group.
    udp_port: int | None = Field(default=None, ge=1, le=65535)
    buses: list[CanBusConfig] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_form(self) -> CanConfig:
        if self.buses is None:
            return self
        both = sorted(self.model_fields_set & {"interface", "channel", "bitrate", "udp_port"})
        if both and any(getattr(self, k) != CanConfig.model_fields[k].default for k in both):
            raise ValueError(f"{both[0]}: buses are given, so each bus names its own "
                             "interface, channel, bitrate and udp_port")
        return self

    def bus_list(self) -> list[CanBusConfig]:
        """The buses, normalised: the single-bus form is one bus "pack" serving every
        location."""
        if self.buses is not None:
            return list(self.buses)
        return [CanBusConfig(name=SHORTHAND_BUS, interface=self.interface, channel=self.channel,
                             bitrate=self.bitrate, udp_port=self.udp_port,
                             locations=every_location())]


class StationConfig(_Strict):
    slots: int = Field(default=13, ge=1, le=MAX_SLOTS)
    bolt_count: int = Field(default=10, ge=1, le=MAX_BOLTS)
    swap_height_mm: float = Field(default=500.0, gt=0, le=65535)
    shuttle_car_mm: float = Field(default=3000.0, gt=0, le=65535)


class TimingConfig(_Strict):
    """Step durations in simulated seconds (wall time = value / speed).

    No public source gives per-step times, only totals, so these are design choices that
    add up to NIO PSS 4.0's 144 s swap: identify 8 + position 15 + lift 10 + unlock 15 +
    remove 12 + store 15 + fetch 15 + install 12 + lock 15 + check 7 + lower 10 +
    release 10 = 144. `identify` (arrival -> vehicle ready) and `check` (LOCK done -> new
    pack on CAN) are the car's own delays; the rest are PLC command durations.
    """

    identify: float = Field(default=8.0, ge=0)
    position: float = Field(default=15.0, ge=0)
    lift: float = Field(default=10.0, ge=0)
    unlock: float = Field(default=15.0, ge=0)
    remove: float = Field(default=12.0, ge=0)
    store: float = Field(default=15.0, ge=0)
    fetch: float = Field(default=15.0, ge=0)
    install: float = Field(default=12.0, ge=0)
    lock: float = Field(default=15.0, ge=0)
    check: float = Field(default=7.0, ge=0)
    lower: float = Field(default=10.0, ge=0)
    release: float = Field(default=10.0, ge=0)
    # recovery only, not part of a swap: shuttle and stacker back home from anywhere
    home: float = Field(default=10.0, ge=0)

    def total(self) -> float:
        """A whole swap, identify to release (HOME is never part of one)."""
        return sum(float(v) for k, v in self.model_dump().items() if k != "home")


class RackPackConfig(_Strict):
    slot: int = Field(ge=1, le=MAX_SLOTS)
    serial: int = Field(ge=1, le=0xFFFFFFFE)  # 0xFFFFFFFF is "not available" in J1939
    family: PackFamily
    chemistry: Chemistry
    soc: float = Field(ge=0, le=100)
    # state of health, %; None: drawn from the seed (90..99.5 %, a pack in service)
    soh: float | None = Field(default=None, ge=50, le=100)
    # every cell's temperature at the start; None: `[sim] ambient_c`
    temp_c: float | None = Field(default=None, ge=-40, le=80)


# ---- arrivals: the vehicles that come to the station over a day ----------------------

HOURS_PER_DAY = 24

# The "peaks" demand profile: relative demand for each hour of the day (index 0 = 00:00 to
# 01:00). A commuter pattern: a quiet night, a morning peak 07-09, a steady day, an evening
# peak 17-19 (the highest), tailing off to midnight. Shares, not counts:
# peaks_rate_per_hour() scales them to a daily total.
PEAKS_SHAPE: tuple[float, ...] = (
    1.0, 0.6, 0.5, 0.5, 0.7, 1.5,  # 00-06
    3.0, 6.5, 7.5, 5.5, 4.0, 4.0,  # 06-12: morning peak 07-09
    4.5, 4.0, 3.8, 4.2, 5.5, 7.5,  # 12-18: evening peak from 17
    8.0, 6.5, 4.5, 3.0, 2.0, 1.4,  # 18-24
)


def peaks_rate_per_hour(vehicles_per_day: float = 400.0) -> list[float]:
    """The "peaks" profile: vehicles per hour for each hour of the day (24 values summing
    to `vehicles_per_day`), in the shape of PEAKS_SHAPE."""
    total = sum(PEAKS_SHAPE)
    return [vehicles_per_day * s / total for s in PEAKS_SHAPE]


def _default_chemistry_share() -> dict[Chemistry, float]:
    return {"nmc": 0.5, "lfp": 0.35, "sodium_ion": 0.15}


class ScheduledArrival(_Strict):
    """One car coming to the station: when it joins the queue and what it brings."""

    at_s: float = Field(ge=0)  # sim seconds since start (0 = 00:00 of the first day)
    family: PackFamily
    chemistry: Chemistry
    soc: float = Field(ge=0, le=100)
    # the pack's temperature on arrival (its cells within +-1 C of it); None: just driven,
    # its hottest cell 3..8 C above `[sim] ambient_c` (drawn from the seed)
    temp_c: float | None = Field(default=None, ge=-40, le=80)
    # the pack's state of health, %; None: drawn from the seed (85..99 %)
    soh: float | None = Field(default=None, ge=50, le=100)
    vin: SimVin | None = None  # None: from `[sim] vins`, else derived from its token


class ArrivalsConfig(_Strict):
    """`[sim.arrivals]`: cars come on a schedule and queue for the platform.

    Without this table the simulator keeps its original behaviour: one car
    `arrival_gap_s` after each departure. With it, cars join a queue at their arrival times;
    the first in line drives onto the platform when it is free (`arrival_gap_s` after the
    last car left). A car still in the queue `patience_s` after it came leaves unserved
    (turned away); a car on the platform stays until its swap is done.

    profile   "poisson": a non-homogeneous Poisson process, `rate_per_hour[h]` cars per
              hour during hour h of each day, drawn from the seed for `hours` hours
              (sim_hw.vehicles.arrival_schedule); "saturated": a car is always waiting (a
              new one joins whenever the queue empties), for `hours` hours: the station's
              capacity. An explicit `schedule` replaces either.
    family_share, chemistry_share   the mix of arriving cars (weights, normalised)
    soc_pct   arriving SOC, uniform in [lo, hi]
    temp_c    a warm pack's temperature on arrival, uniform in [lo, hi] (just driven)
    cold_share, cold_temp_c   the share of cars whose pack arrives cold-soaked (a winter
              day), at a temperature uniform in cold_temp_c
    """

    profile: Literal["poisson", "saturated"] = "poisson"
    rate_per_hour: list[float] = Field(
        default_factory=peaks_rate_per_hour, min_length=HOURS_PER_DAY,
        max_length=HOURS_PER_DAY)
    hours: float = Field(default=24.0, gt=0)
    patience_s: float | None = Field(default=900.0, gt=0)  # None: nobody leaves the queue
    family_share: dict[str, float] = Field(default_factory=lambda: {"20": 0.5, "25": 0.5})
    chemistry_share: dict[Chemistry, float] = Field(default_factory=_default_chemistry_share)
    soc_pct: tuple[float, float] = (5.0, 30.0)
    temp_c: tuple[float, float] = (28.0, 33.0)
    cold_share: float = Field(default=0.0, ge=0, le=1)
    cold_temp_c: tuple[float, float] = (-15.0, -12.0)
    schedule: list[ScheduledArrival] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> ArrivalsConfig:
        if any(r < 0 for r in self.rate_per_hour):
            raise ValueError("rate_per_hour: rates must be >= 0")
        families = set(get_args(PackFamily))
        for key, w in self.family_share.items():
            if not key.isdigit() or int(key) not in families:
                raise ValueError(f"family_share.{key}: not a pack family "
                                 f"({', '.join(str(f) for f in sorted(families))})")
            if w < 0:
                raise ValueError(f"family_share.{key}: weight {w} must be >= 0")
        if sum(self.family_share.values()) <= 0:
            raise ValueError("family_share: needs a positive weight")
        if any(w < 0 for w in self.chemistry_share.values()) or \
                sum(self.chemistry_share.values()) <= 0:
            raise ValueError("chemistry_share: weights must be >= 0, one positive")
        for name, (lo, hi), (low, high) in (("soc_pct", self.soc_pct, (0, 100)),
                                            ("temp_c", self.temp_c, (-40, 80)),
                                            ("cold_temp_c", self.cold_temp_c, (-40, 80))):
            if not low <= lo <= hi <= high:
                raise ValueError(f"{name}: [{lo}, {hi}] must be a range inside "
                                 f"[{low}, {high}]")
        return self


class RelayCoilConfig(_Strict):
    """What one coil of `[sim.relay]` makes when on: `swap-sim fault set FAULT`."""

    fault: str = Field(min_length=1)
    target: str | int | None = None
    value: float | str | None = None

    @field_validator("fault")
    @classmethod
    def _known(cls, fault: str) -> str:
        from sim_hw.faults import FAULT_NAMES  # faults pulls in the pack model

        if fault not in FAULT_NAMES:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULT_NAMES)}")
        return fault


class RelayBoardConfig(_Strict):
    """`[sim.relay]`: a simulated Modbus TCP relay module (sim_hw/relay_board.py) served
    next to the PLC: coil N on sets the fault wired to it, off clears it, as a bench's
    relays do (a swap-bench `[[bench.relay]]` can point at it)."""

    host: str = "127.0.0.1"
    port: int = Field(default=5021, ge=0, le=65535)  # 0 = any free port
    device_id: int = Field(default=1, ge=0, le=255)
    count: int = Field(default=16, ge=1, le=1024)  # coils 0..count-1
    coils: dict[int, RelayCoilConfig] = Field(default_factory=dict)  # "0" = "estop" too

    @field_validator("coils", mode="before")
    @classmethod
    def _names(cls, raw: object) -> object:
        if isinstance(raw, dict):
            return {a: {"fault": c} if isinstance(c, str) else c for a, c in raw.items()}
        return raw

    @model_validator(mode="after")
    def _on_the_board(self) -> RelayBoardConfig:
        for addr in self.coils:
            if not 0 <= addr < self.count:
                raise ValueError(f"coils.{addr}: beyond the board's {self.count} coils")
        return self

    def wiring(self) -> dict[int, RelayCoilConfig]:
        return dict(self.coils)


class SimConfig(_Strict):
    speed: float = Field(default=1.0, gt=0)
    seed: int = 1
    # the air every pack stands in (rack, car, arrival): it starts there unless told
    # otherwise and relaxes towards it (sim_hw/packs.py)
    ambient_c: float = Field(default=AMBIENT_C, ge=-40, le=60)
    vehicles: int = Field(default=0, ge=0)  # total arrivals; 0 = unlimited
    arrival_gap_s: float = Field(default=5.0, ge=0)
    ctrl_heartbeat_timeout_s: float = Field(default=1.0, gt=0)  # real seconds, not scaled
    # Unix socket for the local control API (fault injection, observer); None = none
    control_socket: str | None = Field(default=None, min_length=1, max_length=MAX_SOCKET_PATH)
    # the PLC's protocol: Modbus TCP (`[sim.modbus]`) or OPC UA (`[sim.opcua]`)
    plc_protocol: Literal["modbus", "opcua"] = "modbus"
    modbus: ModbusConfig = Field(default_factory=ModbusConfig)
    opcua: OpcUaConfig = Field(default_factory=OpcUaConfig)
    can: CanConfig = Field(default_factory=CanConfig)
    station: StationConfig = Field(default_factory=StationConfig)
    timing: TimingConfig = Field(default_factory=TimingConfig)
    rack_pack: list[RackPackConfig] = Field(default_factory=list)
    # None: one car arrival_gap_s after each departure (the original behaviour)
    arrivals: ArrivalsConfig | None = None
    # The cars' VINs, in the order they drive onto the platform (a scheduled arrival's own
    # `vin` first); a car beyond the list gets one derived from its reader token.
    vins: list[SimVin] = Field(default_factory=list)
    # Each car's BMS sends its VIN (Vehicle Identification, a J1939-21 BAM at the bay's
    # address) on arrival and every 5 s / speed; false: no car sends one.
    vin_broadcast: bool = True
    # No car comes until released (control op "release_arrivals", SimStation.
    # release_arrivals): a scenario runner sets the station up first; the arrivals' times
    # then count from the release.
    hold_arrivals: bool = False
    # a simulated fault relay module; None: none
    relay: RelayBoardConfig | None = None

    @model_validator(mode="after")
    def _check_rack(self) -> SimConfig:
        slots: set[int] = set()
        serials: set[int] = set()
        for i, p in enumerate(self.rack_pack):
            if p.slot > self.station.slots:
                raise ValueError(
                    f"rack_pack.{i}.slot: {p.slot} is above station.slots {self.station.slots}"
                )
            if p.slot in slots:
                raise ValueError(f"rack_pack.{i}.slot: slot {p.slot} used twice")
            if p.serial in serials:
                raise ValueError(f"rack_pack.{i}.serial: serial {p.serial} used twice")
            slots.add(p.slot)
            serials.add(p.serial)
        if self.can.buses is not None:  # every location on one bus, slots 1..station.slots
            try:
                check_layout([(b.name, b.locations) for b in self.can.buses], "buses",
                             self.station.slots)
            except ValueError as exc:
                raise ValueError(f"can.{exc}") from None
        return self

    def served_slots(self) -> dict[str, frozenset[int]]:
        """Bus name -> the locations its packs are at (0: the bay, n: rack slot n)."""
        return check_layout([(b.name, b.locations) for b in self.can.bus_list()], "can.buses")

    def initial_rack(self) -> list[RackPackConfig]:
        """The explicit rack, or one generated from the seed: slots-1 packs, last slot free."""
        if self.rack_pack:
            return list(self.rack_pack)
        rng = random.Random(f"rack-{self.seed}")
        base = rng.randrange(10_000_000, 90_000_000)
        chemistries: tuple[Chemistry, ...] = CHEMISTRIES
        families: tuple[PackFamily, ...] = (20, 25)
        return [
            RackPackConfig(
                slot=slot,
                serial=base + slot,
                family=families[(slot - 1) % 2],
                chemistry=chemistries[(slot - 1) % 3],
                soc=round(rng.uniform(85.0, 100.0), 1),
            )
            for slot in range(1, self.station.slots)
        ]


def _format_errors(exc: ValidationError, prefix: str) -> str:
    lines = []
    for err in exc.errors():
        if not err["loc"] and err["type"] == "value_error":
            # a cross-field check: its message starts with the key it is about
            lines.append(f"{prefix}.{err['ctx']['error']}")
            continue
        loc = ".".join(str(p) for p in (prefix, *err["loc"]))
        lines.append(f"{loc}: {err['msg']}")
    return "; ".join(lines)


def parse_sim_config(data: dict, origin: str = "<config>") -> SimConfig:
    """Validate a parsed TOML document whose top table is [sim]."""
    extra = sorted(set(data) - {"sim"})
    if extra:
        raise SimConfigError(f"{origin}: {extra[0]}: unknown top-level key (expected [sim])")
    sim = data.get("sim", {})
    if not isinstance(sim, dict):
        raise SimConfigError(f"{origin}: sim: must be a table")
    try:
        return SimConfig.model_validate(sim)
    except ValidationError as exc:
        raise SimConfigError(f"{origin}: {_format_errors(exc, 'sim')}") from exc


def load_sim_config(path: str | Path) -> SimConfig:
    """Load and validate a simulator config file; raises SimConfigError naming the key."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise SimConfigError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SimConfigError(f"{p}: not valid TOML: {exc}") from exc
    return parse_sim_config(data, str(p))


def with_overrides(config: SimConfig, **changes: object) -> SimConfig:
    """A copy with top-level keys changed, validated like a file (errors name the key)."""
    data = config.model_dump()
    data.update({k: v for k, v in changes.items() if v is not None})
    try:
        return SimConfig.model_validate(data)
    except ValidationError as exc:
        raise SimConfigError(_format_errors(exc, "sim")) from exc
