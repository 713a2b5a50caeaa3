"""A day at the station: the simulated station (23 rack slots) and the real swapd, in this
process over real Modbus TCP and CAN frames (station/rig.py), for `--hours` simulated hours
at `--speed` x real time. Printed, never asserted.

Demand (sim_hw/config.py ArrivalsConfig, sim_hw/vehicles.py arrival_schedule; seeded,
reproducible; sim time 0 is 00:00):
  peaks      a non-homogeneous Poisson process with a rate per hour of the day in the
             shape of PEAKS_SHAPE (morning peak 07-09, evening peak 17-19), scaled to
             `--vehicles-per-day` (default 400: ~35 cars/h at 18:00, ~2/h at 03:00)
  saturated  a car always waiting (a new one joins whenever the queue empties): the
             station's capacity
Cars queue for the one platform in arrival order; a car still in the queue `--patience-min`
(default 15) after it came leaves (turned away); a car on the platform stays until its swap
is done. Mix: families 20 (75 kWh) / 25 (100 kWh) half and half; chemistries NMC 50 %,
LFP 35 %, sodium-ion 15 %; arriving SOC uniform 5-30 %; packs arrive at 28-33 C (just
driven). `--winter`: 40 % of the packs arrive cold-soaked at -15..-10 C (an ambient of
-15 C), the others at 5-15 C. The rack itself is at 25 C (sim_hw/packs.py AMBIENT_C: the
simulator has no rack ambient setting): a cold pack warms up in its slot, and swapd does
not charge it until its coldest cell reaches its chemistry's minimum (LFP and NMC 0 C,
sodium-ion -20 C).

Charging is the simulator's own (sim_hw/packs.py: ~0.9 C constant current, tapering above
90 % SOC, constant voltage at the cell limit) under swapd's grants (`[charging]`: 1 C, the
pack's own limits, the station power cap `--power-cap-kw`, default swapd's 500 kW). The
rack starts with 22 packs (families alternating, SOC 85-100 %) and one free slot.

Figures: swaps served (the simulator's count of cars that left with a swapped pack, and
swapd's journal), cars turned away, waits (came -> the PLC took the swap's first command),
packs ready (SOC >= swapd's selection minimum, 80 %) hour by hour, charging energy and
peak power (ground truth: the sum over rack packs of current x terminal voltage, sampled
every ~10 ms of wall time, i.e. about every simulator tick) against the power swapd
grants (`status()["charging_power_kw"]`: current limit x voltage limit), and swapd's
faults, aborts, alarms and start inhibits.

Run (a 24 h day at x200 takes ~7-8 min of wall time; one at a time on a small machine):
  .venv/bin/python bench/day_bench.py --profile saturated --hours 24 --json day.json
  .venv/bin/python bench/day_bench.py --profile peaks --power-cap-kw 150
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim_hw.config import ArrivalsConfig, peaks_rate_per_hour
from sim_hw.mechanics import StationModel
from sim_hw.vehicles import HOUR_S, CarRecord, expected_per_hour
from station.config import ChargingSection
from station.logs import configure_logging
from station.rig import Rig, SpeedRefused

MAX_SPEED = 200.0  # the most this bench asks of the rig and swapd
SLOTS = 23  # NIO PSS 4.0: 23 packs; 22 in the rack, one free slot for the car's pack
SAMPLE_REAL_S = 0.01  # wall seconds between ground-truth samples (the sim ticks every 10 ms)
DEFAULT_CAP_KW = ChargingSection().station_power_cap_kw
WINTER = {"cold_share": 0.4, "cold_temp_c": (-15.0, -10.0), "temp_c": (5.0, 15.0)}


# ---- ground truth, sampled -------------------------------------------------------------

@dataclass
class Hour:
    energy_kwh: float = 0.0
    peak_kw: float = 0.0
    peak_granted_kw: float = 0.0
    ready_at_start: int | None = None
    ready_min: int | None = None
    ready_max: int | None = None
    ready_time: float = 0.0  # integral of ready packs over sim seconds
    seconds: float = 0.0
    by_family_at_start: dict[int, int] = field(default_factory=dict)

    def ready_mean(self) -> float | None:
        return self.ready_time / self.seconds if self.seconds else None


class Sampler:
    """Charging power, energy and ready packs from the simulator's packs (ground truth),
    next to the power swapd grants."""

    def __init__(self, model: StationModel, rig: Rig, min_soc: float, cap_kw: float) -> None:
        self.model, self.rig, self.min_soc, self.cap_kw = model, rig, min_soc, cap_kw
        self.t: float | None = None
        self.energy_kwh = 0.0
        self.granted_kwh = 0.0
        self.peak_kw, self.peak_at = 0.0, 0.0
        self.peak_granted_kw, self.peak_granted_at = 0.0, 0.0
        self.over_cap: list[tuple[float, float]] = []  # (sim s, kW) samples above the cap
        self.hours: dict[int, Hour] = defaultdict(Hour)
        self.samples = 0
        self.cold_rack_s: defaultdict[str, float] = defaultdict(float)  # pack-s below 0 C

    def power_kw(self) -> float:
        return sum(p.current_a * p.pack_voltage_v for p in self.model.rack.values()
                   if p is not None) / 1000.0

    def ready(self) -> tuple[int, dict[int, int]]:
        fam: Counter[int] = Counter()
        for p in self.model.rack.values():
            if p is not None and p.soc_pct >= self.min_soc and p.state != "isolated":
                fam[p.family] += 1
        return sum(fam.values()), dict(fam)

    def sample(self) -> None:
        now = self.model.now
        kw = self.power_kw()
        granted = float(self.rig.core.status()["charging_power_kw"])
        ready, fam = self.ready()
        h = self.hours[int(now // HOUR_S)]
        if h.ready_at_start is None:
            h.ready_at_start, h.by_family_at_start = ready, fam
        h.ready_min = ready if h.ready_min is None else min(h.ready_min, ready)
        h.ready_max = ready if h.ready_max is None else max(h.ready_max, ready)
        if self.t is not None and now > self.t:
            dt = now - self.t
            # the packs' current was set for the tick that ended at `now`
            self.energy_kwh += kw * dt / 3600.0
            self.granted_kwh += granted * dt / 3600.0
            h.energy_kwh += kw * dt / 3600.0
            h.ready_time += ready * dt
            h.seconds += dt
            for p in self.model.rack.values():
                if p is not None and p.min_cell_temp_c < 0.0:
                    self.cold_rack_s[p.chemistry] += dt
        self.t = now
        self.samples += 1
        h.peak_kw = max(h.peak_kw, kw)
        h.peak_granted_kw = max(h.peak_granted_kw, granted)
        if kw > self.peak_kw:
            self.peak_kw, self.peak_at = kw, now
        if granted > self.peak_granted_kw:
            self.peak_granted_kw, self.peak_granted_at = granted, now
        if kw > self.cap_kw + 0.5:
            self.over_cap.append((now, kw))


# ---- swapd's events ----------------------------------------------------------------------

class EventLog:
    """What swapd said: faults, aborts, alarms, state changes, inhibits, charge refusals."""

    def __init__(self) -> None:
        self.rig: Rig | None = None
        self.kinds: Counter[str] = Counter()
        self.faults: list[dict[str, Any]] = []
        self.alarms: list[dict[str, Any]] = []
        self.aborted: list[dict[str, Any]] = []
        self.states: list[dict[str, Any]] = []
        self.inhibit_s: defaultdict[str, float] = defaultdict(float)  # reason -> sim s
        self._inhibit: tuple[str, float] | None = None
        self.cold: dict[int, float] = {}  # serial -> since when refused for cold
        self.cold_waits: list[tuple[int, float]] = []  # (serial, sim seconds)
        self.cap_limited = 0
        self.completed = 0

    def sim_t(self, t: float) -> float:
        assert self.rig is not None
        return (t - self.rig.sim.clock.t0) * self.rig.speed

    def __call__(self, ev: Any) -> None:
        if self.rig is None:
            return
        self.kinds[ev.kind] += 1
        d = ev.data
        t = self.sim_t(d["t"])
        if ev.kind == "fault":
            self.faults.append({"t_s": t, "code": d["code"], "reason": d["reason"],
                                "step": d["step"]})
        elif ev.kind == "alarm":
            self.alarms.append({"t_s": t, "alarm": d["alarm"], "reason": d["reason"],
                                "action": d["action"]})
        elif ev.kind == "swap_ended":
            if d["outcome"] == "completed":
                self.completed += 1
            else:
                self.aborted.append({"t_s": t, "swap_id": d["swap_id"],
                                     "outcome": d["outcome"], "reason": d["reason"],
                                     "step": d["step"]})
        elif ev.kind == "state":
            if d["new"] not in ("Idle", "Starting", "Execute", "Completing", "Complete",
                                "Resetting"):
                self.states.append({"t_s": t, "state": d["new"], "reason": d["reason"]})
        elif ev.kind == "inhibit":
            if self._inhibit is not None:
                reason, since = self._inhibit
                self.inhibit_s[reason] += t - since
            self._inhibit = (d["reason"], t) if d["reason"] else None
        elif ev.kind == "pack_command":
            serial, reason = d["serial"], d["reason"] or ""
            if "power cap" in reason:
                self.cap_limited += 1
            if reason.startswith("too cold"):
                self.cold.setdefault(serial, t)
            elif serial in self.cold:
                self.cold_waits.append((serial, t - self.cold.pop(serial)))

    def close(self, t: float) -> None:
        if self._inhibit is not None:
            reason, since = self._inhibit
            self.inhibit_s[reason] += t - since
            self._inhibit = None


# ---- the run ---------------------------------------------------------------------------

def arrivals_config(args: argparse.Namespace) -> ArrivalsConfig:
    extra: dict[str, Any] = dict(WINTER) if args.winter else {}
    return ArrivalsConfig(
        profile="saturated" if args.profile == "saturated" else "poisson",
        rate_per_hour=peaks_rate_per_hour(args.vehicles_per_day),
        hours=args.hours,
        patience_s=args.patience_min * 60.0 if args.patience_min > 0 else None,
        **extra,
    )


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1), nearest rank."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def stats_min(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "mean_min": None, "p50_min": None, "p95_min": None, "max_min": None}
    return {"n": len(values), "mean_min": round(statistics.fmean(values) / 60, 2),
            "p50_min": round(pct(values, 0.5) / 60, 2),
            "p95_min": round(pct(values, 0.95) / 60, 2),
            "max_min": round(max(values) / 60, 2)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    cap = args.power_cap_kw
    arrivals = arrivals_config(args)
    events = EventLog()
    sim = {"seed": args.seed, "station": {"slots": SLOTS}, "arrivals": arrivals}
    config = {"charging": {"station_power_cap_kw": cap}}
    end_s = args.hours * HOUR_S
    wall0 = time.monotonic()
    cpu0 = time.process_time()
    lag_max = 0.0
    daemon_error: str | None = None
    async with Rig(speed=args.speed, vehicles=0, sim=sim, config=config, observer=events,
                   capture_log=False, name="day") as rig:
        events.rig = rig
        model = rig.sim.model
        min_soc = rig.config.selection.min_soc_pct
        sampler = Sampler(model, rig, min_soc, cap)
        next_print = 0.0
        print(f"{'hour':>5} {'came':>5} {'served':>6} {'away':>5} {'queue':>5} "
              f"{'ready':>5} {'kWh':>7} {'peak kW':>8} {'granted':>8} {'state':>8}",
              flush=True)
        while model.now < end_s:
            await asyncio.sleep(SAMPLE_REAL_S)
            # how far the simulator lags behind its clock (a slow machine shows here)
            lag_max = max(lag_max, rig.sim.now() - model.now)
            sampler.sample()
            if rig.task is not None and rig.task.done():
                exc = None if rig.task.cancelled() else rig.task.exception()
                daemon_error = f"the daemon stopped: {exc!r}"
                break
            if model.now >= next_print:
                h = int(model.now // HOUR_S)
                r = model.vehicles.report(model.now)
                hr = sampler.hours[h]
                print(f"{h:>5} {r['came']:>5} {r['served']:>6} {r['turned_away']:>5} "
                      f"{r['waiting']:>5} {hr.ready_at_start!s:>5} {sampler.energy_kwh:>7.0f} "
                      f"{sampler.peak_kw:>8.1f} {sampler.peak_granted_kw:>8.1f} "
                      f"{rig.core.state.label:>8}", flush=True)
                next_print = (h + 1) * HOUR_S
        t_end = model.now
        events.close(t_end)
        report = model.vehicles.report(t_end, model.command_log)
        records: list[CarRecord] = list(model.vehicles.records)
        status = rig.status()
        summary = rig.daemon.journal.summary(args.speed)
        violations = list(rig.sim.observer.violations)
        rack_end = [(s, p.family, p.chemistry, round(p.soc_pct, 1))
                    for s, p in sorted(model.rack.items()) if p is not None]
    wall = time.monotonic() - wall0
    cpu = time.process_time() - cpu0
    return build_result(args, cap, arrivals, sampler, events, report, records, status,
                        summary, violations, rack_end, t_end,
                        {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                         "sim_lag_max_s": round(lag_max, 1), "samples": sampler.samples,
                         "daemon_error": daemon_error})


def build_result(args: argparse.Namespace, cap: float, arrivals: ArrivalsConfig,
                 sampler: Sampler, events: EventLog, report: dict[str, Any],
                 records: list[CarRecord], status: dict[str, Any], summary: dict[str, Any],
                 violations: list[Any], rack_end: list[Any], t_end: float,
                 run_info: dict[str, Any]) -> dict[str, Any]:
    hours = t_end / HOUR_S
    served = report["served"]
    per_day = served * 24.0 / hours if hours else 0.0
    expected = expected_per_hour(arrivals) if arrivals.profile == "poisson" else []
    per_hour: list[dict[str, Any]] = []
    for h in range(math.ceil(args.hours)):
        came = [r for r in records if int(r.queued_at // HOUR_S) == h]
        done = [r for r in records if r.outcome == "served" and r.left_at is not None
                and int(r.left_at // HOUR_S) == h]
        away = [r for r in records if r.outcome == "turned_away" and r.left_at is not None
                and int(r.left_at // HOUR_S) == h]
        waits = [r.wait_s for r in records if r.wait_s is not None
                 and r.swap_started_at is not None and int(r.swap_started_at // HOUR_S) == h]
        hr = sampler.hours.get(h, Hour())
        mean_ready = hr.ready_mean()
        per_hour.append({
            "hour": h, "expected": round(expected[h], 1) if h < len(expected) else None,
            "came": len(came), "served": len(done), "turned_away": len(away),
            "wait_mean_min": round(statistics.fmean(waits) / 60, 1) if waits else None,
            "wait_max_min": round(max(waits) / 60, 1) if waits else None,
            "ready_at_start": hr.ready_at_start, "ready_min": hr.ready_min,
            "ready_max": hr.ready_max,
            "ready_mean": None if mean_ready is None else round(mean_ready, 1),
            "ready_by_family_at_start": hr.by_family_at_start,
            "energy_kwh": round(hr.energy_kwh, 1), "peak_kw": round(hr.peak_kw, 1),
            "peak_granted_kw": round(hr.peak_granted_kw, 1),
        })
    platform_waits = [r.swap_started_at - r.entered_at for r in records
                      if r.swap_started_at is not None and r.entered_at is not None]
    queue_waits = [r.entered_at - r.queued_at for r in records if r.entered_at is not None]
    # on the platform: the swap's first command -> the car gone (the sim's clock)
    busy = [r.left_at - r.swap_started_at for r in records if r.outcome == "served"
            and r.left_at is not None and r.swap_started_at is not None]
    occupied = sum(min(r.left_at if r.left_at is not None else t_end, t_end) - r.entered_at
                   for r in records if r.entered_at is not None)
    swap_s = summary["swap_seconds"]
    cold = [w for _, w in events.cold_waits]
    by_chem = Counter(r.chemistry for r in records if r.outcome == "served")
    by_fam = Counter(r.family for r in records if r.outcome == "served")
    return {
        "run": {
            "profile": args.profile, "hours": round(hours, 3), "speed": args.speed,
            "seed": args.seed, "slots": SLOTS, "rack_packs": SLOTS - 1,
            "vehicles_per_day": args.vehicles_per_day if args.profile == "peaks" else None,
            "patience_min": args.patience_min, "winter": args.winter,
            "power_cap_kw": cap, "selection_min_soc_pct": sampler.min_soc,
            "machine_cores": os.cpu_count(), **run_info,
        },
        "swaps": {
            "served": served, "per_day": round(per_day, 1),
            "swapd_completed": summary["swaps_completed"],
            "swapd_aborted": summary["swaps_aborted"],
            "swapd_unfinished": summary["swaps_unfinished"],
            "served_by_family": dict(by_fam), "pack_out_chemistry": dict(by_chem),
            "swap_seconds_mean": round(statistics.fmean(swap_s), 1) if swap_s else None,
            "first_command_to_gone_s_mean": round(statistics.fmean(busy), 1) if busy else None,
            "first_command_to_gone_s_max": round(max(busy), 1) if busy else None,
            "platform_occupied_pct": round(100 * occupied / t_end, 1) if t_end else None,
            "swap_seconds_max": round(max(swap_s), 1) if swap_s else None,
            "step_seconds_mean": {k: round(x["mean"], 1) for k, x in summary["steps"].items()},
            "controller_dead_time_ms_mean": round(statistics.fmean(
                summary["controller_dead_time_ms"]), 1)
            if summary["controller_dead_time_ms"] else None,
        },
        "vehicles": {
            "came": report["came"], "turned_away": report["turned_away"],
            "left_unserved": report["left_unserved"],
            "waiting_at_end": report["waiting"], "on_platform_at_end": report["on_platform"],
            "waiting_at_end_for_min": [round(w / 60, 1) for w in report["waiting_for_s"]],
            "wait": stats_min(report["waits_s"]),
            "queue_wait": stats_min(queue_waits),
            "platform_wait": stats_min(platform_waits),
        },
        "energy": {
            "charged_kwh": round(sampler.energy_kwh, 1),
            "kwh_per_swap": round(sampler.energy_kwh / served, 1) if served else None,
            "mean_kw": round(sampler.energy_kwh / hours, 1) if hours else None,
            "peak_kw": round(sampler.peak_kw, 1),
            "peak_at_h": round(sampler.peak_at / HOUR_S, 2),
            "granted_kwh": round(sampler.granted_kwh, 1),
            "peak_granted_kw": round(sampler.peak_granted_kw, 1),
            "peak_granted_at_h": round(sampler.peak_granted_at / HOUR_S, 2),
            "drawn_over_granted": round(sampler.energy_kwh / sampler.granted_kwh, 3)
            if sampler.granted_kwh else None,
            "samples_over_cap": len(sampler.over_cap),
            "over_cap_max_kw": round(max(kw for _, kw in sampler.over_cap), 1)
            if sampler.over_cap else None,
        },
        "per_hour": per_hour,
        "controller": {
            "final_state": status.get("packml_state"), "reason": status.get("reason"),
            "locked_out_slots": status.get("locked_out_slots"),
            "faults": events.faults, "aborted": events.aborted, "alarms": events.alarms,
            "abnormal_states": events.states,
            "inhibited_min": {k: round(v / 60, 1) for k, v in
                              sorted(events.inhibit_s.items(), key=lambda kv: -kv[1])},
            "cold_charge_waits": stats_min(cold),
            "cold_rack_pack_min": {k: round(v / 60, 1) for k, v in
                                   sampler.cold_rack_s.items()},
            "grant_changes_journaled": events.kinds["pack_command"],
            "grants_limited_by_cap": events.cap_limited,
            "events": dict(events.kinds),
            "observer_violations": violations,
        },
        "rack_at_end": rack_end,
    }


def print_result(r: dict[str, Any]) -> None:
    run, sw, v, e, c = r["run"], r["swaps"], r["vehicles"], r["energy"], r["controller"]
    print()
    print(f"== a day at the station: profile {run['profile']}"
          + (f" ({run['vehicles_per_day']:g} cars/day expected)" if run["vehicles_per_day"]
             else "")
          + f", {run['hours']:g} h at x{run['speed']:g}, {run['slots']} slots "
          f"({run['rack_packs']} packs + 1 free), power cap {run['power_cap_kw']:g} kW"
          + (", winter day" if run["winter"] else "")
          + f", patience {run['patience_min']:g} min, seed {run['seed']}")
    print(f"   wall {run['wall_s']:.0f} s, CPU {run['cpu_s']:.0f} s, sim lag max "
          f"{run['sim_lag_max_s']} s, {run['machine_cores']} cores")
    if run["daemon_error"]:
        print(f"   !! {run['daemon_error']}")
    print(f"swaps served: {sw['served']} in {run['hours']:g} h = {sw['per_day']:.0f} per day "
          f"(swapd: {sw['swapd_completed']} completed, {sw['swapd_aborted']} aborted, "
          f"{sw['swapd_unfinished']} unfinished); by family {sw['served_by_family']}")
    print(f"   swap time (sim s): first command -> car gone mean "
          f"{sw['first_command_to_gone_s_mean']}, max {sw['first_command_to_gone_s_max']} "
          f"(nominal 136, after the car's 8 s identify); swapd's journal (identify included: "
          f"the wait for a pack on the platform) mean {sw['swap_seconds_mean']}, max "
          f"{sw['swap_seconds_max']}; controller dead time mean "
          f"{sw['controller_dead_time_ms_mean']} ms real per swap; platform occupied "
          f"{sw['platform_occupied_pct']} % of the time")
    print(f"   step means (sim s): {sw['step_seconds_mean']}")
    print(f"cars: {v['came']} came, {v['turned_away']} turned away; at the end "
          f"{v['waiting_at_end']} queued, waiting (swap not begun) for "
          f"{v['waiting_at_end_for_min']} min")

    def w(name: str, s: dict[str, Any]) -> None:
        print(f"   {name:<30} n={s['n']:<4} mean {s['mean_min']} min, p50 {s['p50_min']}, "
              f"p95 {s['p95_min']}, max {s['max_min']}")

    w("wait (came -> swap began)", v["wait"])
    w("  in the queue", v["queue_wait"])
    w("  on the platform (no pack)", v["platform_wait"])
    print(f"energy (ground truth, sum of I x V of rack packs): {e['charged_kwh']:.0f} kWh, "
          f"{e['kwh_per_swap']} kWh per swap, mean {e['mean_kw']} kW, peak {e['peak_kw']} kW "
          f"at {e['peak_at_h']} h")
    print(f"   swapd granted (I limit x V limit): peak {e['peak_granted_kw']} kW at "
          f"{e['peak_granted_at_h']} h, {e['granted_kwh']:.0f} kWh; drawn/granted "
          f"{e['drawn_over_granted']}; samples above the cap: {e['samples_over_cap']}")
    print("per hour:")
    print(f"  {'h':>2} {'exp':>5} {'came':>4} {'srv':>4} {'away':>4} {'wait':>5} {'wmax':>5} "
          f"{'ready@h':>7} {'min':>3} {'max':>3} {'mean':>5} {'kWh':>6} {'peak':>6} "
          f"{'grant':>6}")
    for h in r["per_hour"]:
        def f(x: Any, spec: str = "") -> str:
            return "-" if x is None else format(x, spec)
        print(f"  {h['hour']:>2} {f(h['expected']):>5} {h['came']:>4} {h['served']:>4} "
              f"{h['turned_away']:>4} {f(h['wait_mean_min']):>5} {f(h['wait_max_min']):>5} "
              f"{f(h['ready_at_start']):>7} {f(h['ready_min']):>3} {f(h['ready_max']):>3} "
              f"{f(h['ready_mean']):>5} {h['energy_kwh']:>6.0f} {h['peak_kw']:>6.0f} "
              f"{h['peak_granted_kw']:>6.0f}")
    print(f"controller: final state {c['final_state']} ({c['reason']}); "
          f"{len(c['faults'])} faults, {len(c['aborted'])} aborted swaps, "
          f"{len(c['alarms'])} alarms, locked-out slots {c['locked_out_slots']}")
    for x in c["faults"][:10]:
        print(f"   fault at {x['t_s'] / 3600:.2f} h: {x['code']}: {x['reason']}")
    for x in c["aborted"][:10]:
        print(f"   swap {x['swap_id']} {x['outcome']} at {x['t_s'] / 3600:.2f} h in "
              f"{x['step']}: {x['reason']}")
    for x in c["alarms"][:10]:
        print(f"   alarm at {x['t_s'] / 3600:.2f} h: {x['alarm']}: {x['reason']} "
              f"({x['action']})")
    for x in c["abnormal_states"][:10]:
        print(f"   state {x['state']} at {x['t_s'] / 3600:.2f} h: {x['reason']}")
    print(f"   start inhibited (car on the platform, min): {c['inhibited_min']}")
    cw = c["cold_charge_waits"]
    if cw["n"]:
        print(f"   charging refused for cold: {cw['n']} packs, mean {cw['mean_min']} min, "
              f"max {cw['max_min']} min; rack pack-minutes below 0 C {c['cold_rack_pack_min']}")
    print(f"   grant changes journaled {c['grant_changes_journaled']} "
          f"(limited by the cap: {c['grants_limited_by_cap']}); observer violations "
          f"{len(c['observer_violations'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=24.0, help="simulated hours (default 24)")
    ap.add_argument("--speed", type=float, default=MAX_SPEED,
                    help=f"simulated time x real time (default and most {MAX_SPEED:g})")
    ap.add_argument("--profile", choices=("peaks", "saturated"), default="peaks")
    ap.add_argument("--power-cap-kw", type=float, default=DEFAULT_CAP_KW,
                    help="swapd's [charging] station_power_cap_kw "
                    f"(default swapd's {DEFAULT_CAP_KW:g})")
    ap.add_argument("--vehicles-per-day", type=float, default=400.0,
                    help="peaks: expected cars per day (default 400)")
    ap.add_argument("--patience-min", type=float, default=15.0,
                    help="a queued driver leaves after this long (0: never; default 15)")
    ap.add_argument("--winter", action="store_true",
                    help="a winter day: 40 %% of the packs arrive cold-soaked at -15..-10 C")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, help="write every figure to this file")
    args = ap.parse_args()
    if not 0 < args.speed <= MAX_SPEED:
        ap.error(f"--speed {args.speed:g}: must be > 0 and at most {MAX_SPEED:g}")
    if args.hours <= 0 or args.power_cap_kw <= 0:
        ap.error("--hours and --power-cap-kw must be > 0")
    configure_logging("error", "json")
    try:
        result = asyncio.run(run(args))
    except SpeedRefused as exc:  # the rig's rule: a speed swapd cannot honour
        print(f"day_bench: {exc}", file=sys.stderr)
        sys.exit(2)
    print_result(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
        print(f"written to {args.json}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
