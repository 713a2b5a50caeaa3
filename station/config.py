"""Station configuration: one TOML file, validated on load.

Every section has defaults that run the simulated station on loopback, so `swapd demo`
needs no file. A bad file is refused with the key and the problem named; the daemon
never starts on a guess.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Section(BaseModel):
    # inf and nan are refused everywhere: `stale_after_s = inf` would mean a dead PLC is
    # never noticed
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class StationSection(_Section):
    id: str = "PSS-SIM-0001"
    name: str = "Simulated swap station"


class ModbusSection(_Section):
    """`[plc.modbus]`: the Modbus TCP link (drivers/plc/modbus_link.py)."""

    host: str = "127.0.0.1"
    port: int = Field(5020, ge=1, le=65535)
    register_map: Path | None = None  # None: the addressing shipped with the package
    poll_period_s: float = Field(0.02, gt=0, le=1.0)
    timeout_s: float = Field(1.0, gt=0)


# Protocol name -> its config section. The link implementations are found by the same
# names in drivers/plc/registry.py.
PLC_PROTOCOL_SECTIONS: dict[str, type[_Section]] = {"modbus": ModbusSection}


class PlcSection(_Section):
    protocol: Literal["modbus"] = "modbus"
    contract: Path | None = None  # None: the PLC contract shipped with the package
    heartbeat_period_s: float = Field(0.1, gt=0, le=1.0)
    stale_after_s: float = Field(0.5, gt=0, description="PLC inputs older than this are unsafe")
    modbus: ModbusSection | None = None

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

    def link_section(self) -> _Section:
        """The chosen protocol's section (its defaults when the file has none)."""
        section = getattr(self, self.protocol)
        return section if section is not None else PLC_PROTOCOL_SECTIONS[self.protocol]()

    @property
    def endpoint(self) -> str:
        s = self.link_section()
        return f"{self.protocol}://{getattr(s, 'host', '?')}:{getattr(s, 'port', '?')}"


class CanSection(_Section):
    interface: Literal["socketcan", "virtual", "udp_multicast"] = "virtual"
    channel: str = "swapstation"
    bitrate: int | None = Field(250_000, gt=0)  # GB/T 27930; socketcan takes it from ip link
    udp_port: int | None = Field(None, ge=1, le=65535, description="udp_multicast only")
    dbc: Path | None = None  # None: the DBC shipped with the package (it sets the timeouts)


class SequenceSection(_Section):
    speed_factor: float = Field(
        1.0, gt=0, description="simulated stations only: timeouts are divided by it"
    )
    swap_height_mm: float = Field(500.0, gt=0)
    height_tolerance_mm: float = Field(5.0, gt=0)
    position_tolerance_mm: float = Field(5.0, gt=0)
    shuttle_home_tolerance_mm: float = Field(5.0, gt=0)
    handshake_timeout_s: float = Field(2.0, gt=0, description="PLC must echo cmd_seq within it")
    lock_torque_nm: tuple[float, float] = (110.0, 130.0)
    lock_angle_deg: tuple[float, float] = (80.0, 100.0)
    unlock_torque_nm: tuple[float, float] = (80.0, 100.0)
    unlock_angle_deg: tuple[float, float] = (680.0, 760.0)
    # step name -> seconds (real time, before speed_factor) it may take before the swap
    # aborts; a step not named keeps its default from its row in station/sequence.py
    timeouts: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _windows(self) -> SequenceSection:
        for name in ("lock_torque_nm", "lock_angle_deg", "unlock_torque_nm",
                     "unlock_angle_deg"):
            lo, hi = getattr(self, name)
            if lo >= hi:
                raise ValueError(f"{name}: lower bound {lo} must be below upper bound {hi}")
        from station.sequence import STEPS_BY_NAME  # the rows name the steps

        for step, seconds in self.timeouts.items():
            if step not in STEPS_BY_NAME:
                raise ValueError(f"timeouts.{step}: no such step (steps: "
                                 + ", ".join(STEPS_BY_NAME) + ")")
            if seconds <= 0:
                raise ValueError(f"timeouts.{step}: {seconds} s must be above 0")
        return self

    def timeout(self, step: str) -> float:
        """Real seconds. Never below 1 s, so that on a sped-up simulator a communication
        timeout (plc.stale_after_s, a silent pack) is still judged before a step timeout."""
        from station.sequence import STEPS_BY_NAME

        seconds = self.timeouts.get(step, STEPS_BY_NAME[step].timeout_s)
        return max(float(seconds) / self.speed_factor, 1.0)


class ChemistryLimits(_Section):
    charge_cutoff_cell_v: float = Field(gt=0)
    charge_temp_min_c: float
    charge_temp_max_c: float
    alarm_temp_c: float
    max_charge_c_rate: float = Field(1.0, gt=0)


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
    compatible_families: dict[str, list[int]] = Field(default_factory=dict)

    def accepts(self, vehicle_family: int, pack_family: int) -> bool:
        allowed = self.compatible_families.get(str(vehicle_family), [vehicle_family])
        return pack_family in allowed


class ChargingSection(_Section):
    target_soc_pct: float = Field(100.0, gt=0, le=100)
    station_power_cap_kw: float = Field(
        500.0, gt=0, description="the charge power granted to all rack packs never exceeds it")
    max_pack_current_a: float = Field(500.0, gt=0, description="charger output per slot")
    stalled_after_s: float = Field(
        60.0, gt=0, description="a pack granted current that draws none this long: alarm")
    stalled_current_a: float = Field(1.0, gt=0, description="below this, a pack draws none")


class CheckSection(_Section):
    min_insulation_kohm: float = Field(100.0, gt=0)
    min_soc_pct: float = Field(50.0, ge=0, le=100)


class PackSafetySection(_Section):
    max_temp_rise_c_per_min: float = Field(10.0, gt=0)
    temp_rise_window_s: float = Field(30.0, gt=0, description="window of the rise rate")
    min_insulation_kohm: float = Field(100.0, gt=0, description="any pack, any time")


class InterlockSection(_Section):
    vehicle_drift_mm: float = Field(15.0, gt=0, description="offset change while positioned")
    lift_overtravel_mm: float = Field(20.0, gt=0)
    shuttle_tolerance_mm: float = Field(50.0, gt=0)
    shuttle_car_mm: float = Field(3000.0, gt=0, description="shuttle position under the car")
    pack_silent_s: float = Field(1.0, gt=0, description="a pack in use silent this long")


class ApiSection(_Section):
    """The local operator API (swapctl). Who may command the station is who may open the
    socket: its mode and group."""

    socket: Path | None = None  # None: no local API
    socket_mode: int = Field(0o660, ge=0, le=0o777)
    group: str | None = None

    @model_validator(mode="after")
    def _not_world_writable(self) -> ApiSection:
        if self.socket_mode & 0o002:
            raise ValueError(f"socket_mode {self.socket_mode:#o}: world-writable: anyone on "
                             "the machine could command the station (use 0o660 and a group)")
        return self


class JournalSection(_Section):
    path: Path = Path("swapd-journal.sqlite")


class OperationSection(_Section):
    auto_start: bool = True  # an identified vehicle with a pack to give starts its swap
    auto_reset_after_complete: bool = True
    reset_on_start: bool = True  # only when the journal shows no unfinished swap


class LogSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class StationConfig(_Section):
    station: StationSection = StationSection()
    plc: PlcSection = PlcSection()
    can: CanSection = CanSection()
    sequence: SequenceSection = SequenceSection()
    chemistry: dict[str, ChemistryLimits] = Field(default_factory=_default_chemistries)
    selection: SelectionSection = SelectionSection()
    charging: ChargingSection = ChargingSection()
    check: CheckSection = CheckSection()
    pack_safety: PackSafetySection = PackSafetySection()
    interlocks: InterlockSection = InterlockSection()
    api: ApiSection = ApiSection()
    journal: JournalSection = JournalSection()
    operation: OperationSection = OperationSection()
    log: LogSection = LogSection()


class ConfigError(Exception):
    """The configuration file cannot be used; the message names the key and the problem."""


def format_validation_error(origin: str, exc: ValidationError) -> str:
    lines = [f"{origin}: invalid configuration"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def load_config(path: str | Path | None) -> StationConfig:
    """Load and validate a station configuration; None gives the built-in defaults."""
    if path is None:
        return StationConfig()
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: configuration file not found") from exc
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
    try:
        return StationConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(p), exc)) from exc
