"""Arriving vehicles: when the next car comes, and what it brings (pure, seeded).

Two modes:

- without `[sim.arrivals]` (the default): the first car 1 s after start, then one car
  `arrival_gap_s` after each departure, its family alternating over the rack's families;
- with `[sim.arrivals]` (`ArrivalsConfig`): cars come to the station at scheduled times and
  queue for the platform. The first in line drives on when the platform is free
  (`arrival_gap_s` after the last car left, or at once if it came to an empty station); a
  car still in the queue `patience_s` after it came leaves unserved ("turned away"); a car
  on the platform stays until it leaves through RELEASE. Every car is recorded
  (`CarRecord`: came, drove on, its swap began, left, served or turned away) and
  `VehicleSource.report(now)` sums them up.

The schedule is a pure function of the configuration and the seed
(`arrival_schedule`): a non-homogeneous Poisson process with a rate per hour of the day
(`arrival_times`), each car's family, chemistry, SOC and pack temperature drawn from the
configured mix. Sim time 0 is 00:00 of the first day.

Every car has a VIN: its scheduled arrival's `vin`, else the next of `[sim] vins`, else one
derived from its reader token (`default_vin`).
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, cast

from sim_hw.config import ArrivalsConfig, PackFamily, ScheduledArrival, SimConfig
from sim_hw.packs import CHEMISTRIES, Chemistry, SimPack

FIRST_ARRIVAL_S = 1.0
HOUR_S = 3600.0
CELL_TEMP_SPREAD_C = 1.0  # a scheduled pack's cells sit within +-1 C of its temperature

CarOutcome = Literal["waiting", "on_platform", "served", "left_unserved", "turned_away"]


@dataclass
class Vehicle:
    token: int
    family: int
    arrived_at: float  # sim seconds: on the platform
    offset_x_mm: float
    offset_y_mm: float
    pack: SimPack | None
    ready: bool = False
    bay_awake_from: float | None = None  # sim time from which the bay pack talks on CAN
    visit: dict[str, Any] = field(default_factory=dict)  # pack_out, stored/fetched slot
    queued_at: float | None = None  # sim seconds: came to the station (None: = arrived_at)
    vin: str | None = None  # its BMS sends it in Vehicle Identification

    def describe(self) -> str:
        p = self.pack
        pack = f"pack {p.serial} {p.chemistry} SOC {p.soc_pct:.1f} %" if p else "no pack"
        waited = ""
        if self.queued_at is not None and self.queued_at < self.arrived_at:
            waited = f", queued {self.arrived_at - self.queued_at:.0f} s"
        vin = f"VIN {self.vin}, " if self.vin else ""
        return (f"vehicle {self.token} arrived: {vin}family {self.family}, {pack}, "
                f"offsets x={self.offset_x_mm:+.1f} y={self.offset_y_mm:+.1f} mm{waited}")


@dataclass
class CarRecord:
    """One car at the station, as the queue saw it (sim seconds)."""

    n: int  # order of coming to the station, from 1
    queued_at: float
    family: int
    chemistry: Chemistry
    soc: float
    temp_c: float | None  # None: just driven, drawn when it drives on
    outcome: CarOutcome = "waiting"
    soh: float | None = None  # None: drawn when it drives on
    vin: str | None = None  # the schedule's, if it gave one
    entered_at: float | None = None  # drove onto the platform
    token: int | None = None
    swap_started_at: float | None = None  # the PLC took the first command for this car
    left_at: float | None = None

    @property
    def wait_s(self) -> float | None:
        """Came to the station -> its swap began (None while it has not begun)."""
        if self.swap_started_at is None:
            return None
        return self.swap_started_at - self.queued_at

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "wait_s": self.wait_s}


class _Command(Protocol):
    taken_sim: float


def _first_command_since(t: float, commands: Sequence[_Command]) -> float | None:
    """When the PLC took its first command at or after `t` (None: none yet)."""
    started = None
    for rec in reversed(commands):
        if rec.taken_sim < t:
            break
        started = rec.taken_sim
    return started


# ---- VINs -------------------------------------------------------------------------------

VIN_WMI = "SWS"  # world manufacturer identifier of the simulated cars (no real maker's)
VIN_VDS = "BSTN2"  # vehicle descriptor section
VIN_YEAR_PLANT = "TS"  # model year 2026 (T), plant S
_VIN_VALUES = {**{str(d): d for d in range(10)},
               **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
               **dict(zip("JKLMN", range(1, 6), strict=True)), "P": 7, "R": 9,
               **dict(zip("STUVWXYZ", range(2, 10), strict=True))}
_VIN_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)


def vin_check_digit(vin: str) -> str:
    """The check digit (position 9) of a 17-character VIN, as North America requires it."""
    total = sum(_VIN_VALUES[c] * w for c, w in zip(vin, _VIN_WEIGHTS, strict=True))
    r = total % 11
    return "X" if r == 10 else str(r)


def default_vin(token: int) -> str:
    """A valid ISO 3779 VIN (with its check digit) for the car with this reader token: the
    same token, the same VIN, so a run's cars can be told apart and named again."""
    if not 0 <= token <= 999_999:
        raise ValueError(f"token {token} does not fit a VIN's 6-digit serial")
    vin = f"{VIN_WMI}{VIN_VDS}0{VIN_YEAR_PLANT}{token:06d}"
    return vin[:8] + vin_check_digit(vin) + vin[9:]


# ---- the arrival profile ---------------------------------------------------------------

def arrival_times(rate_per_hour: Sequence[float], hours: float,
                  rng: random.Random) -> list[float]:
    """Arrival times (sim seconds from 00:00) over `hours` hours of a non-homogeneous
    Poisson process: during hour h (counted from 00:00 of the first day) cars come at
    `rate_per_hour[h % len(rate_per_hour)]` per hour. Exact for this piecewise-constant
    rate: exponential gaps at each hour's rate, restarted at each hour boundary (the
    process is memoryless). The expected number of cars in hour h is its rate."""
    out: list[float] = []
    end = hours * HOUR_S
    h = 0
    while h * HOUR_S < end:
        start, stop = h * HOUR_S, min((h + 1) * HOUR_S, end)
        rate = rate_per_hour[h % len(rate_per_hour)] / HOUR_S
        t = start
        while rate > 0:
            t += rng.expovariate(rate)
            if t >= stop:
                break
            out.append(t)
        h += 1
    return out


def _weighted(rng: random.Random, weights: dict[Any, float]) -> Any:
    keys = sorted(weights, key=str)  # the draw must not depend on the order of a table
    return rng.choices(keys, weights=[weights[k] for k in keys])[0]


def draw_car(arrivals: ArrivalsConfig, at_s: float, rng: random.Random) -> ScheduledArrival:
    """One car coming at `at_s`: family, chemistry, SOC and pack temperature from the mix."""
    family = cast(PackFamily, int(_weighted(rng, arrivals.family_share)))
    chemistry = cast(Chemistry, _weighted(rng, arrivals.chemistry_share))
    soc = round(rng.uniform(*arrivals.soc_pct), 1)
    cold = rng.random() < arrivals.cold_share
    temp = round(rng.uniform(*(arrivals.cold_temp_c if cold else arrivals.temp_c)), 1)
    return ScheduledArrival(at_s=round(at_s, 3), family=family, chemistry=chemistry, soc=soc,
                            temp_c=temp)


def arrival_schedule(arrivals: ArrivalsConfig, seed: int) -> list[ScheduledArrival]:
    """The cars that will come, in order: the explicit `schedule` if there is one, else the
    "poisson" profile drawn from the seed (the same seed, the same cars). "saturated" has
    no schedule: its cars are drawn as the queue empties."""
    if arrivals.schedule:
        return sorted(arrivals.schedule, key=lambda a: a.at_s)
    if arrivals.profile == "saturated":
        return []
    rng = random.Random(f"arrivals-{seed}")
    return [draw_car(arrivals, t, rng)
            for t in arrival_times(arrivals.rate_per_hour, arrivals.hours, rng)]


def expected_per_hour(arrivals: ArrivalsConfig) -> list[float]:
    """Expected cars per hour of the run (the profile's rate, hour by hour)."""
    n = math.ceil(arrivals.hours)
    rates = arrivals.rate_per_hour
    return [rates[h % len(rates)] * min(1.0, arrivals.hours - h) for h in range(n)]


# ---- the source --------------------------------------------------------------------------

class VehicleSource:
    """Brings cars to the platform: after each departure (default) or from the queue of a
    schedule (`[sim.arrivals]`)."""

    def __init__(self, config: SimConfig, taken_serials: set[int]) -> None:
        self.limit = config.vehicles
        self.gap = config.arrival_gap_s
        self.ambient_c = config.ambient_c
        self.rng = random.Random(f"vehicles-{config.seed}")
        self.arrived = 0
        self.next_at: float | None = FIRST_ARRIVAL_S
        self._token = 0
        self._taken = set(taken_serials)
        # vehicle packs get serials from their own range, so they never collide with the rack
        self._serial = self.rng.randrange(100_000_000, 900_000_000)
        # the queue ([sim.arrivals])
        self.arrivals = config.arrivals
        self.records: list[CarRecord] = []
        self._pending: deque[ScheduledArrival] = deque()
        self._queue: deque[CarRecord] = deque()
        self._platform: CarRecord | None = None
        self._free_from = FIRST_ARRIVAL_S  # the platform is free for the next car from
        self._saturated = False
        self._end_s = math.inf
        self._live_rng = random.Random(f"arrivals-live-{config.seed}")
        self._vins = list(config.vins)
        # held: no car comes until release() (a scenario runner sets the station up first);
        # the first car's times then count from the release
        self.held = config.hold_arrivals
        if self.arrivals is not None:
            self.next_at = None
            self._pending.extend(arrival_schedule(self.arrivals, config.seed))
            self._saturated = self.arrivals.profile == "saturated" and not self.arrivals.schedule
            self._end_s = self.arrivals.hours * HOUR_S
            if self._saturated:
                self._refill(FIRST_ARRIVAL_S)

    def release(self, now: float) -> None:
        """Let cars come: a held source starts now, as if the simulator had started now
        (the schedule's times count from here)."""
        if not self.held:
            return
        self.held = False
        shift = now - FIRST_ARRIVAL_S if now > FIRST_ARRIVAL_S else 0.0
        if self.next_at is not None:
            self.next_at += shift
        self._free_from += shift
        self._pending = deque(a.model_copy(update={"at_s": a.at_s + shift})
                              for a in self._pending)
        self._end_s += shift

    def due(self, now: float, families: list[int]) -> Vehicle | None:
        """The vehicle arriving on the platform by `now`, if one is due (it arrives at its
        scheduled time); called while the platform is empty."""
        if self.held:
            return None
        if self.arrivals is not None:
            return self._due_from_queue(now)
        if self.next_at is None or now < self.next_at:
            return None
        if self.limit and self.arrived >= self.limit:
            self.next_at = None
            return None
        t, self.next_at = self.next_at, None
        self.arrived += 1
        self._token = self._token % 0xFFFF + 1  # u16, never 0 (0 means no vehicle)
        fams = families or [20]
        family = fams[(self.arrived - 1) % len(fams)]
        return Vehicle(
            token=self._token,
            family=family,
            arrived_at=t,
            offset_x_mm=self._offset(),
            offset_y_mm=self._offset(),
            pack=self._pack(family),
            bay_awake_from=t,  # its BMS is awake while the car is driven in
            vin=self._vin(None),
        )

    def _vin(self, scheduled: str | None) -> str:
        """The VIN of the car driving on now (its token already drawn)."""
        if scheduled is not None:
            return scheduled
        n = self.arrived - 1
        return self._vins[n] if n < len(self._vins) else default_vin(self._token)

    def departed(self, t: float, visit: dict[str, Any] | None = None,
                 commands: Sequence[_Command] = ()) -> None:
        """The car on the platform left at `t` (its visit, and the PLC's command log to
        find when its swap began)."""
        if self.arrivals is None:
            if not self.limit or self.arrived < self.limit:
                self.next_at = t + self.gap
            return
        self._free_from = t + self.gap
        car, self._platform = self._platform, None
        if car is None:
            return
        car.left_at = t
        assert car.entered_at is not None
        car.swap_started_at = _first_command_since(car.entered_at, commands)
        swapped = visit is None or (visit.get("pack_out") is not None
                                    and visit.get("pack_in") is not None)
        car.outcome = "served" if swapped else "left_unserved"

    # ---- the queue --------------------------------------------------------------------
    def waiting(self, now: float) -> list[CarRecord]:
        """The cars in the queue at `now` (not on the platform)."""
        self._settle_safely(now)
        return list(self._queue)

    def report(self, now: float, commands: Sequence[_Command] = ()) -> dict[str, Any]:
        """The queue's figures up to `now` (sim seconds); {} without [sim.arrivals].
        `commands` (the PLC's command log) tells whether the swap of the car on the platform
        has begun."""
        if self.arrivals is None:
            return {}
        self._settle_safely(now)
        car = self._platform
        platform_started = None if car is None or car.entered_at is None else \
            _first_command_since(car.entered_at, commands)
        by = {o: 0 for o in ("served", "left_unserved", "turned_away")}
        for r in self.records:
            if r.outcome in by:
                by[r.outcome] += 1
        waits = [w for r in self.records if r.outcome == "served"
                 for w in [r.wait_s] if w is not None]
        return {
            "came": len(self.records),
            **by,
            "waiting": len(self._queue),
            "on_platform": self._platform is not None,
            "waits_s": waits,
            # cars still waiting now (queue, or platform with the swap not begun): how long
            "waiting_for_s": [now - r.queued_at for r in self._queue] + (
                [now - car.queued_at] if car is not None and platform_started is None else []),
            "platform_swap_started_at": platform_started,
            "patience_s": self.arrivals.patience_s,
        }

    def _settle_safely(self, now: float) -> None:
        # While the platform is free, the next due() decides who drives on at _free_from:
        # settle no further than that, or a car could be counted as leaving the queue
        # while it should be on the platform.
        self._settle(now if self._platform is not None else min(now, self._free_from))

    def _due_from_queue(self, now: float) -> Vehicle | None:
        if self.limit and self.arrived >= self.limit:
            self._settle(now)
            return None
        if now < self._free_from:
            self._settle(now)
            return None
        self._settle(self._free_from)
        if self._queue:
            entry = self._free_from  # the first in line was waiting for the platform
        else:
            if not self._pending or self._pending[0].at_s > now:
                return None
            entry = max(self._pending[0].at_s, self._free_from)  # came to an empty station
            self._settle(entry)
        return self._enter(entry)

    def _settle(self, t: float) -> None:
        """Bring the queue to time `t`: cars join it when they come, and leave it when their
        patience runs out (first in, first out: the head has the earliest deadline)."""
        assert self.arrivals is not None
        patience = self.arrivals.patience_s
        while True:
            come = self._pending[0].at_s if self._pending else math.inf
            leave = self._queue[0].queued_at + patience \
                if self._queue and patience is not None else math.inf
            if min(come, leave) > t:
                return
            if leave < come:
                car = self._queue.popleft()
                car.left_at, car.outcome = leave, "turned_away"
                self._refill(leave)
            else:
                a = self._pending.popleft()
                car = CarRecord(n=len(self.records) + 1, queued_at=a.at_s, family=a.family,
                                chemistry=a.chemistry, soc=a.soc, temp_c=a.temp_c, vin=a.vin,
                                soh=a.soh)
                self.records.append(car)
                self._queue.append(car)

    def _refill(self, t: float) -> None:
        """Saturated: a new car joins as soon as nobody is waiting (until the run's end)."""
        if self._saturated and not self._queue and not self._pending and t < self._end_s:
            assert self.arrivals is not None
            self._pending.append(draw_car(self.arrivals, t, self._live_rng))

    def _enter(self, t: float) -> Vehicle:
        car = self._queue.popleft()
        self._refill(t)
        self.arrived += 1
        self._token = self._token % 0xFFFF + 1
        car.entered_at, car.token, car.outcome = t, self._token, "on_platform"
        car.vin = self._vin(car.vin)
        self._platform = car
        self._free_from = math.inf  # until it leaves
        return Vehicle(
            token=self._token,
            family=car.family,
            arrived_at=t,
            offset_x_mm=self._offset(),
            offset_y_mm=self._offset(),
            pack=self._scheduled_pack(car),
            bay_awake_from=t,
            queued_at=car.queued_at,
            vin=car.vin,
        )

    # ---- packs --------------------------------------------------------------------------
    def _offset(self) -> float:
        return round(self.rng.choice((-1, 1)) * self.rng.uniform(20.0, 80.0), 1)

    def _next_serial(self) -> int:
        self._serial += 1
        while self._serial in self._taken:
            self._serial += 1
        self._taken.add(self._serial)
        return self._serial

    def _pack(self, family: int) -> SimPack:
        return SimPack(
            serial=self._next_serial(),
            family=family,
            chemistry=self.rng.choice(CHEMISTRIES),
            soc_pct=round(self.rng.uniform(5.0, 30.0), 1),
            cycle_count=self.rng.randrange(50, 900),
            soh_pct=round(self.rng.uniform(85.0, 99.0), 1),
            ambient_c=self.ambient_c,
            max_cell_temp_c=self._just_driven_c(),
        )

    def _just_driven_c(self) -> float:
        """A pack's hottest cell after a drive: 3..8 C above the air."""
        return round(self.ambient_c + self.rng.uniform(3.0, 8.0), 1)

    def _scheduled_pack(self, car: CarRecord) -> SimPack:
        serial, cycles = self._next_serial(), self.rng.randrange(50, 900)
        drawn_soh = round(self.rng.uniform(85.0, 99.0), 1)
        if car.temp_c is None:  # just driven: the hottest cell above the air, the coolest at it
            car.temp_c = self._just_driven_c()
            low, high = self.ambient_c, car.temp_c
        else:
            low, high = car.temp_c - CELL_TEMP_SPREAD_C, car.temp_c + CELL_TEMP_SPREAD_C
        return SimPack(
            serial=serial,
            family=car.family,
            chemistry=car.chemistry,
            soc_pct=car.soc,
            cycle_count=cycles,
            soh_pct=drawn_soh if car.soh is None else car.soh,
            ambient_c=self.ambient_c,
            min_cell_temp_c=low,
            max_cell_temp_c=high,
        )
