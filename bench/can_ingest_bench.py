"""CAN ingest cost (issue 11), printed, never asserted: swapd's CPU, the frames it loses and
the interlock latency while the pack bus carries extra valid pack frames.

swapd runs as its own process (as on a station) against the simulator in this one: 23
packs (22 rack slots + the car's) over python-can udp_multicast, ~506 frames/s of their
own. A separate sender process adds *valid* pack frames (PackStatus and PackCells, in
turn) at each rate of `--rates` (frames/s; 0 = idle), spread round-robin over the
addresses of the packs on the bus and, with several buses (`--buses`), over the buses.
The extra frames carry the simulator's own readings of each pack (refreshed every 50 ms)
with realistic frame-to-frame variation: current and voltage noise, SOC and cell
temperatures a step below or at the pack's, cell voltages a few mV around it, so that no
two consecutive payloads are alike and nothing trips a plausibility rule (an SOC above the
pack's, a current above its grant, a temperature rising faster than the limit).

For each rate, in one run:
  CPU      swapd's user+system time over the window (/proc/<pid>/stat) in % of one core;
  lost     the frames sent on the bus (the simulator's packs + the extra sender) against
           those swapd's bus counters show received (`swapctl status --json`: received
           less its own frames echoed back), per bus; read while the bus is quiet, so no
           frame is in flight at either end. And the kernel's drop count of swapd's CAN
           sockets (/proc/net/udp): the datagrams a full receive queue refused;
  latency  CAN over-temperature -> stop request at the simulated PLC, p50/p99 over
           `--trials` trials with the same extra load on (bench/latency_bench.py's method:
           a PackStatus with MaxCellTemp 75 C from the car's pack during POSITION).

Run: .venv/bin/python bench/can_ingest_bench.py [--rates 0,2000,4000,8000] [--window 10]
     [--trials 30] [--buses 1|2|3] [--profile FILE.svg (py-spy on swapd at the highest
     rate; PY_SPY=path if py-spy is not on PATH; a .txt name: collapsed stacks)]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import can
from latency_bench import StopProbe, hot_frame, pct, ready_in_position, recover

from drivers.bms.protocol import VEHICLE_PACK_SA, PackProtocol, rack_sa
from sim_hw.can_packs import pack_signals
from sim_hw.config import CanBusConfig, CanConfig, SimConfig
from sim_hw.station_sim import SimStation
from station.rig import ProcessRig

SLOTS = 23  # 22 packs in the rack (the simulator leaves the last slot free) + the car's
ADDRESSES = (VEHICLE_PACK_SA, *(rack_sa(n) for n in range(1, SLOTS + 1)))
# per address in the shared table: present, then the PackStatus and PackCells readings
FIELDS = ("present", "SOC", "PackVoltage", "PackCurrent", "MinCellTemp", "MaxCellTemp",
          "MaxCellVoltage", "MinCellVoltage", "InsulationResistance", "faults", "PackState")
REFRESH_S = 0.05  # how often this process copies the simulator's readings for the sender
SENDER_TICK_S = 0.002  # the sender's pace: small bursts, as many nodes on a bus make
QUIET_S = 0.015  # a snapshot is taken this long after the simulator's last frame


# ---- the extra sender (its own process) ----------------------------------------------

def _fault_bits(proto: PackProtocol) -> list[str]:
    return [s.name for s in proto.message("PackCells").signals
            if s.name.startswith(("Fault", "Thermal"))]


def varied(name: str, base: dict[str, float], rnd: random.Random,
           bits: list[str]) -> dict[str, Any]:
    """One frame's signals around a pack's real readings. Never above what could trip a
    rule: SOC and temperatures at or one step below the pack's (a step below over a rise
    window is far under the rise limit), current within +-1 A (the overcurrent margin is
    5 A), cell voltages +-3 mV with the lowest never above the highest."""
    if name == "PackStatus":
        hi = base["MaxCellTemp"] - rnd.choice((0, 1))
        return {"SOC": max(0.0, round(base["SOC"] - rnd.choice((0.0, 0.1)), 1)),
                "PackVoltage": max(0.0, round(base["PackVoltage"] + rnd.uniform(-0.5, 0.5), 1)),
                "PackCurrent": round(base["PackCurrent"] + rnd.uniform(-1.0, 1.0), 1),
                "MinCellTemp": max(-40, min(hi, base["MinCellTemp"] - rnd.choice((0, 1, 2)))),
                "MaxCellTemp": max(-40, hi)}
    vmax = max(0.0, round(base["MaxCellVoltage"] + rnd.uniform(-0.003, 0.003), 3))
    vmin = max(0.0, min(vmax, round(base["MinCellVoltage"] + rnd.uniform(-0.003, 0.003), 3)))
    faults = int(base["faults"])
    out: dict[str, Any] = {"MaxCellVoltage": vmax, "MinCellVoltage": vmin,
                           "InsulationResistance": max(0, min(64255, round(
                               base["InsulationResistance"] * rnd.uniform(0.98, 1.02)))),
                           "PackState": int(base["PackState"])}
    out.update({bit: (faults >> i) & 1 for i, bit in enumerate(bits)})
    return out


def sender_process(routes: dict[int, tuple[str, int]], table: Any, rate: Any, stop: Any,
                   sent: Any, idle: Any) -> None:
    """Valid pack frames at `rate` frames/s (read every tick), round-robin over the packs
    present in `table`, each to the bus (group, port) its address is served by. `sent`
    counts what went out; `idle` is set while the rate is 0 and nothing is being sent."""
    proto = PackProtocol()
    bits = _fault_bits(proto)
    buses = {where: can.Bus(interface="udp_multicast", channel=where[0], port=where[1])
             for where in set(routes.values())}
    rnd = random.Random(11)
    nf = len(FIELDS)
    names = ("PackStatus", "PackCells")
    credit, n, k = 0.0, 0, 0
    last = time.monotonic()
    try:
        while not stop.is_set():
            now = time.monotonic()
            fps = rate.value
            if fps <= 0:
                credit, last = 0.0, now
                idle.set()
                time.sleep(SENDER_TICK_S)
                continue
            idle.clear()
            credit = min(credit + fps * (now - last), fps * 0.05)  # no catch-up bursts
            last = now
            present = [i for i in range(len(ADDRESSES)) if table[i * nf]]
            burst = int(credit)
            credit -= burst
            for _ in range(burst if present else 0):
                i = present[k % len(present)]
                name = names[(k // len(present)) % 2]
                k += 1
                base = {f: table[i * nf + j] for j, f in enumerate(FIELDS)}
                can_id, data = proto.encode(name, varied(name, base, rnd, bits),
                                            sa=ADDRESSES[i])
                buses[routes[ADDRESSES[i]]].send(
                    can.Message(arbitration_id=can_id, data=data, is_extended_id=True))
                n += 1
                sent.value = n
            time.sleep(max(0.0, SENDER_TICK_S - (time.monotonic() - now)))
    finally:
        for bus in buses.values():
            bus.shutdown()


# ---- this process: the simulator's readings, counters, snapshots -----------------------

async def refresh_table(sim: SimStation, table: Any) -> None:
    """Copy each pack's current readings into the sender's table, every REFRESH_S."""
    nf = len(FIELDS)
    proto = sim.can.protocol
    bits = _fault_bits(proto)
    while True:
        packs = sim.model.can_packs()
        for i, sa in enumerate(ADDRESSES):
            pack = packs.get(sa)
            if pack is None:
                table[i * nf] = 0
                continue
            sig = pack_signals(pack, proto)
            values = {**sig["PackStatus"], **sig["PackCells"]}
            values["faults"] = sum(int(values[b]) << j for j, b in enumerate(bits))
            for j, f in enumerate(FIELDS[1:], start=1):
                table[i * nf + j] = float(values[f])
            table[i * nf] = 1
        await asyncio.sleep(REFRESH_S)


class SimSends:
    """The simulator's CAN frames: counted by CanPacks.sent; when the last went out."""

    def __init__(self, sim: SimStation) -> None:
        self.sim = sim
        self.last = time.monotonic()
        send = sim.can._send_frame

        def timed(*a: Any, **kw: Any) -> None:
            self.last = time.monotonic()
            send(*a, **kw)

        sim.can._send_frame = timed  # type: ignore[method-assign]


def can_counters(status: dict[str, Any]) -> dict[str, dict[str, int]] | None:
    """Per-bus frame counters from swapd's status: every dict under status["can"] (or
    status["can_buses"]) that has a "received" count, by bus name. None when swapd's status
    has no CAN counters."""
    found: dict[str, dict[str, int]] = {}

    def walk(node: Any, name: str) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("received"), int):
                found[str(node.get("name", name))] = node
                return
            for k, v in node.items():
                walk(v, str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{name}[{i}]")

    for key in ("can", "can_buses", "buses"):
        if key in status:
            walk(status[key], key)
    return found or None


def heard(c: dict[str, Any]) -> int:
    """Frames a bus received from other nodes: swapd's own frames come back over
    udp_multicast and are counted received, then dropped as its own ("own", or within
    "ignored" with frames for another destination, which no node here sends)."""
    own = c["own"] if "own" in c else c.get("ignored", 0)
    return int(c["received"]) - int(own)


def socket_inodes(pid: int) -> set[str]:
    out = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            link = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(link[8:-1])
    return out


def kernel_drops(pid: int, ports: set[int]) -> int:
    """Datagrams the kernel dropped at swapd's UDP sockets on the CAN ports (a full
    receive buffer): the last column of /proc/net/udp, per socket."""
    inodes = socket_inodes(pid)
    total = 0
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            cols = line.split()
            port = int(cols[1].rsplit(":", 1)[1], 16)
            if port in ports and cols[9] in inodes:
                total += int(cols[-1])
    return total


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Snapshot:
    t: float
    cpu_s: float
    sim_sent: int
    extra_sent: int
    counters: dict[str, dict[str, int]] | None
    drops: int


@dataclass
class RateResult:
    rate: int
    achieved: float
    cpu_pct: float
    expected: int
    lost: int | None
    per_bus: dict[str, int] | None
    drops: int
    latency: list[float]
    failures: list[str]


# ---- the run ----------------------------------------------------------------------------

class IngestRig(ProcessRig):
    """ProcessRig whose simulator gets its 23 slots before its bus layout is checked
    against them (the rig checks the layout against the default 13 slots first)."""

    def build_sim_config(self) -> SimConfig:
        buses, self.can_buses = self.can_buses, {}
        try:
            cfg = super().build_sim_config()
        finally:
            self.can_buses = buses
        if not buses:
            return cfg
        can = CanConfig(buses=[
            CanBusConfig(name=bus, interface=self.can_interface, channel=channel,
                         udp_port=port, locations=buses[bus])
            for bus, (channel, port) in self.bus_channels.items()])
        return SimConfig.model_validate({**cfg.model_dump(), "can": can.model_dump()})


# --buses: how the pack locations are wired (swapd's and the simulator's [[can.buses]])
LAYOUTS: dict[int, dict[str, list[str]] | None] = {
    1: None,  # the single-bus shorthand: one bus "pack" for every location
    2: {"bay": ["bay"], "rack": [f"slot:1-{SLOTS}"]},
    3: {"bay": ["bay"], "rack_a": ["slot:1-11"], "rack_b": [f"slot:12-{SLOTS}"]},
}


async def main(rates: list[int], window: float, trials: int, profile: str | None,
               buses: int = 1) -> None:
    proto = PackProtocol()
    async with IngestRig(speed=1.0, vehicles=1, sim={"station": {"slots": SLOTS}},
                         poll_period_s=0.02, start_daemon=False, name="ingest",
                         log_level="warning", can_buses=LAYOUTS[buses]) as rig:
        sim, daemon = rig.sim, rig.daemon
        routes = bus_routes(rig)
        ports = {port for _, port in routes.values()}
        probe = StopProbe(sim)
        sends = SimSends(sim)
        table = multiprocessing.Array("d", len(ADDRESSES) * len(FIELDS), lock=False)
        rate = multiprocessing.Value("d", 0.0, lock=False)
        sent = multiprocessing.Value("q", 0, lock=False)
        stop, idle = multiprocessing.Event(), multiprocessing.Event()
        sender = multiprocessing.Process(target=sender_process,
                                         args=(routes, table, rate, stop, sent, idle))
        group, port = routes[VEHICLE_PACK_SA]
        injector = can.Bus(interface="udp_multicast", channel=group, port=port)
        refresher = asyncio.create_task(refresh_table(sim, table))
        sender.start()
        daemon.start()
        assert daemon.proc is not None
        pid = daemon.proc.pid
        results: list[RateResult] = []
        try:
            await daemon.status()
            await ready_in_position(daemon)  # the station up, the packs heard, a swap on
            for r in rates:
                a = await snapshot(daemon, pid, ports, sends, sent, idle, rate)
                rate.value = float(r)
                if profile and r == max(rates):
                    await profile_swapd(pid, profile, window)
                else:
                    await asyncio.sleep(window)
                rate.value = 0.0
                b = await snapshot(daemon, pid, ports, sends, sent, idle, rate)
                res = compare(r, a, b)
                rate.value = float(r)
                res.latency, res.failures = await latency_trials(
                    daemon, sim, probe, injector, proto, trials)
                rate.value = 0.0
                results.append(res)
                report(res)
        finally:
            stop.set()
            sender.join(5)
            refresher.cancel()
            injector.shutdown()
            daemon.terminate()
    summary(results, window, buses)


def bus_routes(rig: IngestRig) -> dict[int, tuple[str, int]]:
    """Pack address -> the (group, port) of the bus serving its location. One bus unless
    swapd's configuration lists several (`[[can.buses]]`)."""
    can_cfg = rig.config.can
    if not hasattr(can_cfg, "bus_list"):
        assert rig.can_port is not None
        return {sa: (rig.channel, rig.can_port) for sa in ADDRESSES}
    routes: dict[int, tuple[str, int]] = {}
    for bus in can_cfg.bus_list():
        served = can_cfg.served_slots()[bus.name]
        for slot in served:
            sa = VEHICLE_PACK_SA if slot == 0 else rack_sa(slot)
            routes[sa] = (bus.channel, bus.udp_port or rig.can_port or 43113)
    for sa in ADDRESSES:  # the shorthand serves "every location"
        routes.setdefault(sa, next(iter(routes.values())))
    return routes


async def snapshot(daemon: Any, pid: int, ports: set[int], sends: SimSends, sent: Any,
                   idle: Any, rate: Any) -> Snapshot:
    """Counters on both sides while nothing is in flight: the extra sender idle, the
    simulator's last frame QUIET_S old, and the same simulator count before and after
    swapd's status was read."""
    assert rate.value == 0
    while not idle.is_set():
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.1)  # swapd drains what the sender sent last
    for _ in range(200):
        wait = sends.last + QUIET_S - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
            continue
        before = sends.sim.can.sent
        status = await daemon.status()
        snap = Snapshot(time.monotonic(), cpu_seconds(pid), before, sent.value,
                        can_counters(status), kernel_drops(pid, ports))
        if sends.sim.can.sent == before:
            return snap
    raise RuntimeError("no quiet moment on the bus for a snapshot")


def compare(r: int, a: Snapshot, b: Snapshot) -> RateResult:
    dt = b.t - a.t
    extra = b.extra_sent - a.extra_sent
    expected = (b.sim_sent - a.sim_sent) + extra
    lost = per_bus = None
    if a.counters is not None and b.counters is not None:
        per_bus = {name: heard(c) - heard(a.counters[name])
                   for name, c in b.counters.items() if name in a.counters}
        lost = expected - sum(per_bus.values())
    return RateResult(r, extra / dt, (b.cpu_s - a.cpu_s) / dt * 100, expected, lost, per_bus,
                      b.drops - a.drops, [], [])


async def latency_trials(daemon: Any, sim: SimStation, probe: StopProbe, injector: can.BusABC,
                         proto: PackProtocol, trials: int) -> tuple[list[float], list[str]]:
    """latency_bench's overtemp_can trials: in POSITION, a hot PackStatus from the car's
    pack; the time until stop_request reaches the simulated PLC."""
    xs: list[float] = []
    failures: list[str] = []
    for _ in range(trials):
        await ready_in_position(daemon)
        await asyncio.sleep(random.uniform(0.0, 0.05))
        probe.t_stop = None
        ident, data = hot_frame(proto, sim)
        t0 = time.monotonic()
        injector.send(can.Message(arbitration_id=ident, data=data, is_extended_id=True))
        while probe.t_stop is None and time.monotonic() - t0 < 5.0:
            await asyncio.sleep(0.0005)
        if probe.t_stop is None:
            failures.append(f"no stop within 5 s; daemon {await daemon.status()}")
        else:
            xs.append((probe.t_stop - t0) * 1000)
        await recover(daemon)
    return xs, failures


async def profile_swapd(pid: int, out: str, seconds: float) -> None:
    """py-spy (PATH or $PY_SPY) records swapd for the window: an SVG flame graph, or with
    a .txt name its collapsed stacks."""
    exe = os.environ.get("PY_SPY") or shutil.which("py-spy")
    if exe is None:
        print("profile: no py-spy (pip install py-spy, or set PY_SPY); window not profiled")
        await asyncio.sleep(seconds)
        return
    fmt = "raw" if out.endswith(".txt") else "flamegraph"
    proc = await asyncio.to_thread(
        subprocess.run, [exe, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "200",
                         "-f", fmt, "-o", out, "--nonblocking"], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"profile: py-spy failed: {proc.stderr.strip()[-300:]}")
    else:
        print(f"profile: {out}")


def report(r: RateResult) -> None:
    lat = (f"p50 {statistics.median(r.latency):5.2f} ms  p99 {pct(r.latency, 99):5.2f} ms  "
           f"max {max(r.latency):5.2f} ms (n={len(r.latency)})" if r.latency else "no trial")
    lost = "n/a (swapd's status has no CAN counters)" if r.lost is None else f"{r.lost}"
    buses = "" if not r.per_bus or len(r.per_bus) < 2 else \
        " [" + ", ".join(f"{k} {v}" for k, v in r.per_bus.items()) + "]"
    print(f"extra {r.rate:>5} frames/s (sent {r.achieved:6.0f}/s): swapd CPU {r.cpu_pct:5.1f} % "
          f"of one core; frames {r.expected} sent, lost {lost}{buses}, kernel drops {r.drops}; "
          f"overtemp_can {lat}", flush=True)
    for f in r.failures:
        print("  FAILED TRIAL:", f)


def summary(results: list[RateResult], window: float, buses: int) -> None:
    print(f"\n{SLOTS} packs (~506 frames/s of their own) over udp_multicast on {buses} "
          f"bus{'es' if buses > 1 else ''}, window "
          f"{window:g} s per rate; load average {os.getloadavg()[0]:.2f} at the end; "
          f"{os.cpu_count()} CPUs")
    base = next((r for r in results if r.rate == 0), None)
    for r in results:
        if base is not None and r.rate > 0:
            per_k = (r.cpu_pct - base.cpu_pct) / (r.achieved / 1000) if r.achieved else 0.0
            print(f"  {r.rate:>5}/s: {r.cpu_pct:5.1f} % ({per_k:+.2f} % per 1k frames/s over "
                  f"idle), lost {r.lost if r.lost is not None else 'n/a'}, "
                  f"kernel drops {r.drops}")


def parse_rates(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", type=parse_rates, default=[0, 2000, 4000, 8000],
                    help="extra frames/s, comma-separated (default 0,2000,4000,8000)")
    ap.add_argument("--window", type=float, default=10.0, help="seconds of CPU per rate")
    ap.add_argument("--trials", type=int, default=30, help="latency trials per rate")
    ap.add_argument("--profile", default=None,
                    help="py-spy record swapd during the highest rate's window to this file")
    ap.add_argument("--buses", type=int, choices=sorted(LAYOUTS), default=1,
                    help="1: one bus; 2: the bay's and the rack's; 3: the bay's and two "
                    "rack halves (frames go to the bus of their pack's location)")
    a = ap.parse_args()
    for noisy in ("pymodbus", "asyncua"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    asyncio.run(main(a.rates, a.window, a.trials, a.profile, a.buses))
