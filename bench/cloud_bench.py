"""Benchmarks of the cloud link (issue 8), printed, never asserted. One station's real
CloudLink in its own process (journal with the daemon's settings: SQLite WAL,
synchronous=FULL, one connection shared by the writer and the link, as in swapd), one
mosquitto on loopback (plain), the back end a subscriber in another process:

(a) replay: --backlog events (100,000) journaled while no broker runs (many per commit,
    over --outage-s, the link retrying all along), then the broker comes up: messages/s
    from the link's reconnect until the broker has acknowledged the whole backlog (target
    >= 3,000/s); the station process's RSS sampled through the outage and the replay (it
    must stay flat: the backlog is on disk). --profile: cProfile of the replay.
(b) online: event journaled -> received by the back end, p99 (target < 50 ms) at --rate
    events/s for --seconds.
(c) telemetry at default rates (rack every 10 s, state on change, 1 event/s): CPU of the
    station process with the link over --cpu-seconds, minus the same process without the
    link (run at the same time), as a share of one core (target <= 2 %).

Run: .venv/bin/python bench/cloud_bench.py [replay|online|telemetry|all] [options]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import math
import multiprocessing as mp
import os
import pstats
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil
from cloud_scale import BenchStation, Stamped, Subscriber, pct

from sim_hw.broker import Broker
from station.logs import configure_logging


# ---- the station process ---------------------------------------------------------------
def station_main(host: str, port: int, with_link: bool, wait_connected: bool,
                 conn: Connection) -> None:
    configure_logging("error", "json", stream=sys.stderr)
    asyncio.run(_station(host, port, with_link, wait_connected, conn))


async def _recv(conn: Connection) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, conn.recv)


async def _station(host: str, port: int, with_link: bool, wait_connected: bool,
                   conn: Connection) -> None:
    with tempfile.TemporaryDirectory(prefix="cloud-bench-") as tmp:
        st = BenchStation(0, Path(tmp), host, port, sync="full", separate_writer=False,
                          reconnect_min_s=0.1, reconnect_max_s=0.5)
        task = asyncio.create_task(st.link.run()) if with_link else None
        try:
            if with_link and wait_connected:
                async with asyncio.timeout(30):
                    while not st.link.stats.connected:
                        await asyncio.sleep(0.02)
            conn.send(("ready", os.getpid()))
            while True:
                cmd = await _recv(conn)
                if cmd[0] == "stop":
                    break
                conn.send(("done", await HANDLERS[cmd[0]](st, *cmd[1:])))
        finally:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            st.close()


def _cpu() -> float:
    return sum(psutil.Process().cpu_times()[:2])


async def _feed(st: BenchStation, rate: float, seconds: float) -> dict[str, Any]:
    """rate events/s, each its own commit (a scan's decision), then the link told."""
    st.record_s.clear()
    cpu0, t0 = _cpu(), time.monotonic()
    for k in range(int(rate * seconds)):
        delay = t0 + k / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        st.emit(st.journaled + 1)
    await asyncio.sleep(max(0.0, t0 + seconds - time.monotonic()))
    out = {"cpu_s": _cpu() - cpu0, "wall_s": time.monotonic() - t0, "last_id": st.last_id,
           "record_ms": [x * 1000 for x in st.record_s]}
    async with asyncio.timeout(30):
        while st.link.stats.acked_event_id < st.last_id and st.link.stats.connected:
            await asyncio.sleep(0.02)
    return out


async def _backlog(st: BenchStation, n: int, batch: int, seconds: float) -> dict[str, Any]:
    """n events journaled over `seconds`, `batch` per commit, while the broker is down."""
    t0 = time.monotonic()
    batches = math.ceil(n / batch)
    done = 0
    for b in range(batches):
        delay = t0 + b * seconds / batches - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        k = min(batch, n - done)
        ids = st.journal.record([Stamped(t=time.monotonic(), reason=f"synthetic {done + i}",
                                         vehicle_token=done + i, wall=time.time(),
                                         n=done + i) for i in range(k)])
        done += k
        st.last_id = ids[-1]
        st.journaled += k
        st.link.notify()
    return {"journaled_s": time.monotonic() - t0, "last_id": st.last_id,
            "backlog": st.link.outbox.backlog(), "connected": st.link.stats.connected,
            "last_error": st.link.stats.last_error}


async def _replay(st: BenchStation, profile: bool, timeout: float) -> dict[str, Any]:
    """From now (the broker is being started): until the link is connected, then until the
    broker has acknowledged every event journaled."""
    prof = cProfile.Profile() if profile else None
    if prof is not None:
        prof.enable()
    t0 = time.monotonic()
    acked0 = st.link.stats.acked_event_id
    published0 = st.link.stats.published
    cpu0 = _cpu()
    t_conn = t_first = math.nan
    deadline = t0 + timeout
    while st.link.stats.acked_event_id < st.last_id and time.monotonic() < deadline:
        now = time.monotonic()
        if math.isnan(t_conn) and st.link.stats.connected:
            t_conn = now
        if math.isnan(t_first) and st.link.stats.acked_event_id > acked0:
            t_first = now
        await asyncio.sleep(0.005)
    t_end = time.monotonic()
    cpu = _cpu() - cpu0
    text = ""
    if prof is not None:
        prof.disable()
        buf = io.StringIO()
        ps = pstats.Stats(prof, stream=buf).strip_dirs()
        ps.sort_stats("tottime").print_stats(25)
        ps.sort_stats("cumulative").print_stats(30)
        text = buf.getvalue()
    return {"t_conn": t_conn - t0, "t_first": t_first - t0, "t_end": t_end - t0,
            "events": st.link.stats.acked_event_id - acked0,
            "messages": st.link.stats.published - published0, "cpu_s": cpu,
            "complete": st.link.stats.acked_event_id >= st.last_id, "profile": text,
            "sessions": st.link.stats.sessions}


HANDLERS: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
    "feed": _feed, "backlog": _backlog, "replay": _replay}


class Station:
    """The station process, driven over a pipe."""

    def __init__(self, broker: Broker, with_link: bool = True,
                 wait_connected: bool = True) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=station_main, name="bench-station", daemon=True,
                                args=(broker.host, broker.port, with_link, wait_connected,
                                      child))
        self.proc.start()
        tag, info = self.conn.recv()
        if tag != "ready":
            raise RuntimeError(info)
        self.pid = int(info)

    def call(self, *cmd: Any) -> dict[str, Any]:
        self.conn.send(cmd)
        return dict(self.conn.recv()[1])

    def close(self) -> None:
        if self.proc.is_alive():
            self.conn.send(("stop",))
            self.proc.join(15)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


class RssSampler:
    """The station process's RSS every `period` s, tagged with the phase it was taken in."""

    def __init__(self, pid: int, period: float = 0.2) -> None:
        self.proc, self.period = psutil.Process(pid), period
        self.phase = "start"
        self.samples: list[tuple[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.samples.append((self.phase, self.proc.memory_info().rss / 2**20))
            except psutil.Error:
                return

    def of(self, phase: str) -> list[float]:
        return [mb for p, mb in self.samples if p == phase]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def _broker() -> Iterator[Broker]:
    with tempfile.TemporaryDirectory(prefix="cloud-bench-broker-") as tmp, \
            Broker(Path(tmp) / "broker", tls=False, persistence=True) as broker:
        yield broker


# ---- (a) replay after an outage -----------------------------------------------------------
def replay(backlog: int, outage_s: float, batch: int, profile: bool) -> None:
    """The station starts with no broker running (its link retrying, as swapd's would) and
    journals the backlog; then it is paused (SIGSTOP) while the broker and the back end come
    up, so the back end is subscribed before the link can reconnect, and resumed."""
    with tempfile.TemporaryDirectory(prefix="cloud-bench-broker-") as tmp:
        broker = Broker(Path(tmp) / "broker", tls=False, persistence=False)
        st = Station(broker, wait_connected=False)
        rss = RssSampler(st.pid)
        sub: Subscriber | None = None
        try:
            time.sleep(1.0)
            rss.phase = "outage"
            out = st.call("backlog", backlog, batch, outage_s)
            time.sleep(1.0)
            os.kill(st.pid, signal.SIGSTOP)
            broker.start()
            sub = Subscriber(broker.host, broker.port)
            others = [psutil.Process(p) for p in (broker.pid, sub.pid) if p is not None]
            others_cpu0 = [sum(p.cpu_times()[:2]) for p in others]
            rss.phase = "replay"
            t_start = time.time()
            os.kill(st.pid, signal.SIGCONT)
            st.conn.send(("replay", profile, 300.0))
            r = dict(st.conn.recv()[1])
            others_cpu = [sum(p.cpu_times()[:2]) - c0 for p, c0 in zip(others, others_cpu0,
                                                                        strict=True)]
            rss.phase = "after"
            time.sleep(0.5)
            total = out["last_id"]
            back = sub.finish(total, quiet_s=5.0, deadline_s=120.0)
        finally:
            rss.stop()
            st.close()
            if sub is not None:
                sub.close()
            broker.stop()
            broker.kill()
    replay_s = r["t_end"] - r["t_conn"]
    print(f"\n[a] replay after an outage: {backlog} events journaled during a {outage_s:g} s "
          f"outage ({batch} per commit, {out['journaled_s']:.1f} s), backlog "
          f"{out['backlog']} when the broker came back")
    print(f"    broker started -> link connected {r['t_conn']:.2f} s -> first ack "
          f"{r['t_first']:.2f} s -> backlog acknowledged {r['t_end']:.2f} s"
          f"{'' if r['complete'] else ' (TIMED OUT)'}")
    print(f"    {r['messages']} messages ({r['events']} events) in {replay_s:.2f} s: "
          f"{r['messages'] / replay_s:,.0f} messages/s (target >= 3,000/s)")
    print(f"    CPU during the replay, share of one core: station {r['cpu_s'] / r['t_end']:.0%}"
          f", mosquitto {others_cpu[0] / r['t_end']:.0%}, back end "
          f"{others_cpu[1] / r['t_end']:.0%}; load average {os.getloadavg()[0]:.2f}; station "
          f"CPU per message {r['cpu_s'] / max(r['messages'], 1) * 1e6:.0f} us")
    fl = back["first_last_rx"]
    print(f"    back end: {back['unique']}/{total} events after dedup, {back['duplicates']} "
          f"duplicates, last received {fl[-1] - t_start:.2f} s after the broker start"
          if fl else "    back end: nothing received")
    seqs = [s for _, s in back["seqs"].get("BENCH-0000", [])]
    print(f"    seq contiguous 1..{total}: {sorted(seqs) == list(range(1, total + 1))}")
    for phase in ("start", "outage", "replay", "after"):
        xs = rss.of(phase)
        if xs:
            print(f"    RSS {phase:7s} first {xs[0]:6.1f} MB  min {min(xs):6.1f}  max "
                  f"{max(xs):6.1f}  last {xs[-1]:6.1f}  ({len(xs)} samples)")
    outage = rss.of("outage")
    if outage:
        q = max(1, len(outage) // 10)
        print("    RSS over the outage, tenth by tenth: "
              + " ".join(f"{sum(outage[i:i + q]) / len(outage[i:i + q]):.1f}"
                         for i in range(0, len(outage), q)))
    if r["profile"]:
        print("\n    cProfile of the station process during the replay:\n")
        print(r["profile"])


# ---- (b) online latency -------------------------------------------------------------------
def online(rate: float, seconds: float) -> None:
    with _broker() as broker:
        sub = Subscriber(broker.host, broker.port)
        st = Station(broker)
        try:
            f = st.call("feed", rate, seconds)
            back = sub.finish(f["last_id"], quiet_s=3.0, deadline_s=30.0)
        finally:
            st.close()
            sub.close()
    lat = [x * 1000 for x in back["latencies"]]
    rec = f["record_ms"]
    print(f"\n[b] online: {len(rec)} events at {rate:g}/s for {seconds:g} s, each journaled "
          "(its own commit, fsync) then the link notified")
    print(f"    received {back['unique']}/{f['last_id']} (dedup), {back['duplicates']} "
          "duplicates")
    print(f"    created -> received by the back end, ms: p50 {pct(lat, 50):.1f}  p90 "
          f"{pct(lat, 90):.1f}  p99 {pct(lat, 99):.1f}  max {max(lat, default=math.nan):.1f}"
          "  (target p99 < 50 ms)")
    print(f"    of which the journal commit (fsync), ms: p50 {pct(rec, 50):.1f}  p99 "
          f"{pct(rec, 99):.1f}  max {max(rec, default=math.nan):.1f}")


# ---- (c) telemetry CPU --------------------------------------------------------------------
def telemetry(seconds: float) -> None:
    with _broker() as broker:
        sub = Subscriber(broker.host, broker.port)
        with_link, without = Station(broker, True), Station(broker, False)
        try:
            time.sleep(2.0)
            results: dict[str, dict[str, Any]] = {}
            threads = [threading.Thread(target=lambda s=s, k=k: results.__setitem__(
                k, s.call("feed", 1.0, seconds))) for k, s in (("link", with_link),
                                                               ("none", without))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            back = sub.finish(results["link"]["last_id"], quiet_s=2.0, deadline_s=20.0)
        finally:
            with_link.close()
            without.close()
            sub.close()
    a, b = results["link"], results["none"]
    ca, cb = a["cpu_s"] / a["wall_s"], b["cpu_s"] / b["wall_s"]
    racks = sum(back["racks"].values())
    print(f"\n[c] telemetry at default rates for {seconds:g} s: 1 event/s (journaled, "
          "fsync), state on change (every 10th event), rack every 10 s (and on a 5 % SOC "
          "step)")
    print(f"    station process with the link    {ca:.2%} of one core ({a['cpu_s']:.2f} s)")
    print(f"    the same without the link        {cb:.2%} of one core ({b['cpu_s']:.2f} s)")
    print(f"    the link's share                 {ca - cb:.2%} of one core (target <= 2 %)")
    print(f"    back end saw {back['unique']} events, {racks} rack, "
          f"{sum(back['states'].values())} state messages")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("which", nargs="?", default="all",
                    choices=("replay", "online", "telemetry", "all"))
    ap.add_argument("--backlog", type=int, default=100_000)
    ap.add_argument("--outage-s", type=float, default=30.0)
    ap.add_argument("--batch", type=int, default=1000, help="events per commit in the outage")
    ap.add_argument("--profile", action="store_true", help="cProfile the replay")
    ap.add_argument("--rate", type=float, default=20.0, help="(b) events/s")
    ap.add_argument("--seconds", type=float, default=30.0, help="(b) duration")
    ap.add_argument("--cpu-seconds", type=float, default=60.0, help="(c) duration")
    a = ap.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores, shared)")
    if a.which in ("replay", "all"):
        replay(a.backlog, a.outage_s, a.batch, a.profile)
    if a.which in ("online", "all"):
        online(a.rate, a.seconds)
    if a.which in ("telemetry", "all"):
        telemetry(a.cpu_seconds)


if __name__ == "__main__":
    main()
