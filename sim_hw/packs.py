"""A simulated traction pack and its BMS: a pure model, no I/O.

Times: `dt` arguments are simulated seconds (charging follows the sped-up clock); `real`
arguments are monotonic wall-clock seconds, because the 3 s PackControl timeout is a wire
timeout that a faster simulation must not shorten.

Charging is constant current, then constant voltage, as a real BMS and charger do: the
current tapers above TAPER_FROM_PCT, and the terminal voltage (open-circuit voltage plus
the cells' internal resistance times the current) never exceeds the lower of the station's
voltage limit and the pack's own (series cells x cell limit, sent in PackLimits). When the
voltage limit holds the current below the termination current the charge ends; if that
limit had the cells at their charge voltage, the pack is full and its BMS sets SOC to
100 %, as real BMSs recalibrate SOC at the end of a charge. A station voltage limit below
that (a wrong cell count, say) ends the charge early, with the pack not full.

PackControl is taken as docs/can-protocol.md ("PackControl on the pack side") says: every
frame's limits are the grant in force (`keep` keeps the command and takes them); enable
with a zero current limit leaves the pack enabled and `idle`, drawing nothing; a jump of
ControlCounter is lost frames (the newest acted on, the gap counted), the same value again
a duplicate (ignored, but for isolate); an unknown command is ignored; without a frame for
the DBC's timeout the pack stops charging as if disabled.

Names (chemistries, states, commands, fault flags) are the DBC's value-table names; their
codes are the CAN side's business (sim_hw/can_packs.py reads them from the DBC).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

# The chemistries the simulator models (each needs a cell model below); every one is a
# name in the DBC's PackIdentity.Chemistry value table (tests/unit/test_sim_packs.py).
Chemistry = Literal["nmc", "lfp", "sodium_ion"]
CHEMISTRIES: tuple[Chemistry, ...] = get_args(Chemistry)
PackState = Literal["idle", "charging", "isolated"]

FAULTS = frozenset(
    {"over_temp", "over_voltage", "under_voltage", "insulation", "thermal_alarm", "internal"}
)

AMBIENT_C = 25.0  # the default air temperature ([sim] ambient_c)
CONTROL_TIMEOUT_S = 3.0  # real seconds without PackControl -> the BMS stops charging (the
#                          DBC's RxTimeoutMs; sim_hw/can_packs.py sets each pack's from it)
CONTROL_COUNTER_MAX = 250  # ControlCounter runs 0..250, then 0 again (the DBC's range)
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
CELL_R_OHM = 0.0002  # internal resistance per series cell: terminal rise per ampere charged
MAX_CHARGE_C_RATE = 1.0  # the pack's own charge current limit (PackLimits), in C
TERMINATION_C_RATE = 0.05  # constant-voltage phase ends below C/20
FULL_CELL_TOLERANCE_V = 0.005  # charge ended this close to the cell limit: the pack is full

# ControlCommand names (DBC PackControl value table)
CMD_KEEP = "keep"
CMD_CHARGE_ENABLE = "charge_enable"
CMD_CHARGE_DISABLE = "charge_disable"
CMD_ISOLATE = "isolate"
CMD_CLEAR_ISOLATION = "clear_isolation"
COMMANDS = frozenset({CMD_KEEP, CMD_CHARGE_ENABLE, CMD_CHARGE_DISABLE, CMD_ISOLATE,
                      CMD_CLEAR_ISOLATION})


@dataclass
class SimPack:
    serial: int
    family: int
    chemistry: Chemistry
    soc_pct: float = 50.0
    cycle_count: int = 0
    soh_pct: float = 100.0
    # The air the pack stands in: it starts there (unless given its cells' temperatures)
    # and relaxes towards it; charging adds its load's rise to the hottest cell only.
    ambient_c: float = AMBIENT_C
    min_cell_temp_c: float = math.nan  # NaN: ambient_c
    max_cell_temp_c: float = math.nan  # NaN: ambient_c
    insulation_kohm: float = 5000.0
    faults: set[str] = field(default_factory=set)
    state: PackState = "idle"
    current_a: float = 0.0
    charge_enabled: bool = False
    charge_current_limit_a: float = 0.0
    charge_voltage_limit_v: float = 0.0
    control_counter: int = 0
    last_control_at: float | None = None  # real monotonic time of the last PackControl
    control_timeout_s: float = CONTROL_TIMEOUT_S
    control_gaps: int = 0  # ControlCounter jumps seen (frames lost)
    control_lost: int = 0  # frames lost in those jumps
    control_duplicates: int = 0  # frames with the counter of the last one taken
    control_ignored: int = 0  # frames not acted on (duplicates, unknown commands)
    _charged_pct: float = 0.0  # SOC gained since the last full cycle was counted
    # fault injection (sim_hw/faults.py): heat forced onto the hottest cell
    forced_temp_c: float | None = None  # held at this temperature
    temp_rise_c_per_s: float = 0.0  # climbs at this rate (simulated seconds)
    fast_cool: bool = False  # a heat fault just cleared: cool back quickly
    # False: this BMS does not announce its identity when it wakes up or is connected; it
    # sends PackIdentity only on its period and when asked (J1939 Request). Real BMSs
    # differ here, and a station must not take the last identity heard at a place for the
    # pack that is there now.
    identity_burst: bool = True
    # False: this BMS sends nothing when it wakes up or is connected: each message first
    # comes one period later (and at once when asked). The station must not count on a
    # start-up burst at all.
    startup_burst: bool = True

    def __post_init__(self) -> None:
        if math.isnan(self.min_cell_temp_c):
            self.min_cell_temp_c = self.ambient_c
        if math.isnan(self.max_cell_temp_c):
            self.max_cell_temp_c = self.ambient_c
        # a pack made with only its hottest cell given (just driven) has its coolest at
        # ambient, or at the hottest if that is colder
        self.min_cell_temp_c = min(self.min_cell_temp_c, self.max_cell_temp_c)

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
    def max_cell_charge_v(self) -> float:
        """The cells' own charge voltage limit (PackLimits)."""
        return CELL_V[self.chemistry][2]

    @property
    def max_charge_voltage_v(self) -> float:
        """The pack's own charge voltage limit: series cells x cell limit (PackLimits)."""
        return self.series_cells * self.max_cell_charge_v

    @property
    def max_charge_current_a(self) -> float:
        """The pack's own charge current limit (PackLimits)."""
        return self.rated_capacity_ah * MAX_CHARGE_C_RATE

    @property
    def termination_current_a(self) -> float:
        return self.rated_capacity_ah * TERMINATION_C_RATE

    @property
    def cell_voltage_v(self) -> float:
        """Open-circuit cell voltage, linear in SOC between the chemistry's limits."""
        _, empty, full = CELL_V[self.chemistry]
        return empty + (full - empty) * max(0.0, min(100.0, self.soc_pct)) / 100.0

    @property
    def max_cell_v(self) -> float:
        _, _, full = CELL_V[self.chemistry]
        # Charge current lifts the terminal voltage a little (internal resistance).
        rise = CELL_R_OHM * max(0.0, self.current_a)
        return min(full, self.cell_voltage_v + CELL_SPREAD_V + rise)

    @property
    def min_cell_v(self) -> float:
        _, empty, _ = CELL_V[self.chemistry]
        return max(empty, self.cell_voltage_v - CELL_SPREAD_V)

    @property
    def open_circuit_voltage_v(self) -> float:
        return self.series_cells * self.cell_voltage_v

    @property
    def pack_voltage_v(self) -> float:
        """Terminal voltage: open-circuit voltage plus the internal resistance's rise."""
        return self.series_cells * (self.cell_voltage_v + CELL_R_OHM * max(0.0, self.current_a))

    @property
    def nominal_current_a(self) -> float:
        """Current that gives CHARGE_RATE_PCT_PER_S below the taper."""
        return CHARGE_RATE_PCT_PER_S / 100.0 * self.rated_capacity_ah * 3600.0

    def control_fresh(self, real: float) -> bool:
        return self.last_control_at is not None and \
            real - self.last_control_at <= self.control_timeout_s

    def apply_control(
        self,
        command: str,
        current_limit_a: float,
        voltage_limit_v: float,
        counter: int,
        real: float,
    ) -> bool:
        """Take one PackControl frame heard at real time `real`; `command` is its
        ControlCommand by name. Returns whether it was acted on: an unknown command and a
        duplicate (the counter of the last frame taken, while that one is fresh) are
        ignored, but an isolate is always acted on. The first frame after a wake-up or a
        timeout is taken whatever its counter; a jump counts the frames lost."""
        if command not in COMMANDS:
            self.control_ignored += 1
            return False
        if self.control_fresh(real):
            if counter == self.control_counter:
                self.control_duplicates += 1
                if command != CMD_ISOLATE:  # opening the contactors twice costs nothing
                    self.control_ignored += 1
                    return False
            else:
                lost = (counter - self.control_counter - 1) % (CONTROL_COUNTER_MAX + 1)
                if lost:
                    self.control_gaps += 1
                    self.control_lost += lost
        self.last_control_at = real
        self.control_counter = counter
        # every frame carries the grant in force: keep keeps the command, takes the limits
        self.charge_current_limit_a = current_limit_a
        self.charge_voltage_limit_v = voltage_limit_v
        if command == CMD_CHARGE_ENABLE:
            self.charge_enabled = True
        elif command == CMD_CHARGE_DISABLE:
            self.charge_enabled = False
        elif command == CMD_ISOLATE:
            self.charge_enabled = False
            self.state = "isolated"
            self.current_a = 0.0
        elif command == CMD_CLEAR_ISOLATION and self.state == "isolated":
            self.state = "idle"
        return True

    def advance(self, dt: float, real: float, in_rack: bool) -> None:
        """Let `dt` simulated seconds pass; only a pack in a rack slot can charge."""
        if dt <= 0:
            return
        if self.charge_enabled and not self.control_fresh(real):
            self.charge_enabled = False  # the station went silent: stop on our own
        self.current_a, full = self._charge_current(dt) if in_rack else (0.0, False)
        if full:
            self.soc_pct = 100.0  # charged to the cell limit: the BMS recalibrates SOC
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
        target = self.ambient_c + CHARGE_TEMP_RISE_C * load
        k = min(1.0, dt / THERMAL_TAU_S)
        if self.forced_temp_c is not None:
            self.max_cell_temp_c = self.forced_temp_c
        elif self.temp_rise_c_per_s > 0:
            self.max_cell_temp_c += self.temp_rise_c_per_s * dt
        else:
            kmax = min(1.0, dt / FAULT_COOL_TAU_S) if self.fast_cool else k
            self.max_cell_temp_c = _relax(self.max_cell_temp_c, target, kmax)
            if self.fast_cool and abs(self.max_cell_temp_c - target) < 0.5:
                self.fast_cool = False
        # The coolest cell follows the air, not the load: a pack charging at -20 C ambient
        # still reads -20 C at its coolest cell, never below (what the charge window sees).
        self.min_cell_temp_c = _relax(self.min_cell_temp_c, self.ambient_c, k)
        self.min_cell_temp_c = min(self.min_cell_temp_c, self.max_cell_temp_c)

    def _charge_current(self, dt: float) -> tuple[float, bool]:
        """(charge current for the next dt, whether the charge just ended with the pack
        full)."""
        if not self.charge_enabled or self.state == "isolated" or self.soc_pct >= 100.0:
            return 0.0, False
        current = self.nominal_current_a
        if self.soc_pct > TAPER_FROM_PCT:  # current tails off near full
            current *= max(0.1, (100.0 - self.soc_pct) / (100.0 - TAPER_FROM_PCT))
        current = min(current, self.charge_current_limit_a, self.max_charge_current_a)
        # Constant voltage: the terminal voltage stays at or below the lower voltage limit,
        # to the end of the step (the open-circuit voltage rises with the charge taken in).
        limit_v = self.max_charge_voltage_v
        if self.charge_voltage_limit_v > 0:
            limit_v = min(limit_v, self.charge_voltage_limit_v)
        _, empty, full = CELL_V[self.chemistry]
        ocv_rise_per_a = (full - empty) * dt / 3600.0 / self.rated_capacity_ah  # per cell
        cv_current = (limit_v / self.series_cells - self.cell_voltage_v) \
            / (CELL_R_OHM + ocv_rise_per_a)
        if cv_current < current:
            if cv_current < self.termination_current_a:  # end of charge at this voltage
                return 0.0, limit_v / self.series_cells >= full - FULL_CELL_TOLERANCE_V
            current = cv_current
        return max(0.0, current), False

    def summary(self) -> dict[str, object]:
        return {
            "serial": self.serial,
            "chemistry": self.chemistry,
            "soc": round(self.soc_pct, 1),
            "family": self.family,
        }


def _relax(temp_c: float, target_c: float, k: float) -> float:
    """One first-order step of `temp_c` towards `target_c` (0 <= k <= 1) that never passes
    the target, not even by a rounding error: a cell relaxing to -20 C reads -20.0, not
    a hair below (the station's charge window compares against it)."""
    step = temp_c + (target_c - temp_c) * k
    return min(step, target_c) if temp_c <= target_c else max(step, target_c)
