"""Benchmarks for issue 2, printed, never asserted:

1. controller dead time per swap at the default PLC poll period: summed over the steps of a
   swap, the time from the PLC reporting a step done to the next command being written.
   Measured two ways: the daemon's view (reply with "done" received -> write of the next
   command acknowledged, from the journal) and the PLC's view (the simulated PLC marking a
   command done -> the next command arriving; this adds the polling delay, which averages
   half a poll period per step);
2. peak RSS of `swapd` in two-process mode (daemon alone, simulator in another process)
   and of `swapd demo` (daemon and embedded simulator in one process);
3. CPU of `swapd` while the station is idle.

Run: .venv/bin/python bench/swap_bench.py [--swaps 5] [--speed 20]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

from station.logs import configure_logging
from station.rig import ProcessRig, Rig

ROOT = Path(__file__).resolve().parents[1]


async def dead_time(swaps: int, speed: float) -> None:
    ended: list[str] = []
    async with Rig(speed=speed, vehicles=swaps, poll_period_s=None, capture_log=False,
                   name="bench", observer=lambda e: ended.append(e.kind)
                   if e.kind == "swap_ended" else None) as rig:
        deadline = time.monotonic() + swaps * 144 * 3 / speed + 30
        while ended.count("swap_ended") < swaps and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        summary = rig.daemon.journal.summary(speed)
        log = list(rig.sim.command_log)
        poll_period_s = rig.modbus.poll_period_s
    print(f"\n[1] dead time per swap, PLC poll period {poll_period_s * 1000:.0f} ms, "
          f"{summary['swaps_completed']} swaps at speed x{speed:g}")
    d = summary["controller_dead_time_ms"]
    print("    daemon view (done reply received -> next command write acknowledged), ms/swap: "
          + ", ".join(f"{x:.1f}" for x in d))
    print(f"    mean {statistics.fmean(d):.1f} ms, max {max(d):.1f} ms  (target < 100 ms)")
    # PLC view: per swap, sum over consecutive commands (LOCK -> LOWER excluded: the
    # post-swap BMS check sits between them and waits for the car to wake).
    per_swap: list[float] = []
    cur = 0.0
    for prev, nxt in itertools.pairwise(log):
        if prev.name == "RELEASE":
            per_swap.append(cur)
            cur = 0.0
            continue
        if prev.name == "LOCK" or prev.ended_real is None:
            continue
        cur += nxt.taken_real - prev.ended_real
    if log and log[-1].name == "RELEASE":
        per_swap.append(cur)
    print("    PLC view incl. polling delay (done set -> next command received), ms/swap: "
          + ", ".join(f"{x * 1000:.1f}" for x in per_swap))


def _rss_mb(proc: psutil.Process) -> float:
    try:
        return sum(p.memory_info().rss for p in [proc]) / 2**20
    except psutil.Error:
        return 0.0


async def two_process(swaps: int, speed: float, idle_s: float) -> None:
    async with ProcessRig(speed=speed, vehicles=swaps, poll_period_s=None,
                          name="bench") as rig:
        log_path = rig.daemon.log
        assert rig.daemon.proc is not None
        proc = psutil.Process(rig.daemon.proc.pid)
        peak = 0.0
        deadline = time.monotonic() + swaps * 144 * 3 / speed + 30
        while time.monotonic() < deadline:
            peak = max(peak, _rss_mb(proc))
            if log_path.read_text().count('"outcome"') >= swaps:
                break
            await asyncio.sleep(0.1)
        done = log_path.read_text().count('"outcome": "completed"')
        await asyncio.sleep(2.0)
        cpu0 = proc.cpu_times()
        t0 = time.monotonic()
        await asyncio.sleep(idle_s)
        cpu1 = proc.cpu_times()
        idle_cpu = ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / (
            time.monotonic() - t0) * 100
        peak = max(peak, _rss_mb(proc))
        poll_ms = rig.modbus.poll_period_s * 1000
    print(f"\n[2] two processes (simulator + swapd over Modbus TCP and udp_multicast CAN), "
          f"{done}/{swaps} swaps completed")
    print(f"    swapd peak RSS {peak:.1f} MB (target < 120 MB)")
    print(f"[3] swapd CPU while the station is idle: {idle_cpu:.1f} % of one core over "
          f"{idle_s:.0f} s (polling Modbus every {poll_ms:.0f} ms, CAN frames of 13 rack packs)")


def demo_rss(swaps: int, speed: float) -> None:
    bindir = Path(sys.executable).parent
    p = subprocess.Popen([bindir / "swapd", "demo", "--swaps", str(swaps), "--speed",
                          str(speed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = psutil.Process(p.pid)
    peak = 0.0
    while p.poll() is None:
        peak = max(peak, _rss_mb(proc))
        time.sleep(0.05)
    print(f"\n[2b] `swapd demo` (daemon + embedded simulator in one process) peak RSS "
          f"{peak:.1f} MB, exit code {p.returncode}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--swaps", type=int, default=5)
    ap.add_argument("--speed", type=float, default=20.0)
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    args = ap.parse_args()
    configure_logging("warning", "json")
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    asyncio.run(dead_time(args.swaps, args.speed))
    asyncio.run(two_process(min(args.swaps, 3), args.speed, args.idle_seconds))
    demo_rss(min(args.swaps, 3), args.speed)


if __name__ == "__main__":
    main()
