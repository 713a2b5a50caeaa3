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
    model_config = ConfigDict(extra="forbid", frozen=True)


class StationSection(_Section):
    id: str = "PSS-SIM-0001"
    name: str = "Simulated swap station"


class PlcSection(_Section):
    protocol: Literal["modbus"] = "modbus"
    host: str = "127.0.0.1"
    port: int = Field(5020, ge=1, le=65535)
    register_map: Path | None = None  # None: the map shipped with the package
    poll_period_s: float = Field(0.02, gt=0, le=1.0)
    heartbeat_period_s: float = Field(0.1, gt=0, le=1.0)
    timeout_s: float = Field(1.0, gt=0)
    stale_after_s: float = Field(0.5, gt=0, description="PLC inputs older than this are unsafe")


class CanSection(_Section):
    interface: Literal["socketcan", "virtual", "udp_multicast"] = "virtual"
    channel: str = "swapstation"
    bitrate: int | None = Field(250_000, gt=0)  # GB/T 27930; socketcan takes it from ip link
    udp_port: int | None = Field(None, ge=1, le=65535, description="udp_multicast only")
    dbc: Path | None = None  # None: the DBC shipped with the package
    status_timeout_s: float = Field(0.5, gt=0)
    identity_timeout_s: float = Field(3.0, gt=0)


class StepTimeouts(_Section):
    """Seconds (real time, before speed_factor) each step may take before the swap aborts."""

    identify: float = Field(60.0, gt=0)
    position: float = Field(45.0, gt=0)
    lift: float = Field(30.0, gt=0)
    unlock: float = Field(45.0, gt=0)
    remove: float = Field(36.0, gt=0)
    store: float = Field(45.0, gt=0)
    fetch: float = Field(45.0, gt=0)
    install: float = Field(36.0, gt=0)
    lock: float = Field(45.0, gt=0)
    check: float = Field(30.0, gt=0)
    lower: float = Field(30.0, gt=0)
    release: float = Field(60.0, gt=0)


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
    timeouts: StepTimeouts = StepTimeouts()

    @model_validator(mode="after")
    def _windows(self) -> SequenceSection:
        for name in ("lock_torque_nm", "lock_angle_deg", "unlock_torque_nm",
                     "unlock_angle_deg"):
            lo, hi = getattr(self, name)
            if lo >= hi:
                raise ValueError(f"{name}: lower bound {lo} must be below upper bound {hi}")
        return self

    def timeout(self, step: str) -> float:
        """Real seconds. Never below 1 s, so that on a sped-up simulator a communication
        timeout (plc.stale_after_s, a silent pack) is still judged before a step timeout."""
        return max(float(getattr(self.timeouts, step)) / self.speed_factor, 1.0)


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
    charge_target_soc_pct: float = Field(100.0, gt=0, le=100)
    # vehicle pack family -> families it accepts; a family absent here accepts only itself
    compatible_families: dict[str, list[int]] = Field(default_factory=dict)

    def accepts(self, vehicle_family: int, pack_family: int) -> bool:
        allowed = self.compatible_families.get(str(vehicle_family), [vehicle_family])
        return pack_family in allowed


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
