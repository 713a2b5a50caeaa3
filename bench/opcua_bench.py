"""OPC UA benchmarks (issue 9), printed, never asserted:

1. idle CPU of swapd (its own process, `ProcessRig`; psutil cpu_times over N seconds, the
   station idle: no vehicle ever comes, the rack's packs on CAN) over Modbus TCP and over
   OPC UA with Basic256Sha256 SignAndEncrypt and with security policy None (what the
   encryption costs), at swapd's defaults (Modbus poll every 20 ms, OPC UA publishing
   interval 10 ms) unless `--poll-ms` says otherwise, plus Modbus at 10 ms (the OPC UA
   interval) for comparison;
2. link recovery after the OPC UA server restarts (`await sim.plc.restart()`: every
   session dies, the relay stays), swapd idle over SignAndEncrypt, N trials. From the
   restart call to
     - the server up again (the restart call returns),
     - swapd's first call of the output method on the new server (the link writes the
       whole output block first after every connect: model.set_outputs seen in the
       simulator),
     - the first publish response with data of a subscription created after the restart
       (swapd's first fresh input image; it arrives ~1 ms later),
     - swapd's status saying `plc.connected` again with one more reconnect (polled every
       20 ms over its API);
   and from its JSON log the moment it saw the connection lost (`plc.disconnected`);
3. how long a black-holed connection (fault `plc_silent`: the relay drops every byte both
   ways, connections stay open) takes to be noticed: the first `plc.disconnected` in
   swapd's JSON log, its status saying `connected: false`, the core's `plc_inputs_stale`
   interlock (all polled every 20 ms); then the fault is cleared and the time to the
   first output write on a new connection is taken. Over OPC UA and, for comparison,
   over Modbus.

Figures move with this shared 2-core machine's load: the load average is printed.

Run: .venv/bin/python bench/opcua_bench.py [--idle-seconds 30] [--restarts 10]
     [--silences 5] [--only cpu,restart,silent]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from sim_hw.config import ArrivalsConfig
from sim_hw.station_sim import SimStation
from station.rig import ProcessRig

# an empty schedule: no car ever comes
NO_VEHICLES = {"arrivals": ArrivalsConfig(rate_per_hour=[0.0] * 24)}
INSECURE_SIM = {"opcua": {"policies": ["None"]}}
INSECURE_SWAPD = {"plc": {"opcua": {"security_policy": "None", "allow_insecure": True}}}
STATUS_POLL_S = 0.02


def merged(*dicts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(
                out.get(k), dict) else v
    return out


def rig(plc: str, *, secure: bool = True, poll_ms: float | None = None,
        name: str = "opcua-bench") -> ProcessRig:
    sim = merged(NO_VEHICLES, INSECURE_SIM if plc == "opcua" and not secure else {})
    config = INSECURE_SWAPD if plc == "opcua" and not secure else None
    return ProcessRig(speed=1.0, vehicles=0, sim=sim, config=config, name=name,
                      poll_period_s=poll_ms / 1000 if poll_ms is not None else None,
                      plc=plc)  # type: ignore[arg-type]


def describe(r: ProcessRig) -> str:
    link = r.config.plc.link_section()
    if r.plc == "opcua":
        mode = "" if link.security_policy == "None" else f" {link.security_mode}"  # type: ignore[union-attr]
        return (f"OPC UA {link.security_policy}{mode}, "  # type: ignore[union-attr]
                f"publishing {link.update_period_s * 1000:g} ms")
    return f"Modbus TCP, poll {link.update_period_s * 1000:g} ms"


async def wait_connected(r: ProcessRig, timeout: float = 60.0) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while True:
        st = await r.daemon.status()
        if st["plc"]["connected"]:
            return st
        if time.monotonic() > end:
            raise RuntimeError(f"swapd's PLC link did not connect: {st['plc']}\n"
                               f"{r.daemon.log_tail()}")
        await asyncio.sleep(0.1)


def stats_line(xs: list[float], unit: str = "ms") -> str:
    if not xs:
        return "no value"
    return (f"min {min(xs):7.1f}  median {statistics.median(xs):7.1f}  "
            f"max {max(xs):7.1f} {unit}  (n={len(xs)})")


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


# ---- 1. idle CPU ----------------------------------------------------------------------

async def idle_cpu(plc: str, secure: bool, poll_ms: float | None, seconds: float,
                   settle: float) -> None:
    async with rig(plc, secure=secure, poll_ms=poll_ms) as r:
        await wait_connected(r)
        st = await r.daemon.status()
        await asyncio.sleep(settle)  # start-up (imports, certificates, first images) over
        assert r.daemon.proc is not None
        proc = psutil.Process(r.daemon.proc.pid)
        me = psutil.Process()
        spy = SimSpy(r.sim) if plc == "opcua" else None
        r0 = r.sim.plc.requests
        c0, m0, t0 = proc.cpu_times(), me.cpu_times(), time.monotonic()
        if spy is not None:
            spy.arm(float("-inf"))
        await asyncio.sleep(seconds)
        c1, m1, dt = proc.cpu_times(), me.cpu_times(), time.monotonic() - t0
        requests = (r.sim.plc.requests - r0) / dt
        traffic = f"{requests:.0f} PLC requests/s"
        if spy is not None:
            traffic += (f" (publish responses {spy.publishes / dt:.0f}/s, of them "
                        f"keep-alives {spy.keepalives / dt:.0f}/s)")
        swapd = ((c1.user + c1.system) - (c0.user + c0.system)) / dt * 100
        sim = ((m1.user + m1.system) - (m0.user + m0.system)) / dt * 100
        rss = proc.memory_info().rss / 2**20
        end = await r.daemon.status()
        what = describe(r)
    print(f"    {what:<44} swapd {swapd:5.1f} % of one core "
          f"(user {(c1.user - c0.user) / dt * 100:4.1f}, system "
          f"{(c1.system - c0.system) / dt * 100:4.1f}), RSS {rss:5.1f} MB; simulator "
          f"process {sim:5.1f} %; {traffic}; state {st['packml_state']}->"
          f"{end['packml_state']}, reconnects {end['plc']['reconnects']}; {load()}")


# ---- 2. recovery after the server restarts ----------------------------------------------

class SimSpy:
    """Times seen in the simulator: output blocks taken (model.set_outputs) and publish
    responses with data of subscriptions created after `since` (the first one's time, and
    how many with and without data)."""

    def __init__(self, sim: SimStation) -> None:
        self.since = float("inf")
        self.writes: list[float] = []
        self.first_publish: float | None = None
        self.publishes = self.keepalives = 0
        model = sim.model
        set_outputs = model.set_outputs

        def spy(values: dict[str, Any], *a: Any, **kw: Any) -> Any:
            self.writes.append(time.monotonic())
            return set_outputs(values, *a, **kw)

        model.set_outputs = spy  # type: ignore[method-assign]
        plc = sim.plc
        hook = plc.hook_subscription  # type: ignore[union-attr]

        def traced_hook(sub: Any) -> None:
            if not getattr(sub, "_bench_spied", False):
                sub._bench_spied = True
                created = time.monotonic()
                pop = sub._pop_publish_result

                def popped() -> Any:
                    result = pop()
                    data = bool(result.NotificationMessage.NotificationData)
                    if created >= self.since:
                        self.publishes += 1
                        self.keepalives += not data
                        if self.first_publish is None and data:
                            self.first_publish = time.monotonic()
                    return result

                sub._pop_publish_result = popped
            hook(sub)

        plc.hook_subscription = traced_hook  # type: ignore[union-attr,method-assign]

    def arm(self, t0: float) -> None:
        self.since = t0
        self.first_publish = None
        self.publishes = self.keepalives = 0

    def first_write_after(self, t0: float) -> float | None:
        return next((t for t in self.writes if t >= t0), None)


def log_events(path: Path, names: set[str], after_wall: float) -> dict[str, float]:
    """The first wall time (s since the epoch) of each named event in swapd's JSON log
    after `after_wall`."""
    found: dict[str, float] = {}
    if not path.exists():
        return found
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
            event = rec.get("event")
            if event not in names or event in found:
                continue
            t = datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        if t >= after_wall:
            found[event] = t
    return found


async def restarts(trials: int, settle: float) -> None:
    async with rig("opcua") as r:
        spy = SimSpy(r.sim)
        await wait_connected(r)
        await asyncio.sleep(settle)
        rows: dict[str, list[float]] = {k: [] for k in (
            "server down+up (restart call)", "swapd saw the loss (log)",
            "first output call on the new server", "first input image published",
            "status connected again", "plc.connected in swapd's log")}
        attempts: list[int] = []
        for i in range(trials):
            before = (await r.daemon.status())["plc"]["reconnects"]
            wall0 = time.time()
            t0 = time.monotonic()
            spy.arm(t0)
            await r.sim.plc.restart()  # type: ignore[union-attr]
            t_up = time.monotonic()
            t_status = None
            end = t0 + 30
            while time.monotonic() < end:
                st = await r.daemon.status()
                if t_status is None and st["plc"]["connected"] and \
                        st["plc"]["reconnects"] > before:
                    t_status = time.monotonic()
                if t_status is not None and spy.first_publish is not None and \
                        spy.first_write_after(t0) is not None:
                    break
                await asyncio.sleep(STATUS_POLL_S)
            # a call taken while restart() runs may be the old server's last
            t_write = spy.first_write_after(t_up)
            attempts.append(st["plc"]["reconnects"] - before)
            events = log_events(r.daemon_log, {"plc.disconnected", "plc.connected"}, wall0)
            row = {"server down+up (restart call)": t_up - t0,
                   "swapd saw the loss (log)": events.get("plc.disconnected", wall0 - 1) - wall0,
                   "first output call on the new server": (t_write - t0) if t_write else None,
                   "first input image published":
                       (spy.first_publish - t0) if spy.first_publish else None,
                   "status connected again": (t_status - t0) if t_status else None,
                   "plc.connected in swapd's log": events.get("plc.connected", wall0 - 1) - wall0}
            print(f"    restart {i + 1:2d}: " + ", ".join(
                f"{k} {'-' if v is None or v < 0 else f'{v * 1000:.0f}'}"
                for k, v in row.items()) + f" ms; connect attempts {attempts[-1]}")
            for k, v in row.items():
                if v is not None and v >= 0:
                    rows[k].append(v * 1000)
            await asyncio.sleep(settle)
        end_status = await r.daemon.status()
    print(f"    over {trials} restarts ({load()}), from the restart call:")
    for k, xs in rows.items():
        print(f"      {k:>38}: {stats_line(xs)}")
    print(f"      connect attempts per restart (swapd's reconnects): {attempts}")
    print(f"    swapd's link at the end: {end_status['plc']}")


# ---- 3. a black-holed connection ----------------------------------------------------------

async def silences(plc: str, trials: int, settle: float) -> None:
    async with rig(plc) as r:
        spy = SimSpy(r.sim) if plc == "opcua" else None
        writes: list[float] = []
        if spy is None:
            set_outputs = r.sim.model.set_outputs

            def record(values: dict[str, Any], *a: Any, **kw: Any) -> Any:
                writes.append(time.monotonic())
                return set_outputs(values, *a, **kw)

            r.sim.model.set_outputs = record  # type: ignore[method-assign]
        else:
            writes = spy.writes
        await wait_connected(r)
        await asyncio.sleep(settle)
        keys = ("plc.disconnected in swapd's log", "status connected: false",
                "plc_inputs_stale interlock", "after the clear: first output write")
        rows: dict[str, list[float]] = {k: [] for k in keys}
        for i in range(trials):
            wall0, t0 = time.time(), time.monotonic()
            r.sim.faults.set("plc_silent")
            t_off = t_stale = None
            end = t0 + 30
            while time.monotonic() < end and (t_off is None or t_stale is None):
                st = await r.daemon.status()
                now = time.monotonic()
                if t_off is None and not st["plc"]["connected"]:
                    t_off = now
                if t_stale is None and "plc_inputs_stale" in st["active_interlocks"]:
                    t_stale = now
                await asyncio.sleep(STATUS_POLL_S)
            await asyncio.sleep(0.3)  # the log line is written as the link acts
            events = log_events(r.daemon_log, {"plc.disconnected"}, wall0)
            t_clear = time.monotonic()
            r.sim.faults.clear("plc_silent")
            end = t_clear + 30
            while time.monotonic() < end and not any(t >= t_clear for t in writes):
                await asyncio.sleep(0.005)
            t_back = next((t for t in writes if t >= t_clear), None)
            row = {keys[0]: (events["plc.disconnected"] - wall0)
                   if "plc.disconnected" in events else None,
                   keys[1]: (t_off - t0) if t_off else None,
                   keys[2]: (t_stale - t0) if t_stale else None,
                   keys[3]: (t_back - t_clear) if t_back else None}
            print(f"    silence {i + 1}: " + ", ".join(
                f"{k} {'-' if v is None else f'{v * 1000:.0f}'}" for k, v in row.items())
                + " ms")
            for k, v in row.items():
                if v is not None:
                    rows[k].append(v * 1000)
            await wait_connected(r)
            await asyncio.sleep(settle)
        what = describe(r)
        link = r.config.plc.link_section()
    extra = (f"keep-alive every {link.keepalive_count} x {link.publishing_interval_ms:g} ms"  # type: ignore[union-attr]
             if plc == "opcua" else f"request timeout {link.timeout_s:g} s")  # type: ignore[union-attr]
    print(f"    {what} ({extra}; stale_after_s "
          f"{r.config.plc.stale_after_s:g}), {trials} silences, {load()}:")
    for k, xs in rows.items():
        print(f"      {k:>38}: {stats_line(xs)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--idle-seconds", type=float, default=30.0)
    ap.add_argument("--poll-ms", type=float, default=None,
                    help="Modbus poll period / OPC UA publishing interval for the idle CPU "
                    "(default: swapd's, 20 / 10 ms)")
    ap.add_argument("--restarts", type=int, default=10)
    ap.add_argument("--silences", type=int, default=5)
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds after a connect before measuring")
    ap.add_argument("--only", default="cpu,restart,silent")
    a = ap.parse_args()
    # the simulator's libraries in this process: a request cut at teardown (pymodbus dumps
    # its frames), a dead session's subscription expiring (asyncua) is not a figure
    for noisy in ("pymodbus", "asyncua"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    parts = set(a.only.split(","))
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, {load()}")
    if "cpu" in parts:
        print(f"\n[1] swapd idle CPU over {a.idle_seconds:g} s (no vehicle, rack packs on CAN)")
        runs: list[tuple[str, bool, float | None]] = [
            ("modbus", True, a.poll_ms), ("modbus", True, 10.0),
            ("opcua", True, a.poll_ms), ("opcua", False, a.poll_ms)]
        if a.poll_ms == 10.0:
            runs.pop(1)
        for plc, secure, poll in runs:
            asyncio.run(idle_cpu(plc, secure, poll, a.idle_seconds, a.settle))
    if "restart" in parts:
        print("\n[2] OPC UA link recovery after the server restarts (swapd idle, "
              "Basic256Sha256 SignAndEncrypt)")
        asyncio.run(restarts(a.restarts, a.settle))
    if "silent" in parts:
        print("\n[3] a black-holed PLC connection (fault plc_silent) noticed")
        for plc in ("opcua", "modbus"):
            asyncio.run(silences(plc, a.silences, a.settle))


if __name__ == "__main__":
    main()
