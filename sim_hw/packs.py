"""A simulated traction pack and its BMS: a pure model, no I/O.

Times: `dt` arguments are simulated seconds (charging follows the sped-up clock); `real`
arguments are monotonic wall-clock seconds, because the 3 s PackControl timeout is a wire
timeout that a faster simulation must not shorten.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Chemistry = Literal["nmc", "lfp", "sodium_ion"]
PackState = Literal["idle", "charging", "isolated"]

FAULTS = frozenset(
    {"over_temp", "over_voltage", "under_voltage", "insulation", "thermal_alarm", "internal"}
)

AMBIENT_C = 25.0
CONTROL_TIMEOUT_S = 3.0  # real seconds without PackControl -> the BMS stops charging (DBC)
CHARGE_RATE_PCT_PER_S = 1.5 / 60.0  # ~1.5 % SOC per simulated minute below the taper
TAPER_FROM_PCT = 90.0
CHARGE_TEMP_RISE_C = 8.0  # steady-state rise of the hottest cell at full charge current
THERMAL_TAU_S = 300.0  # thermal time constant of the pack (simulated seconds)
FAULT_COOL_TAU_S = 10.0  # after an injected heat fault clears: back to normal in ~30 s sim

RATED_ENERGY_KWH = {20: 75.0, 25: 100.0}
RATED_VOLTAGE_V: dict[str, float] = {"nmc": 400.0, "lfp": 384.0, "sodium_ion": 350.0}
# (nominal, empty, full) cell voltage per chemistry
CELL_V: dict[str, tuple[float, float, float]] = {
    "nmc": (3.7, 3.3, 4.2),
    "lfp": (3.2, 3.0, 3.65),
    "sodium_ion": (3.1, 2.5, 3.95),
}
CELL_SPREAD_V = 0.004  # half the max-min spread of a balanced pack

# ControlCommand values (DBC PackControl)
CMD_KEEP, CMD_CHARGE_ENABLE, CMD_CHARGE_DISABLE, CMD_ISOLATE, CMD_CLEAR_ISOLATION = range(5)


@dataclass
class SimPack:
    serial: int
    family: int
    chemistry: Chemistry
    soc_pct: float = 50.0
    cycle_count: int = 0
    soh_pct: float = 100.0
    min_cell_temp_c: float = AMBIENT_C
    max_cell_temp_c: float = AMBIENT_C
    insulation_kohm: float = 5000.0
    faults: set[str] = field(default_factory=set)
    state: PackState = "idle"
    current_a: float = 0.0
    charge_enabled: bool = False
    charge_current_limit_a: float = 0.0
    charge_voltage_limit_v: float = 0.0
    control_counter: int = 0
    last_control_at: float | None = None  # real monotonic time of the last PackControl
    _charged_pct: float = 0.0  # SOC gained since the last full cycle was counted
    # fault injection (sim_hw/faults.py): heat forced onto the hottest cell
    forced_temp_c: float | None = None  # held at this temperature
    temp_rise_c_per_s: float = 0.0  # climbs at this rate (simulated seconds)
    fast_cool: bool = False  # a heat fault just cleared: cool back quickly

    @property
    def rated_energy_kwh(self) -> float:
        return RATED_ENERGY_KWH[self.family]

    @property
    def rated_voltage_v(self) -> float:
        return RATED_VOLTAGE_V[self.chemistry]

    @property
    def rated_capacity_ah(self) -> float:
        return self.rated_energy_kwh * 1000.0 / self.rated_voltage_v

    @property
    def series_cells(self) -> int:
        return round(self.rated_voltage_v / CELL_V[self.chemistry][0])

    @property
    def cell_voltage_v(self) -> float:
        """Open-circuit cell voltage, linear in SOC between the chemistry's limits."""
        _, empty, full = CELL_V[self.chemistry]
        return empty + (full - empty) * max(0.0, min(100.0, self.soc_pct)) / 100.0

    @property
    def max_cell_v(self) -> float:
        _, _, full = CELL_V[self.chemistry]
        # Charge current lifts the terminal voltage a little (internal resistance).
        rise = 0.0002 * max(0.0, self.current_a)
        return min(full, self.cell_voltage_v + CELL_SPREAD_V + rise)

    @property
    def min_cell_v(self) -> float:
        _, empty, _ = CELL_V[self.chemistry]
        return max(empty, self.cell_voltage_v - CELL_SPREAD_V)

    @property
    def pack_voltage_v(self) -> float:
        return self.series_cells * (self.cell_voltage_v + 0.0002 * max(0.0, self.current_a))

    @property
    def nominal_current_a(self) -> float:
        """Current that gives CHARGE_RATE_PCT_PER_S below the taper."""
        return CHARGE_RATE_PCT_PER_S / 100.0 * self.rated_capacity_ah * 3600.0

    def control_fresh(self, real: float) -> bool:
        return self.last_control_at is not None and real - self.last_control_at <= CONTROL_TIMEOUT_S

    def apply_control(
        self,
        command: int,
        current_limit_a: float,
        voltage_limit_v: float,
        counter: int,
        real: float,
    ) -> None:
        """Take one PackControl frame heard at real time `real`."""
        self.last_control_at = real
        self.control_counter = counter
        if command == CMD_CHARGE_ENABLE:
            self.charge_enabled = True
            self.charge_current_limit_a = current_limit_a
            self.charge_voltage_limit_v = voltage_limit_v
        elif command == CMD_CHARGE_DISABLE:
            self.charge_enabled = False
        elif command == CMD_ISOLATE:
            self.charge_enabled = False
            self.state = "isolated"
            self.current_a = 0.0
        elif command == CMD_CLEAR_ISOLATION and self.state == "isolated":
            self.state = "idle"

    def advance(self, dt: float, real: float, in_rack: bool) -> None:
        """Let `dt` simulated seconds pass; only a pack in a rack slot can charge."""
        if dt <= 0:
            return
        if self.charge_enabled and not self.control_fresh(real):
            self.charge_enabled = False  # the station went silent: stop on our own
        self.current_a = self._charge_current() if in_rack else 0.0
        if self.state != "isolated":
            self.state = "charging" if self.current_a > 0 else "idle"
        if self.current_a > 0:
            gained = self.current_a * dt / 3600.0 / self.rated_capacity_ah * 100.0
            gained = min(gained, 100.0 - self.soc_pct)
            self.soc_pct += gained
            self._charged_pct += gained
            if self._charged_pct >= 100.0:
                self._charged_pct -= 100.0
                self.cycle_count += 1
        load = self.current_a / self.nominal_current_a if self.nominal_current_a else 0.0
        target = AMBIENT_C + CHARGE_TEMP_RISE_C * load
        k = min(1.0, dt / THERMAL_TAU_S)
        if self.forced_temp_c is not None:
            self.max_cell_temp_c = self.forced_temp_c
        elif self.temp_rise_c_per_s > 0:
            self.max_cell_temp_c += self.temp_rise_c_per_s * dt
        else:
            kmax = min(1.0, dt / FAULT_COOL_TAU_S) if self.fast_cool else k
            self.max_cell_temp_c += (target - self.max_cell_temp_c) * kmax
            if self.fast_cool and abs(self.max_cell_temp_c - target) < 0.5:
                self.fast_cool = False
        self.min_cell_temp_c += (AMBIENT_C - self.min_cell_temp_c) * k
        self.min_cell_temp_c = min(self.min_cell_temp_c, self.max_cell_temp_c)

    def _charge_current(self) -> float:
        if not self.charge_enabled or self.state == "isolated" or self.soc_pct >= 100.0:
            return 0.0
        limit_v = self.charge_voltage_limit_v
        if limit_v > 0 and self.pack_voltage_v >= limit_v:
            return 0.0
        current = self.nominal_current_a
        if self.soc_pct > TAPER_FROM_PCT:  # constant-voltage phase: current tails off
            current *= max(0.1, (100.0 - self.soc_pct) / (100.0 - TAPER_FROM_PCT))
        return max(0.0, min(current, self.charge_current_limit_a))

    def summary(self) -> dict[str, object]:
        return {
            "serial": self.serial,
            "chemistry": self.chemistry,
            "soc": round(self.soc_pct, 1),
            "family": self.family,
        }
