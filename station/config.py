"""Station configuration: one TOML file, validated on load.

Every section has defaults that run the simulated station on loopback, so `swapd demo`
needs no file. A bad file is refused with the key and the problem named; the daemon
never starts on a guess.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
import zoneinfo
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from station.buslayout import (
    BUS_NAME_PATTERN,
    SHORTHAND_BUS,
    check_layout,
    every_location,
)

# Every number has physical bounds (and inf and nan are refused everywhere): a value out of
# them is a typo or a unit mistake (millivolts for volts, ms for s), never a setting.

# sockaddr_un.sun_path is 108 bytes on Linux, the terminating NUL included
MAX_SOCKET_PATH_BYTES = 107
# IFNAMSIZ is 16, NUL included: a socketcan interface name has at most 15 characters
MAX_IFNAME = 15


def _no_nul(p: Path) -> Path:
    if "\0" in str(p):
        raise ValueError("a path may not contain a NUL character")
    if not str(p).strip() or str(p) == ".":
        raise ValueError("an empty path")
    return p


FilePath = Annotated[Path, AfterValidator(_no_nul)]
Text = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")]
TorqueNm = Annotated[float, Field(ge=1.0, le=2000.0)]  # M8..M20 battery bolts: 10-500 N*m
AngleDeg = Annotated[float, Field(ge=0.0, le=3600.0)]  # at most ten turns of a bolt
# a family code (PackIdentity.PackFamily in the DBC: 0..250)
Family = Annotated[int, Field(ge=0, le=250)]


class _Section(BaseModel):
    # inf and nan are refused everywhere: `stale_after_s = inf` would mean a dead PLC is
    # never noticed
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# A station id is a topic level and a certificate's common name: no MQTT wildcard, no slash
StationId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


def _timezone(name: str) -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r} (an IANA name: Europe/Berlin, "
                         "Asia/Shanghai, UTC)") from exc
    return name


class StationSection(_Section):
    id: StationId = "PSS-SIM-0001"
    name: Text = "Simulated swap station"
    # local time of the power cap's daily schedule (grid peak hours are local)
    timezone: Annotated[str, Field(min_length=1, max_length=64),
                        AfterValidator(_timezone)] = "UTC"


class ModbusSection(_Section):
    """`[plc.modbus]`: the Modbus TCP link (drivers/plc/modbus_link.py)."""

    host: str = Field("127.0.0.1", min_length=1, max_length=253, pattern=r"^[^\s\x00]+$")
    port: int = Field(5020, ge=1, le=65535)
    register_map: FilePath | None = None  # None: the addressing shipped with the package
    # 1 ms: faster polling only loads the PLC; 1 s: slower, the station moves unwatched
    poll_period_s: float = Field(0.02, ge=0.001, le=1.0)
    # a Modbus TCP answer takes milliseconds; one not there after 30 s never comes
    timeout_s: float = Field(1.0, ge=0.01, le=30.0)

    @property
    def update_period_s(self) -> float:
        """How often fresh inputs arrive: one poll."""
        return self.poll_period_s

    @property
    def quiet_period_s(self) -> float:
        """The longest a working link goes without delivering inputs: one poll."""
        return self.poll_period_s


OpcUaPolicy = Literal["Basic256Sha256", "Aes256Sha256RsaPss", "Aes128Sha256RsaOaep", "None"]
OPCUA_DEFAULT_PKI = Path("/var/lib/swapd/pki")


class OpcUaSection(_Section):
    """`[plc.opcua]`: the OPC UA link (drivers/plc/opcua_link.py). Secure by default:
    Basic256Sha256 with SignAndEncrypt; policy "None" needs `allow_insecure = true` and is
    warned about at every start."""

    endpoint: str = Field("opc.tcp://127.0.0.1:4840", max_length=400, pattern=(
        r"^opc\.tcp://([^\s\x00/:\[\]]+|\[[0-9A-Fa-f:.]+\])"  # host or [IPv6]
        r"(:\d{1,5})?(/[^\s\x00]*)?$"))  # :port, /path
    node_map: FilePath | None = None  # None: the node map shipped with the package
    security_policy: OpcUaPolicy = "Basic256Sha256"
    security_mode: Literal["SignAndEncrypt", "Sign"] = "SignAndEncrypt"
    allow_insecure: bool = False  # must be true for security_policy = "None"
    # The trust list, laid out as PLC vendors do: trusted/certs (server certificates, or the
    # CAs that issued them, swapd accepts), rejected/certs (refused ones, for an operator),
    # own/certs and own/private (swapd's application certificate and key, `swapd certs
    # create`).
    pki_dir: FilePath = OPCUA_DEFAULT_PKI
    certificate: FilePath | None = None  # None: pki_dir/own/certs/swapd.der
    private_key: FilePath | None = None  # None: pki_dir/own/private/swapd.pem
    application_uri: str = Field("urn:swapstation:swapd", min_length=1, max_length=200,
                                 pattern=r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s\x00]+$")
    # User authentication: anonymous (neither), username + password_file (a file readable
    # by the service only), or an X.509 user certificate and its key.
    username: str | None = Field(None, min_length=1, max_length=100,
                                 pattern=r"^[^\x00-\x1f\x7f]+$")
    password_file: FilePath | None = None
    user_certificate: FilePath | None = None
    user_private_key: FilePath | None = None
    # Subscription: inputs are monitored items of one subscription
    publishing_interval_ms: float = Field(10.0, ge=1.0, le=1000.0)
    sampling_interval_ms: float = Field(5.0, ge=0.0, le=1000.0)  # 0: as fast as possible
    queue_size: int = Field(1, ge=1, le=100)
    keepalive_count: int = Field(10, ge=1, le=1000)
    # every connect (socket, secure channel, session, subscription) within this deadline
    connect_timeout_s: float = Field(5.0, ge=0.1, le=60.0)
    request_timeout_s: float = Field(1.0, ge=0.01, le=30.0)  # a read, a write, a call
    session_timeout_s: float = Field(30.0, ge=1.0, le=3600.0)

    @model_validator(mode="after")
    def _secure_unless_said(self) -> OpcUaSection:
        if self.security_policy == "None" and not self.allow_insecure:
            raise ValueError('plc.opcua.security_policy = "None" sends everything in the '
                             "clear, unauthenticated: set plc.opcua.allow_insecure = true to "
                             "mean it")
        if (self.username is None) != (self.password_file is None):
            raise ValueError("plc.opcua.username and plc.opcua.password_file go together")
        if (self.user_certificate is None) != (self.user_private_key is None):
            raise ValueError("plc.opcua.user_certificate and plc.opcua.user_private_key go "
                             "together")
        if self.username is not None and self.user_certificate is not None:
            raise ValueError("plc.opcua: a username or a user certificate, not both")
        if self.security_policy == "None" and self.username is not None:
            raise ValueError('plc.opcua: a password over security_policy = "None" would '
                             "cross the network readable by anyone")
        return self

    @property
    def lifetime_count(self) -> int:
        """The subscription's lifetime in publishing intervals (OPC UA: at least three
        keep-alives); the server drops the subscription after this long unanswered."""
        return max(3 * self.keepalive_count, 100)

    @property
    def host_port(self) -> tuple[str, int]:
        rest = self.endpoint[len("opc.tcp://"):].split("/", 1)[0]
        host, colon, port = rest.rpartition(":")
        if not colon or (host.startswith("[") and not host.endswith("]")):
            return rest.strip("[]"), 4840  # no port: OPC UA's registered 4840
        return host.strip("[]"), int(port)

    @property
    def certificate_path(self) -> Path:
        return self.certificate or self.pki_dir / "own" / "certs" / "swapd.der"

    @property
    def private_key_path(self) -> Path:
        return self.private_key or self.pki_dir / "own" / "private" / "swapd.pem"

    @property
    def update_period_s(self) -> float:
        """How often fresh inputs can arrive: one publishing interval."""
        return self.publishing_interval_ms / 1000

    @property
    def quiet_period_s(self) -> float:
        """The longest a working subscription is silent: its keep-alive period."""
        return self.publishing_interval_ms * self.keepalive_count / 1000


# Protocol name -> its config section. The link implementations are found by the same
# names in drivers/plc/registry.py.
PLC_PROTOCOL_SECTIONS: dict[str, type[_Section]] = {"modbus": ModbusSection,
                                                     "opcua": OpcUaSection}


class PlcSection(_Section):
    protocol: Literal["modbus", "opcua"] = "modbus"
    contract: FilePath | None = None  # None: the PLC contract shipped with the package
    heartbeat_period_s: float = Field(0.1, ge=0.001, le=1.0)
    # below 1 s: a step timeout is never shorter than 1 s (SequenceSection.timeout), and a
    # dead PLC must be noticed as such before a step times out with a misleading reason
    stale_after_s: float = Field(0.5, ge=0.01, lt=1.0,
                                 description="PLC inputs older than this are unsafe")
    modbus: ModbusSection | None = None
    opcua: OpcUaSection | None = None

    @model_validator(mode="before")
    @classmethod
    def _protocol_keys(cls, data: object) -> object:
        """A key or section of a protocol other than the chosen one is an error naming it."""
        if not isinstance(data, dict):
            return data
        chosen = data.get("protocol", "modbus")
        for name, section in PLC_PROTOCOL_SECTIONS.items():
            if name != chosen and data.get(name) is not None:
                raise ValueError(f"[plc.{name}] is the section of protocol {name!r}, but "
                                 f"plc.protocol is {chosen!r}")
            for key in section.model_fields:
                if key in data and key not in cls.model_fields:
                    raise ValueError(f"{key!r} is a key of protocol {name!r}: it belongs in "
                                     f"[plc.{name}]")
        return data

    @model_validator(mode="after")
    def _periods_below_staleness(self) -> PlcSection:
        quiet = self.link_section().quiet_period_s
        if self.stale_after_s < 2 * quiet:
            what = ("poll_period_s" if self.protocol == "modbus"
                    else "publishing_interval_ms x keepalive_count")
            raise ValueError(
                f"plc.stale_after_s = {self.stale_after_s:g} s must be at least twice "
                f"plc.{self.protocol}.{what} = {quiet:g} s: one late update is not a "
                "dead PLC")
        if self.heartbeat_period_s >= self.stale_after_s:
            raise ValueError(
                f"plc.heartbeat_period_s = {self.heartbeat_period_s:g} s must be below "
                f"plc.stale_after_s = {self.stale_after_s:g} s")
        return self

    def link_section(self) -> ModbusSection | OpcUaSection:
        """The chosen protocol's section (its defaults when the file has none)."""
        section = getattr(self, self.protocol)
        if section is None:
            section = PLC_PROTOCOL_SECTIONS[self.protocol]()
        assert isinstance(section, ModbusSection | OpcUaSection)
        return section

    @property
    def endpoint(self) -> str:
        s = self.link_section()
        if isinstance(s, OpcUaSection):
            return s.endpoint
        return f"{self.protocol}://{s.host}:{s.port}"


CanChannel = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^\s\x00]+$")]
CanInterface = Literal["socketcan", "virtual", "udp_multicast"]
# GB/T 27930; socketcan takes it from ip link. Classic CAN: 10 kbit/s to 1 Mbit/s
CanBitrate = Annotated[int, Field(ge=10_000, le=1_000_000)]
CanPort = Annotated[int, Field(ge=1, le=65535, description="udp_multicast only")]
CAN_SHORTHAND_DEFAULTS = {"interface": "virtual", "channel": "swapstation", "bitrate": 250_000}


def _check_channel(interface: str, channel: str, key: str) -> None:
    """What each interface needs of its channel; ValueError naming `key`."""
    if interface == "socketcan" and (len(channel) > MAX_IFNAME or "/" in channel):
        raise ValueError(f"{key} {channel!r}: not a network interface name "
                         f"(at most {MAX_IFNAME} characters, no '/')")
    if interface == "udp_multicast":
        try:
            multicast = ipaddress.ip_address(channel).is_multicast
        except ValueError:
            multicast = False
        if not multicast:
            raise ValueError(f"{key} {channel!r}: udp_multicast needs a "
                             "multicast group address (e.g. 239.74.163.2)")


class CanBus(_Section):
    """One `[[can.buses]]` entry: a CAN bus and the pack locations it serves."""

    name: str = Field(pattern=BUS_NAME_PATTERN)
    interface: CanInterface = "socketcan"
    channel: CanChannel
    bitrate: CanBitrate | None = 250_000
    udp_port: CanPort | None = None
    # "bay" (the car's pack and the car: its VIN), "slot:N", "slot:N-M"
    locations: list[Annotated[str, Field(max_length=16)]] = Field(min_length=1, max_length=128)


class CanSection(_Section):
    """`[can]`: the DBC, and the buses: a `[[can.buses]]` list, or the single-bus shorthand
    (interface, channel, bitrate, udp_port directly in `[can]`: one bus named "pack" that
    serves every location). Not both."""

    interface: CanInterface | None = None
    channel: CanChannel | None = None
    bitrate: CanBitrate | None = None
    udp_port: CanPort | None = None
    dbc: FilePath | None = None  # None: the DBC shipped with the package (it sets the timeouts)
    buses: list[CanBus] | None = Field(None, min_length=1, max_length=16)

    @model_validator(mode="before")
    @classmethod
    def _one_form(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        if data.get("buses") is None:  # the shorthand: its defaults are the simulator's
            return {**CAN_SHORTHAND_DEFAULTS, **data}
        both = [k for k in ("interface", "channel", "bitrate", "udp_port")
                if data.get(k) is not None]
        if both:
            raise ValueError(f"can.{both[0]}: [[can.buses]] is given, so every bus names its "
                             "own interface, channel, bitrate and udp_port; the single-bus "
                             f"keys ({', '.join(both)}) go inside a bus, not in [can]")
        return data

    @model_validator(mode="after")
    def _channel_fits_interface(self) -> CanSection:
        if self.buses is None:
            assert self.interface is not None
            if self.channel is None:
                raise ValueError("can.channel: needed with can.interface")
            _check_channel(self.interface, self.channel, "can.channel")
            return self
        for i, bus in enumerate(self.buses):
            _check_channel(bus.interface, bus.channel, f"can.buses.{i}.channel")
        ports = [(b.channel, b.udp_port or 43113) for b in self.buses
                 if b.interface == "udp_multicast"]
        dup = next((p for p in ports if ports.count(p) > 1), None)
        channels = [(b.interface, b.channel) for b in self.buses if b.interface != "udp_multicast"]
        dup_channel = next((c for c in channels if channels.count(c) > 1), None)
        if dup is not None or dup_channel is not None:
            raise ValueError("can.buses: two buses on the same channel"
                             + (f" and udp_port ({dup[0]} port {dup[1]})" if dup else
                                f" ({dup_channel[0]}:{dup_channel[1]})" if dup_channel else "")
                             + " would hear each other's frames: one channel per bus")
        check_layout([(b.name, b.locations) for b in self.buses], "can.buses")
        return self

    def bus_list(self) -> list[CanBus]:
        """The buses, normalised: the shorthand is one bus "pack" serving every location."""
        if self.buses is not None:
            return list(self.buses)
        assert self.interface is not None and self.channel is not None
        return [CanBus(name=SHORTHAND_BUS, interface=self.interface, channel=self.channel,
                       bitrate=self.bitrate, udp_port=self.udp_port,
                       locations=every_location())]

    def served_slots(self) -> dict[str, frozenset[int]]:
        """Bus name -> the locations it serves (0: the bay, n: rack slot n)."""
        return check_layout([(b.name, b.locations) for b in self.bus_list()], "can.buses")


class SequenceSection(_Section):
    # 1 is a real station; never below (it would stretch every timeout); 1000: a 10 s step
    # lasts 10 ms, as fast as a simulator can be watched at all
    speed_factor: float = Field(
        1.0, ge=1.0, le=1000.0, description="simulated stations only: timeouts are divided by it"
    )
    swap_height_mm: float = Field(500.0, ge=100.0, le=3000.0)  # a lift, not a crane
    height_tolerance_mm: float = Field(5.0, ge=0.1, le=50.0)
    position_tolerance_mm: float = Field(5.0, ge=0.1, le=50.0)
    shuttle_home_tolerance_mm: float = Field(5.0, ge=0.1, le=100.0)
    # above two PLC polls (the echo is seen on a read) and well below any step's timeout
    # The PLC contract's [timing] (drivers/plc/contract.toml) gives the defaults of these
    # three; tests/unit/test_contract_gaps.py keeps them equal.
    handshake_timeout_s: float = Field(2.0, ge=0.01, le=30.0,
                                       description="PLC must echo cmd_seq within it")
    sensor_grace_s: float = Field(
        0.5, ge=0.0, le=10.0,
        description="after the PLC reports done, the sensors must agree within it")
    stop_cause_grace_s: float = Field(
        0.25, ge=0.0, le=5.0,
        description="after a command ends with error stopped, wait this long for its cause "
        "(a hold or an abort interlock) before aborting")
    lock_torque_nm: tuple[TorqueNm, TorqueNm] = (110.0, 130.0)
    lock_angle_deg: tuple[AngleDeg, AngleDeg] = (80.0, 100.0)
    unlock_torque_nm: tuple[TorqueNm, TorqueNm] = (80.0, 100.0)
    unlock_angle_deg: tuple[AngleDeg, AngleDeg] = (680.0, 760.0)
    # step name -> seconds (real time, before speed_factor) it may take before the swap
    # aborts; a step not named keeps its default from its row in station/sequence.py.
    # At most 10 minutes: the longest step takes 15 s; a car does not wait an hour lifted.
    timeouts: dict[str, Annotated[float, Field(le=600.0)]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _windows(self) -> SequenceSection:
        for name in ("lock_torque_nm", "lock_angle_deg", "unlock_torque_nm",
                     "unlock_angle_deg"):
            lo, hi = getattr(self, name)
            if lo >= hi:
                raise ValueError(f"sequence.{name}: lower bound {lo} must be below upper "
                                 f"bound {hi}")
        from station.sequence import STEPS_BY_NAME  # the rows name the steps

        for step, seconds in self.timeouts.items():
            if step not in STEPS_BY_NAME:
                raise ValueError(f"sequence.timeouts.{step}: no such step (steps: "
                                 + ", ".join(STEPS_BY_NAME) + ")")
            if seconds <= 0:
                raise ValueError(f"sequence.timeouts.{step}: {seconds} s must be above 0")
            if STEPS_BY_NAME[step].command and seconds <= self.handshake_timeout_s:
                raise ValueError(
                    f"sequence.timeouts.{step}: {seconds:g} s must be above sequence."
                    f"handshake_timeout_s = {self.handshake_timeout_s:g} s (the PLC may take "
                    "that long to take the command at all)")
        if 2 * self.height_tolerance_mm >= self.swap_height_mm:
            raise ValueError(
                f"sequence.height_tolerance_mm = {self.height_tolerance_mm:g} mm: twice it "
                f"must be below sequence.swap_height_mm = {self.swap_height_mm:g} mm, or a "
                "car could count as lifted and down at once")
        return self

    def timeout(self, step: str) -> float:
        """Real seconds. Never below 1 s, so that on a sped-up simulator a communication
        timeout (plc.stale_after_s, a silent pack) is still judged before a step timeout."""
        from station.sequence import STEPS_BY_NAME

        seconds = self.timeouts.get(step, STEPS_BY_NAME[step].timeout_s)
        return max(float(seconds) / self.speed_factor, 1.0)


# Charge cut-off per cell, volts: every lithium-ion and sodium-ion cell lies inside this
# (LTO 2.7-2.8 V, sodium-ion 3.8-4.0, LFP 3.6-3.65, NMC/NCA 4.2-4.35, high-voltage LCO 4.45)
CELL_CUTOFF_V = (2.0, 4.5)
# and per chemistry (the DBC's names): an LFP cell charged to NMC's 4.2 V is overcharged
CELL_CUTOFF_V_BY_CHEMISTRY: dict[str, tuple[float, float]] = {
    "nmc": (3.9, 4.35), "lfp": (3.4, 3.65), "sodium_ion": (3.5, 4.1), "lto": (2.6, 2.85),
    "lco": (4.1, 4.45), "lmo": (4.0, 4.3), "polymer": (4.1, 4.35), "lead_acid": (2.3, 2.5),
}


class ChemistryLimits(_Section):
    charge_cutoff_cell_v: float
    # the DBC's cell temperatures run from -40 C; no cell charges below that or above 80 C
    charge_temp_min_c: float = Field(ge=-40.0, le=60.0)
    charge_temp_max_c: float = Field(ge=-30.0, le=80.0)
    # above 100 C a lithium cell is well into its SEI decomposition: too late to alarm
    alarm_temp_c: float = Field(ge=0.0, le=100.0)
    # extreme-fast-charge cells reach 6 C; 0.05 C (20 h) is the slowest useful grant
    max_charge_c_rate: float = Field(1.0, ge=0.05, le=6.0)

    @field_validator("charge_cutoff_cell_v")
    @classmethod
    def _cell_volts(cls, v: float) -> float:
        lo, hi = CELL_CUTOFF_V
        if lo <= v <= hi:
            return v
        hint = (f" (millivolts? give volts: {v / 1000:g})" if lo * 1000 <= v <= hi * 1000
                else "")
        raise ValueError(f"{v:g} V per cell is no lithium- or sodium-ion cell's charge "
                         f"cut-off: must be within {lo:g}..{hi:g} V{hint}")

    @model_validator(mode="after")
    def _temperatures_in_order(self) -> ChemistryLimits:
        if not self.charge_temp_min_c < self.charge_temp_max_c < self.alarm_temp_c:
            raise ValueError(
                f"charge_temp_min_c ({self.charge_temp_min_c:g}) < charge_temp_max_c "
                f"({self.charge_temp_max_c:g}) < alarm_temp_c ({self.alarm_temp_c:g}) "
                "must hold: a pack may not charge at a temperature that raises the alarm")
        return self


def _default_chemistries() -> dict[str, ChemistryLimits]:
    return {
        "nmc": ChemistryLimits(charge_cutoff_cell_v=4.20, charge_temp_min_c=0,
                               charge_temp_max_c=45, alarm_temp_c=60),
        "lfp": ChemistryLimits(charge_cutoff_cell_v=3.65, charge_temp_min_c=0,
                               charge_temp_max_c=60, alarm_temp_c=65),
        "sodium_ion": ChemistryLimits(charge_cutoff_cell_v=3.95, charge_temp_min_c=-20,
                                      charge_temp_max_c=55, alarm_temp_c=65),
    }


class SelectionSection(_Section):
    min_soc_pct: float = Field(80.0, ge=0, le=100)
    min_soh_pct: float = Field(70.0, ge=0, le=100)
    # vehicle pack family -> families it accepts; a family absent here accepts only itself
    compatible_families: dict[str, list[Family]] = Field(default_factory=dict)

    @field_validator("compatible_families")
    @classmethod
    def _family_keys(cls, v: dict[str, list[int]]) -> dict[str, list[int]]:
        for key in v:
            if not (key.isascii() and key.isdigit() and int(key) <= 250):
                raise ValueError(f"compatible_families.{key}: a vehicle's pack family is a "
                                 "number 0..250 (e.g. \"20\" = [20, 25])")
        return v

    def accepts(self, vehicle_family: int, pack_family: int) -> bool:
        allowed = self.compatible_families.get(str(vehicle_family), [vehicle_family])
        return pack_family in allowed


class ChargingSection(_Section):
    target_soc_pct: float = Field(100.0, gt=0, le=100)
    # 20 MW: more than any swap station's grid connection (23 slots x 800 V x 1000 A)
    station_power_cap_kw: float = Field(
        500.0, ge=1.0, le=20_000.0,
        description="the charge power granted to all rack packs never exceeds it")
    # 1000 A: above any slot charger (the DBC could carry 6425 A)
    max_pack_current_a: float = Field(500.0, ge=1.0, le=1000.0,
                                      description="charger output per slot")
    # never judged in under 5 s anyway (station/core.py STALL_FLOOR_S); an hour at most
    stalled_after_s: float = Field(
        60.0, ge=5.0, le=3600.0,
        description="a pack granted current that draws none this long: alarm")
    stalled_current_a: float = Field(1.0, ge=0.1, le=100.0,
                                     description="below this, a pack draws none")

    @model_validator(mode="after")
    def _stall_below_grant(self) -> ChargingSection:
        if self.stalled_current_a >= self.max_pack_current_a:
            raise ValueError(
                f"charging.stalled_current_a = {self.stalled_current_a:g} A must be below "
                f"charging.max_pack_current_a = {self.max_pack_current_a:g} A")
        return self


# Insulation, kOhm: GB 18384 asks at least 100 Ohm/V (500 Ohm/V with AC parts); a 200 V
# pack at 100 Ohm/V is 20 kOhm. 10 MOhm is beyond what a BMS measures as a limit.
MIN_INSULATION_KOHM, MAX_INSULATION_KOHM = 20.0, 10_000.0


class CheckSection(_Section):
    min_insulation_kohm: float = Field(100.0, ge=MIN_INSULATION_KOHM, le=MAX_INSULATION_KOHM)
    min_soc_pct: float = Field(50.0, ge=0, le=100)


class PackSafetySection(_Section):
    # 1 C/s is already a runaway; 0.5 C/min is what charging alone does
    max_temp_rise_c_per_min: float = Field(10.0, ge=0.5, le=60.0)
    temp_rise_window_s: float = Field(30.0, ge=5.0, le=600.0,
                                      description="window of the rise rate")
    min_insulation_kohm: float = Field(100.0, ge=MIN_INSULATION_KOHM, le=MAX_INSULATION_KOHM,
                                       description="any pack, any time")


class InterlockSection(_Section):
    vehicle_drift_mm: float = Field(15.0, ge=1.0, le=200.0,
                                    description="offset change while positioned")
    lift_overtravel_mm: float = Field(20.0, ge=1.0, le=500.0)
    shuttle_tolerance_mm: float = Field(50.0, ge=1.0, le=500.0)
    shuttle_car_mm: float = Field(3000.0, ge=100.0, le=10_000.0,
                                  description="shuttle position under the car")
    # at least two PackStatus periods (100 ms); 5 s of a silent pack during a move is long
    pack_silent_s: float = Field(1.0, ge=0.2, le=5.0,
                                 description="a pack in use silent this long")

    @model_validator(mode="after")
    def _rail(self) -> InterlockSection:
        if self.shuttle_tolerance_mm >= self.shuttle_car_mm:
            raise ValueError(f"interlocks.shuttle_tolerance_mm = {self.shuttle_tolerance_mm:g}"
                             f" mm must be below interlocks.shuttle_car_mm = "
                             f"{self.shuttle_car_mm:g} mm")
        return self


class ApiSection(_Section):
    """The local operator API (swapctl). Who may command the station is who may open the
    socket: its mode and group."""

    socket: FilePath | None = None  # None: no local API
    socket_mode: int = Field(0o660, ge=0, le=0o777)
    group: str | None = Field(None, min_length=1, max_length=32, pattern=r"^[^\s\x00:/]+$")

    @model_validator(mode="after")
    def _not_world_writable(self) -> ApiSection:
        if self.socket_mode & 0o002:
            raise ValueError(f"socket_mode {self.socket_mode:#o}: world-writable: anyone on "
                             "the machine could command the station (use 0o660 and a group)")
        if self.socket_mode & 0o600 != 0o600:
            raise ValueError(f"socket_mode {self.socket_mode:#o}: the daemon's own user must "
                             "be able to read and write its socket (0o600 at least)")
        if self.socket is not None:
            size = len(os.fsencode(self.socket))
            if size > MAX_SOCKET_PATH_BYTES:
                raise ValueError(f"socket {str(self.socket)[:40]}...: {size} bytes, longer than "
                                 f"a Unix socket path can be ({MAX_SOCKET_PATH_BYTES})")
        return self


class JournalSection(_Section):
    path: FilePath = Path("swapd-journal.sqlite")


class OperationSection(_Section):
    auto_start: bool = True  # an identified vehicle with a pack to give starts its swap
    auto_reset_after_complete: bool = True
    reset_on_start: bool = True  # only when the journal shows no unfinished swap


class CloudSection(_Section):
    """The link to the network's MQTT broker (station/cloud/). Off by default: the station
    works without it, and the demo is broker-free."""

    enabled: bool = False
    host: str = Field("127.0.0.1", min_length=1, max_length=253, pattern=r"^[^\s\x00/]+$")
    port: int = Field(8883, ge=1, le=65535)
    topic_prefix: str = Field("swapnet/v1", min_length=1, max_length=64,
                              pattern=r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
    # TLS: the broker's CA (pinned: no system store), the station's client certificate and
    # key. None for all three: plain MQTT, allowed for a loopback bench only.
    ca_file: FilePath | None = None
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    username: str | None = Field(None, min_length=1, max_length=128)
    password_file: FilePath | None = None
    # the Ed25519 public keys that may sign commands: <key_id>.pub (PEM) in this directory
    trusted_keys_dir: FilePath | None = None
    keepalive_s: int = Field(30, ge=5, le=600)
    connect_timeout_s: float = Field(10.0, ge=0.5, le=120.0)
    reconnect_min_s: float = Field(0.5, ge=0.05, le=60.0)
    reconnect_max_s: float = Field(30.0, ge=0.5, le=600.0)
    rack_period_s: float = Field(10.0, ge=0.5, le=3600.0)
    max_in_flight: int = Field(200, ge=1, le=65535,
                               description="QoS 1 publications awaiting their PUBACK")
    # a full authorisation list (5,000 entries of ~45 bytes) fits in the default
    max_command_bytes: int = Field(262_144, ge=1024, le=1_048_576)
    # a command's expires_at may lie at most this far after its issued_at, and issued_at at
    # most clock_skew_s in the future
    max_command_lifetime_s: float = Field(3600.0, ge=1.0, le=7 * 86400.0)
    clock_skew_s: float = Field(30.0, ge=0.0, le=3600.0)
    disk_alarm_free_mb: float = Field(200.0, ge=1.0, le=1_000_000.0,
                                      description="free space under the journal: alarm below")

    @model_validator(mode="after")
    def _tls_complete(self) -> CloudSection:
        tls = (self.ca_file, self.cert_file, self.key_file)
        if any(v is not None for v in tls) and None in tls:
            raise ValueError("cloud.ca_file, cloud.cert_file and cloud.key_file go together "
                             "(TLS with a client certificate per station)")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(f"cloud.reconnect_min_s = {self.reconnect_min_s:g} s must not "
                             f"exceed cloud.reconnect_max_s = {self.reconnect_max_s:g} s")
        if self.enabled and self.trusted_keys_dir is None:
            raise ValueError("cloud.enabled needs cloud.trusted_keys_dir: the public keys "
                             "that may sign commands")
        if self.password_file is not None and self.username is None:
            raise ValueError("cloud.password_file needs cloud.username")
        return self

    @property
    def tls(self) -> bool:
        return self.ca_file is not None


class NetworkSection(_Section):
    """Who may swap here (the authorisation list from the network, station/network.py)."""

    # off: every identified vehicle may swap (a station without a network, the demo)
    require_authorisation: bool = False
    # once the list has passed its validity (the station offline too long): refuse every
    # vehicle, or let the listed ones go on swapping
    when_list_expired: Literal["refuse", "allow_listed"] = "refuse"


class MetricsSection(_Section):
    """`[metrics]`: the Prometheus endpoint (station/metrics.py, docs/operations.md). On
    loopback by default: another host needs a firewall (the metrics tell who swaps when)."""

    enabled: bool = True
    host: str = Field("127.0.0.1", min_length=1, max_length=253, pattern=r"^[^\s\x00/]+$")
    port: int = Field(9468, ge=0, le=65535, description="0: any free port (tests)")


class LogSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class StationConfig(_Section):
    station: StationSection = StationSection()
    plc: PlcSection = PlcSection()
    can: CanSection = CanSection()
    sequence: SequenceSection = SequenceSection()
    # at least one: a pack of a chemistry not named is judged by the strictest alarm of those
    # named (station/pack_safety.py), and never charged
    chemistry: dict[str, ChemistryLimits] = Field(default_factory=_default_chemistries,
                                                  min_length=1)
    selection: SelectionSection = SelectionSection()
    charging: ChargingSection = ChargingSection()
    check: CheckSection = CheckSection()
    pack_safety: PackSafetySection = PackSafetySection()
    interlocks: InterlockSection = InterlockSection()
    api: ApiSection = ApiSection()
    journal: JournalSection = JournalSection()
    operation: OperationSection = OperationSection()
    cloud: CloudSection = CloudSection()
    network: NetworkSection = NetworkSection()
    metrics: MetricsSection = MetricsSection()
    log: LogSection = LogSection()

    @model_validator(mode="after")
    def _related(self) -> StationConfig:
        """Values of different sections that must agree; the error names both keys."""
        for name, lim in self.chemistry.items():
            lo, hi = CELL_CUTOFF_V_BY_CHEMISTRY.get(name, CELL_CUTOFF_V)
            if not lo <= lim.charge_cutoff_cell_v <= hi:
                raise ValueError(
                    f"chemistry.{name}.charge_cutoff_cell_v = {lim.charge_cutoff_cell_v:g} V: "
                    f"a {name} cell's charge cut-off lies within {lo:g}..{hi:g} V")
        seq, il = self.sequence, self.interlocks
        update = self.plc.link_section().update_period_s
        if seq.handshake_timeout_s < 2 * update:
            raise ValueError(
                f"sequence.handshake_timeout_s = {seq.handshake_timeout_s:g} s must be at "
                f"least two PLC input updates (plc.{self.plc.protocol}: {update:g} s): "
                "the echo is seen in the inputs")
        if seq.position_tolerance_mm >= il.vehicle_drift_mm:
            raise ValueError(
                f"sequence.position_tolerance_mm = {seq.position_tolerance_mm:g} mm must be "
                f"below interlocks.vehicle_drift_mm = {il.vehicle_drift_mm:g} mm, or a car "
                "counted as positioned trips the drift interlock")
        if seq.height_tolerance_mm >= il.lift_overtravel_mm:
            raise ValueError(
                f"sequence.height_tolerance_mm = {seq.height_tolerance_mm:g} mm must be below "
                f"interlocks.lift_overtravel_mm = {il.lift_overtravel_mm:g} mm")
        if seq.shuttle_home_tolerance_mm > il.shuttle_tolerance_mm:
            raise ValueError(
                f"sequence.shuttle_home_tolerance_mm = {seq.shuttle_home_tolerance_mm:g} mm "
                f"must not exceed interlocks.shuttle_tolerance_mm = "
                f"{il.shuttle_tolerance_mm:g} mm, or a shuttle counted home trips the "
                "shuttle interlock")
        if self.check.min_soc_pct > self.selection.min_soc_pct:
            raise ValueError(
                f"check.min_soc_pct = {self.check.min_soc_pct:g} % must not exceed "
                f"selection.min_soc_pct = {self.selection.min_soc_pct:g} %: a pack given to a "
                "car would fail its post-swap check")
        if self.charging.target_soc_pct < self.selection.min_soc_pct:
            raise ValueError(
                f"charging.target_soc_pct = {self.charging.target_soc_pct:g} % must not be "
                f"below selection.min_soc_pct = {self.selection.min_soc_pct:g} %: no pack "
                "would ever be charged enough to give to a car")
        return self


class ConfigError(Exception):
    """The configuration file cannot be used; the message names the key and the problem."""


def format_validation_error(origin: str, exc: ValidationError) -> str:
    lines = [f"{origin}: invalid configuration"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "value_error":  # our own checks: their message names the keys
            msg = msg.removeprefix("Value error, ")
            if not err["loc"] or msg.startswith(f"{key}."):
                lines.append(f"  {msg}")
                continue
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


MAX_CONFIG_BYTES = 1024 * 1024  # the example with every key and comment is 4 KiB


def load_config(path: str | Path | None) -> StationConfig:
    """Load and validate a station configuration; None gives the built-in defaults."""
    if path is None:
        return StationConfig()
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)  # /dev/zero must not fill the memory
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{p}: larger than {MAX_CONFIG_BYTES // 1024} KiB: not a "
                              "station configuration")
        text = raw.decode("utf-8")  # TOML is UTF-8, whatever the locale
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: configuration file not found") from exc
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not valid UTF-8 (byte {exc.start}): a TOML file is UTF-8 "
                          "text") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
    except RecursionError as exc:  # tomllib recurses once per nested array or inline table
        raise ConfigError(f"{p}: not valid TOML: arrays or tables nested too deeply") from exc
    try:
        return StationConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(p), exc)) from exc
    except RecursionError as exc:
        raise ConfigError(f"{p}: values nested too deeply") from exc
