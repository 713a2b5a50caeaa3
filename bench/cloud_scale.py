"""Load test of the cloud link (issue 8, "Scale"), printed, never asserted:

N stations' real CloudLinks (station/cloud/link.py), each with its own journal, fed
synthetic events (journaled, then notify(), like the daemon's event bus) at --rate events/s
per station, the link's own rack every rack_period_s (10 s) and state on change, against
one mosquitto on loopback (plain MQTT). The back end is a subscriber in a separate process
(QoS 1 on +/events, +/rack, +/status, +/state): it deduplicates by event id, checks the
per-station seq has no gap, and measures end to end from the event's creation (its wall
time, put in the event's data just before it is journaled) to its receipt.

The stations run in --procs processes (default 1: one process and one core drive 200
links; see docs/scaling.md for the measured figures).

Journals: each real station has its own disk and fsyncs only its own journal; 200 journals
fsyncing on this one shared disk would measure the disk, not the link, so by default the
bench's journals use synchronous=NORMAL (WAL: no fsync per commit). --sync full restores
the daemon's setting (every commit and every outbox cursor write fsynced).

Run: .venv/bin/python bench/cloud_scale.py [--stations 200] [--seconds 60] [--rate 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from paho.mqtt import client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from sim_hw.broker import Broker  # noqa: E402
from station.cloud.link import CloudLink  # noqa: E402
from station.commands import CommandRequest, CommandResult  # noqa: E402
from station.config import StationConfig  # noqa: E402
from station.events import Event, Inhibit  # noqa: E402
from station.journal import Journal  # noqa: E402
from station.logs import configure_logging  # noqa: E402

PREFIX = "swapnet/v1"
SLOTS = 23  # the simulated station's rack


@dataclass(frozen=True, kw_only=True)
class Stamped(Inhibit):
    """A synthetic event of a real kind (an inhibit), carrying when it was made (wall clock,
    full precision: `at` has milliseconds only) so the back end can measure end to end."""

    wall: float
    n: int


def station_id(i: int) -> str:
    return f"BENCH-{i:04d}"


def cloud_cfg(sid: str, host: str, port: int, keys_dir: Path, **more: Any) -> StationConfig:
    cloud: dict[str, Any] = {"enabled": True, "host": host, "port": port,
                             "trusted_keys_dir": str(keys_dir), "reconnect_min_s": 0.2,
                             "reconnect_max_s": 2.0}
    cloud.update(more)
    return StationConfig.model_validate({"station": {"id": sid}, "cloud": cloud})


def keys_dir(base: Path) -> Path:
    """An empty trusted-keys directory (no command is sent in these benches)."""
    d = base / "keys"
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o755)
    return d


class FakeStation:
    """What the daemon hands the link: the core's status and the rack, changing like a
    station's (SOC creeping up while charging; the inhibit reason changing now and then)."""

    def __init__(self, index: int) -> None:
        self.t0 = time.monotonic()
        self.reason: str | None = None
        self.base = [20.0 + (index * 7 + s * 13) % 70 for s in range(SLOTS)]

    def status(self) -> dict[str, Any]:
        return {"packml_state": "Idle", "packml_state_number": 4, "step": None,
                "swap_id": None, "active_interlocks": [], "reason": self.reason,
                "start_inhibited": self.reason, "locked_out_slots": {},
                "power_cap_kw": 150.0, "authorisation_version": None}

    def rack(self) -> dict[str, Any]:
        gain = (time.monotonic() - self.t0) * 0.02  # %/s of a 50 kW charge on a 100 kWh pack
        slots: list[dict[str, Any]] = []
        for s, base in enumerate(self.base, start=1):
            occupied = s != SLOTS
            soc = min(100.0, base + gain)
            charging = occupied and soc < 95.0
            slots.append({
                "slot": s, "occupied": occupied, "serial": 10_000 + s if occupied else None,
                "chemistry": "NMC" if occupied else None, "family": 25 if occupied else None,
                "soc_pct": round(soc, 1) if occupied else None,
                "soh_pct": 96.0 if occupied else None,
                "min_cell_temp_c": 24.0 if occupied else None,
                "max_cell_temp_c": 28.5 if occupied else None,
                "state": ("charging" if charging else "ready") if occupied else "empty",
                "granted_power_kw": 6.5 if charging else 0.0, "reason": None,
                "reserved_for": None})
        return {"power_kw": round(sum(x["granted_power_kw"] for x in slots), 1),
                "power_cap_kw": 150.0, "slots": slots}


async def _no_submit(req: CommandRequest) -> CommandResult:
    raise RuntimeError("no commands in the load test")


class BenchStation:
    """One station: a journal (written by the feeder), the link reading it."""

    def __init__(self, index: int, base: Path, host: str, port: int, *, sync: str = "full",
                 separate_writer: bool = True, **cloud: Any) -> None:
        self.sid = station_id(index)
        self.fake = FakeStation(index)
        path = base / self.sid / "journal.db"
        self.journal = Journal(path)
        # the feeder's connection (the daemon's scan) and the link's: both on the same file
        self.writer = Journal(path) if separate_writer else self.journal
        for j in {id(self.journal): self.journal, id(self.writer): self.writer}.values():
            j.db.execute(f"PRAGMA synchronous={sync.upper()}")
        self.link = CloudLink(
            cloud_cfg(self.sid, host, port, keys_dir(base), **cloud), self.journal,
            status=self.fake.status, rack=self.fake.rack, submit=_no_submit,
            record=self._record, contracts={"plc_contract": "1", "can_protocol": "1"},
            software_version="bench", started_wall=time.time())
        self.journaled = 0
        self.last_id = 0
        self.record_s: list[float] = []

    async def _record(self, events: list[Event]) -> None:
        self.writer.record(events)
        self.link.notify()

    def emit(self, n: int, reason_every: int = 10) -> None:
        """One synthetic event, journaled (its own commit, like a scan's decision), then the
        link told."""
        if n % reason_every == 0:  # the state changes now and then
            self.fake.reason = None if self.fake.reason else f"bench inhibit {n}"
        t = time.perf_counter()
        ids = self.writer.record([Stamped(t=time.monotonic(), reason=f"synthetic {n}",
                                          vehicle_token=n, wall=time.time(), n=n)])
        self.record_s.append(time.perf_counter() - t)
        self.journaled += 1
        self.last_id = ids[-1]
        self.link.notify()

    def close(self) -> None:
        if self.writer is not self.journal:
            self.writer.close()
        self.journal.close()


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return math.nan
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


# ---- the back end: a subscriber in its own process ------------------------------------
def subscriber_main(host: str, port: int, conn: Connection, persistent: bool = False) -> None:
    """Counts, deduplicates and times what the stations publish. Commands on conn:
    ("finish", expected_unique_events, quiet_s, deadline_s) -> sends the result dict.
    persistent: an MQTT 5 session kept for an hour, reconnecting within a second, so a broker
    restart loses the back end nothing (the replay benchmark)."""
    lock = threading.Lock()
    events: dict[str, dict[int, int]] = {}  # station -> event_id -> seq
    latencies: list[float] = []
    dups = 0
    racks: dict[str, int] = {}
    states: dict[str, int] = {}
    births: dict[str, int] = {}
    wills: dict[str, int] = {}
    bytes_by_leaf: dict[str, list[int]] = {}
    last_rx = [time.monotonic()]
    unique = [0]
    first_last: list[float] = []

    def on_message(_c: Any, _u: Any, m: paho.MQTTMessage) -> None:
        nonlocal dups
        now = time.time()
        _, _, sid, leaf = m.topic.rsplit("/", 3)
        body = json.loads(m.payload)
        with lock:
            last_rx[0] = time.monotonic()
            b = bytes_by_leaf.setdefault(leaf, [0, 0])
            b[0] += 1
            b[1] += len(m.payload)
            if leaf == "events":
                seen = events.setdefault(sid, {})
                eid = int(body["event_id"])
                if eid in seen:
                    dups += 1
                    return
                seen[eid] = int(body["seq"])
                unique[0] += 1
                if not first_last:
                    first_last.append(now)
                first_last[1:] = [now]
                wall = body["data"].get("wall")
                if wall is not None:
                    latencies.append(now - float(wall))
            elif leaf == "rack":
                racks[sid] = racks.get(sid, 0) + 1
            elif leaf == "state":
                states[sid] = states.get(sid, 0) + 1
            elif leaf == "status":
                d = births if body.get("online") else wills
                d[sid] = d.get(sid, 0) + 1

    def on_connect(c: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        c.subscribe([(f"{PREFIX}/+/{leaf}", 1) for leaf in ("events", "rack", "status",
                                                                "state")])

    ready = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-backend",
                         protocol=paho.MQTTv5)
    client.on_message = on_message
    client.on_connect = on_connect
    client.on_subscribe = lambda *_a: ready.set()
    props = None
    if persistent:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        client.reconnect_delay_set(1, 1)
    client.connect(host, port, keepalive=60, clean_start=paho.MQTT_CLEAN_START_FIRST_ONLY,
                   properties=props)
    client.loop_start()
    if not ready.wait(15):
        conn.send(("error", "the subscriber did not get its SUBACK"))
        return
    conn.send(("ready", os.getpid()))
    cmd = conn.recv()
    _, expected, quiet_s, deadline_s = cmd
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        with lock:
            if unique[0] >= expected or time.monotonic() - last_rx[0] > quiet_s:
                break
        time.sleep(0.05)
    client.loop_stop()
    with lock:
        conn.send(("result", {
            "seqs": {sid: sorted(seen.items()) for sid, seen in events.items()},
            "unique": unique[0], "duplicates": dups, "latencies": latencies,
            "racks": racks, "states": states, "births": births, "wills": wills,
            "bytes_by_leaf": bytes_by_leaf, "first_last_rx": first_last,
            "cpu_s": sum(psutil.Process().cpu_times()[:2]),
        }))


class Subscriber:
    """The back end process, started and waited for."""

    def __init__(self, host: str, port: int, persistent: bool = False) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=subscriber_main, args=(host, port, child, persistent),
                                name="bench-backend", daemon=True)
        self.proc.start()
        tag, info = self.conn.recv()
        if tag != "ready":
            raise RuntimeError(info)
        self.pid = int(info)

    def finish(self, expected: int, quiet_s: float = 3.0, deadline_s: float = 60.0
               ) -> dict[str, Any]:
        self.conn.send(("finish", expected, quiet_s, deadline_s))
        _tag, result = self.conn.recv()
        self.proc.join(10)
        return dict(result)

    def close(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


# ---- the stations: one or more processes of links -------------------------------------
def group_main(first: int, count: int, total: int, host: str, port: int, sync: str,
               conn: Connection) -> None:
    configure_logging("error", "json", stream=sys.stderr)
    asyncio.run(_group(first, count, total, host, port, sync, conn))


async def _recv(conn: Connection) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, conn.recv)


async def _group(first: int, count: int, total: int, host: str, port: int, sync: str,
                 conn: Connection) -> None:
    with tempfile.TemporaryDirectory(prefix="cloud-scale-") as tmp:
        stations = [BenchStation(first + i, Path(tmp), host, port, sync=sync)
                    for i in range(count)]
        tasks = [asyncio.create_task(s.link.run()) for s in stations]
        try:
            deadline = time.monotonic() + 60
            while not all(s.link.stats.connected for s in stations):
                if time.monotonic() > deadline:
                    raise RuntimeError("the links did not all connect within 60 s")
                await asyncio.sleep(0.05)
            conn.send(("ready", os.getpid()))
            _, seconds, rate, t0_wall = await _recv(conn)
            result = await _feed(stations, seconds, rate, t0_wall, first, total)
            conn.send(("done", result))
            await _recv(conn)  # stop
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for s in stations:
                s.close()


async def _feed(stations: list[BenchStation], seconds: float, rate: float, t0_wall: float,
                first: int, total: int) -> dict[str, Any]:
    """Every station emits `rate` events/s; the N stations' events spread evenly over each
    period (this group's share of the whole fleet's schedule)."""
    proc = psutil.Process()
    loop_t0 = time.monotonic() + max(0.0, t0_wall - time.time())
    await asyncio.sleep(max(0.0, loop_t0 - time.monotonic()))
    cpu0 = sum(proc.cpu_times()[:2])
    n = len(stations)
    period = 1.0 / rate
    ticks = int(seconds * rate)
    slip: list[float] = []
    for k in range(ticks):
        for i, s in enumerate(stations):
            due = loop_t0 + k * period + (first + i) * period / total
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            slip.append(max(0.0, -delay))
            s.emit(k + 1)
    fed_s = time.monotonic() - loop_t0
    cpu_feed = sum(proc.cpu_times()[:2]) - cpu0
    # drained: the broker has acknowledged every event journaled
    drain_t0 = time.monotonic()
    while any(s.link.stats.acked_event_id < s.last_id for s in stations):
        if time.monotonic() - drain_t0 > 60:
            break
        await asyncio.sleep(0.05)
    drain_s = time.monotonic() - drain_t0
    record_s = [x for s in stations for x in s.record_s]
    return {
        "stations": n, "journaled": {s.sid: s.journaled for s in stations},
        "unacked": {s.sid: s.last_id - s.link.stats.acked_event_id for s in stations},
        "sessions": sum(s.link.stats.sessions for s in stations),
        "errors": [s.link.stats.last_error for s in stations if s.link.stats.last_error],
        "fed_s": fed_s, "cpu_s": cpu_feed, "drain_s": drain_s,
        "slip_p99": pct(slip, 99), "slip_max": max(slip, default=0.0),
        "record_ms_mean": statistics.fmean(record_s) * 1000 if record_s else math.nan,
        "rss_mb": proc.memory_info().rss / 2**20, "ticks": ticks * n,
    }


@dataclass
class ScaleResult:
    stations: int
    seconds: float
    rate: float
    procs: int
    journaled: dict[str, int]
    backend: dict[str, Any]
    groups: list[dict[str, Any]]
    broker_cpu_s: float
    wall_s: float
    problems: list[str] = field(default_factory=list)

    @property
    def delivered(self) -> int:
        return int(self.backend["unique"])

    @property
    def total_journaled(self) -> int:
        return sum(self.journaled.values())

    def gaps(self) -> dict[str, str]:
        """Stations whose events after dedup are not exactly event ids 1..n with seq 1..n."""
        out = {}
        for sid, n in self.journaled.items():
            got = self.backend["seqs"].get(sid, [])
            ids = [e for e, _ in got]
            seqs = sorted(s for _, s in got)
            if ids != list(range(1, n + 1)) or seqs != list(range(1, n + 1)):
                missing = sorted(set(range(1, n + 1)) - set(ids))
                out[sid] = f"{len(ids)}/{n} events, missing ids {missing[:5]}"
        return out


def run_scale(stations: int = 200, seconds: float = 60.0, rate: float = 1.0, procs: int = 1,
              sync: str = "normal", workdir: Path | None = None,
              progress: Callable[[str], None] = lambda _s: None) -> ScaleResult:
    with contextlib.ExitStack() as stack:
        base = Path(workdir) if workdir else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="cloud-scale-broker-")))
        broker = stack.enter_context(Broker(base / "broker", tls=False, persistence=False))
        progress(f"mosquitto pid {broker.pid} on {broker.url}")
        sub = Subscriber(broker.host, broker.port)
        stack.callback(sub.close)
        ctx = mp.get_context("spawn")
        groups: list[tuple[Any, Connection]] = []
        per = math.ceil(stations / procs)
        for g in range(procs):
            first, count = g * per, min(per, stations - g * per)
            if count <= 0:
                break
            parent, child = ctx.Pipe()
            p = ctx.Process(target=group_main, args=(first, count, stations, broker.host,
                                                     broker.port, sync, child),
                            name=f"stations-{g}", daemon=True)
            p.start()
            stack.callback(_kill, p)
            groups.append((p, parent))
        for _p, c in groups:
            tag, info = c.recv()
            if tag != "ready":
                raise RuntimeError(info)
        progress(f"{stations} links connected in {len(groups)} process(es)")
        bproc = psutil.Process(broker.pid)
        bcpu0 = sum(bproc.cpu_times()[:2])
        t0 = time.time() + 0.5
        for _p, c in groups:
            c.send(("go", seconds, rate, t0))
        results = [c.recv()[1] for _p, c in groups]
        journaled = {k: v for r in results for k, v in r["journaled"].items()}
        backend = sub.finish(sum(journaled.values()), quiet_s=3.0, deadline_s=60.0)
        wall_s = time.time() - t0
        bcpu = sum(bproc.cpu_times()[:2]) - bcpu0
        for p, c in groups:
            c.send(("stop",))
            p.join(30)
        return ScaleResult(stations, seconds, rate, len(groups), journaled, backend, results,
                           bcpu, wall_s)


def _kill(p: Any) -> None:
    if p.is_alive():
        p.kill()
        p.join()


def report(r: ScaleResult) -> None:
    b = r.backend
    lat = [x * 1000 for x in b["latencies"]]
    lost = r.total_journaled - r.delivered
    fed = max(g["fed_s"] for g in r.groups)
    print(f"\ncloud link load test: {r.stations} stations in {r.procs} process(es), "
          f"{r.rate:g} event/s each, {r.seconds:g} s, rack every 10 s, one mosquitto "
          "(loopback, plain), back end in its own process")
    print(f"  events journaled  {r.total_journaled}  ({r.total_journaled / fed:.1f}/s over "
          f"{fed:.1f} s)")
    first_last = b["first_last_rx"]
    span = (first_last[-1] - first_last[0]) if len(first_last) == 2 else math.nan
    print(f"  delivered (dedup) {r.delivered}  ({r.delivered / span:.1f}/s at the back end)")
    print(f"  losses            {lost}   duplicates {b['duplicates']}   stations with a gap "
          f"{len(r.gaps())}")
    print(f"  end to end (created -> received, incl. the journal commit) ms: "
          f"p50 {pct(lat, 50):.1f}  p99 {pct(lat, 99):.1f}  max {max(lat, default=math.nan):.1f}")
    racks = sum(b["racks"].values())
    print(f"  rack messages     {racks}  ({racks / r.stations / fed * 10:.2f} per station per "
          f"10 s)   state {sum(b['states'].values())}   births "
          f"{sum(b['births'].values())}/{r.stations}")
    for leaf, (n, size) in sorted(b["bytes_by_leaf"].items()):
        print(f"  {leaf:8s} {n:7d} msgs, {size / max(n, 1):6.0f} bytes each (payload)")
    for i, g in enumerate(r.groups):
        print(f"  station process {i}: {g['stations']} links, CPU {g['cpu_s'] / g['fed_s']:.1%}"
              f" of one core while feeding ({g['cpu_s']:.1f} s in {g['fed_s']:.1f} s), "
              f"RSS {g['rss_mb']:.0f} MB, journal commit {g['record_ms_mean']:.2f} ms mean, "
              f"feeder late p99 {g['slip_p99'] * 1000:.1f} ms max {g['slip_max'] * 1000:.1f}"
              f" ms, drained {g['drain_s']:.2f} s after the last event, sessions "
              f"{g['sessions']}")
        if g["errors"]:
            print(f"    link errors: {g['errors'][:3]}")
    print(f"  mosquitto CPU {r.broker_cpu_s / r.wall_s:.1%} of one core; back end CPU "
          f"{b['cpu_s']:.1f} s")
    print(f"  load average {os.getloadavg()[0]:.2f} (2-core machine shared with others)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stations", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=1.0, help="events/s per station")
    ap.add_argument("--procs", type=int, default=1, help="station processes")
    ap.add_argument("--sync", choices=("normal", "full"), default="normal",
                    help="the journals' SQLite synchronous setting (see the docstring)")
    a = ap.parse_args()
    r = run_scale(a.stations, a.seconds, a.rate, a.procs, a.sync,
                  progress=lambda s: print(s, flush=True))
    report(r)


if __name__ == "__main__":
    main()
