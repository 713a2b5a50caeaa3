"""Interlock reaction latency (issues 3 and 9), printed, never asserted:

from the moment the simulator changes an input on the wire to the moment the stop command
(stop_request = 1) reaches the simulated PLC, p50 and p99 over N trials each, for
  (a) `estop_plc`: an e-stop over the PLC link (the sim PLC's estop_ok input drops), over
      Modbus TCP or over OPC UA (`--plc`), and
  (b) `overtemp_can`: a pack over-temperature frame over CAN (a PackStatus with MaxCellTemp
      75 C from the car's pack), while the CAN bus carries the frames of 23 packs plus
      background load.

swapd runs as its own process (as on a station); the simulator and the load generator run
in this one, over the PLC protocol on loopback and python-can udp_multicast. Each trial: a
swap is in its POSITION step (simulator at real speed, so the step lasts 15 s), the fault
is injected, the stop is timed, then the fault is cleared and the operator's clear + reset
(over swapctl's socket) lets the next swap start.

`--poll-ms` is swapd's Modbus poll period with `--plc modbus` (default 20 ms) and its OPC
UA subscription's publishing interval with `--plc opcua` (default 10 ms). Over OPC UA
(Basic256Sha256, SignAndEncrypt, as `ProcessRig` sets it up) "the input changing" is the
moment the fault is set: the simulator writes the node synchronously then
(faults.set -> SimStation.sync / OpcUaPlcServer.refresh), and tells the subscription at
its next scan (`[sim.opcua] scan_s`, 5 ms). The e-stop's path is then traced in this
process (nothing in swapd or the simulator changes): the sim's scan telling the
subscription, the server's publish of the change, the response leaving through the sim's
TCP relay, swapd's request coming back through it, the method call reaching the model.

Run: .venv/bin/python bench/latency_bench.py [--plc modbus|opcua] [--poll-ms MS]
     [--trials 200] [--load-fps 3500] [--kinds estop_plc,overtemp_can]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import random
import statistics
import time
from typing import Any, cast

import can
import psutil

from drivers.bms.protocol import VEHICLE_PACK_SA, PackProtocol
from sim_hw.station_sim import SimStation
from station.config import OpcUaSection
from station.rig import DaemonProcess, ProcessRig

KINDS = ("estop_plc", "overtemp_can")
DEFAULT_POLL_MS = {"modbus": 20.0, "opcua": 10.0}


class StopProbe:
    """Times when stop_request first becomes 1 at the simulated PLC."""

    def __init__(self, sim: SimStation) -> None:
        self.t_stop: float | None = None
        model = sim.model
        original = model.set_outputs

        def spy(values: dict[str, Any], *a: Any, **kw: Any) -> Any:
            if self.t_stop is None and values.get("stop_request") == 1:
                self.t_stop = time.monotonic()
            return original(values, *a, **kw)

        model.set_outputs = spy  # type: ignore[method-assign]


class _TapReader:
    """A StreamReader of the sim's TCP relay whose reads are timed (while the trace is
    armed)."""

    def __init__(self, inner: asyncio.StreamReader, trace: OpcUaTrace, up: bool) -> None:
        self.inner, self.trace, self.up = inner, trace, up

    async def read(self, n: int = -1) -> bytes:
        data = await self.inner.read(n)
        if data and self.trace.armed:
            self.trace.chunks.append((time.monotonic(), self.up, len(data)))
        return data


class OpcUaTrace:
    """Where an e-stop's time goes over OPC UA, seen from the simulator's process (its
    objects wrapped here, their code unchanged):
      t_notify   the sim's scan hands the estop_ok change to the subscription's monitored
                 item (OpcUaPlcServer._notify);
      t_publish  the server's subscription takes it into a publish response
                 (InternalSubscription._pop_publish_result);
      chunks     every chunk through the sim's TCP relay, both ways: the first from the
                 server after t_publish is the response leaving, the last from swapd before
                 the stop is the method call arriving."""

    def __init__(self, sim: SimStation) -> None:
        from sim_hw.opcua_server import OpcUaPlcServer

        plc = sim.plc
        assert isinstance(plc, OpcUaPlcServer) and sim.node_map is not None
        self.armed = False
        self.t_notify: float | None = None
        self.t_publish: float | None = None
        self.chunks: list[tuple[float, bool, int]] = []
        node = plc.node_id("estop_ok")
        # swapd's OPC UA link numbers its monitored items 1.. in the node map's input order
        # (drivers/plc/opcua_link.py, _subscribe): estop_ok's client handle
        handle = next(i for i, sig in enumerate(sim.node_map.inputs(), start=1)
                      if sig.name == "estop_ok")
        notify = plc._notify

        async def traced_notify() -> None:
            if self.armed and self.t_notify is None and \
                    any(nid == node for nid, _ in plc._pending):
                self.t_notify = time.monotonic()
            await notify()

        plc._notify = traced_notify  # type: ignore[method-assign]
        hook = plc.hook_subscription

        def traced_hook(sub: Any) -> None:
            if not getattr(sub, "_bench_traced", False):
                pop = sub._pop_publish_result

                def traced_pop() -> Any:
                    result = pop()
                    if self.armed and self.t_publish is None and any(
                            item.ClientHandle == handle
                            for n in result.NotificationMessage.NotificationData or []
                            for item in getattr(n, "MonitoredItems", None) or []):
                        self.t_publish = time.monotonic()
                    return result

                sub._pop_publish_result = traced_pop
                sub._bench_traced = True
            hook(sub)

        plc.hook_subscription = traced_hook  # type: ignore[method-assign]
        relay = plc.relay
        assert relay is not None
        pump = relay._pump

        def traced_pump(src: Any, dst: Any, pair: Any) -> Any:
            tapped = cast(asyncio.StreamReader, _TapReader(src, self, up=dst is pair.target))
            return pump(tapped, dst, pair)

        relay._pump = traced_pump  # type: ignore[method-assign]

    def arm(self) -> None:
        self.t_notify = self.t_publish = None
        self.chunks = []
        self.armed = True

    def segments(self, t0: float, t_stop: float) -> dict[str, float] | None:
        """The trial's time in ms, split: scan, publish wait, response out, swapd, call in."""
        self.armed = False
        if self.t_notify is None or self.t_publish is None:
            return None
        out = [t for t, up, _ in self.chunks if not up and t >= self.t_publish]
        into = [t for t, up, _ in self.chunks if up and t <= t_stop]
        if not out or not into or into[-1] < out[0]:
            return None
        return {"sim scan (set -> item told)": (self.t_notify - t0) * 1000,
                "publish wait (told -> in a response)": (self.t_publish - self.t_notify) * 1000,
                "server out (response -> relay)": (out[0] - self.t_publish) * 1000,
                "swapd (response at relay -> call at relay)": (into[-1] - out[0]) * 1000,
                "call in (relay -> model)": (t_stop - into[-1]) * 1000}


def load_process(group: str, port: int | None, fps: int, stop: Any, sent: Any) -> None:
    """Background traffic from other nodes: J1939 frames the station does not know. Its own
    process, so that it does not steal the simulated PLC's interpreter lock."""
    bus = can.Bus(interface="udp_multicast", channel=group,
                  **({"port": port} if port else {}))
    burst = max(1, fps // 100)
    n = 0
    try:
        while not stop.is_set():
            t = time.monotonic()
            for _ in range(burst):
                bus.send(can.Message(arbitration_id=0x18FEF100 | (n % 0x40),
                                     data=n.to_bytes(8, "little"), is_extended_id=True))
                n += 1
            time.sleep(max(0.0, 0.01 - (time.monotonic() - t)))
    finally:
        sent.value = n
        bus.shutdown()


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


async def main(trials: int, load_fps: int, poll_ms: float, plc: str,
               kinds: tuple[str, ...] = KINDS) -> None:
    proto = PackProtocol()
    async with ProcessRig(speed=1.0, vehicles=1, sim={"station": {"slots": 23}},
                          poll_period_s=poll_ms / 1000, start_daemon=False,
                          name="latency", plc=plc) as rig:  # type: ignore[arg-type]
        sim, daemon, group = rig.sim, rig.daemon, rig.channel
        probe = StopProbe(sim)
        trace = OpcUaTrace(sim) if plc == "opcua" else None
        link = rig.config.plc.link_section()
        security = (f", {link.security_policy} {link.security_mode}"
                    if isinstance(link, OpcUaSection) else "")
        stop_load = multiprocessing.Event()
        sent = multiprocessing.Value("q", 0)
        loader = multiprocessing.Process(target=load_process,
                                         args=(group, rig.can_port, load_fps, stop_load, sent))
        # on the rig's own CAN port: frames on another would never reach swapd
        injector = can.Bus(interface="udp_multicast", channel=group,
                           **({"port": rig.can_port} if rig.can_port else {}))
        daemon.start()
        loader.start()
        t_load0 = time.monotonic()
        assert daemon.proc is not None
        swapd = psutil.Process(daemon.proc.pid)
        me = psutil.Process()
        cpu0 = (swapd.cpu_times(), me.cpu_times())
        results: dict[str, list[float]] = {k: [] for k in kinds}
        split: list[dict[str, float]] = []
        failures: list[str] = []
        try:
            for kind in kinds:
                for _ in range(trials):
                    await ready_in_position(daemon)
                    await asyncio.sleep(random.uniform(0.0, 0.05))
                    probe.t_stop = None
                    if kind == "estop_plc":
                        if trace is not None:
                            trace.arm()
                        t0 = time.monotonic()
                        sim.faults.set("estop")
                    else:
                        ident, data = hot_frame(proto, sim)
                        t0 = time.monotonic()
                        injector.send(can.Message(arbitration_id=ident, data=data,
                                                  is_extended_id=True))
                    while probe.t_stop is None and time.monotonic() - t0 < 5.0:
                        await asyncio.sleep(0.0005)
                    if probe.t_stop is None:
                        failures.append(f"{kind}: no stop within 5 s; daemon "
                                        f"{await daemon.status()}")
                    else:
                        results[kind].append((probe.t_stop - t0) * 1000)
                        if trace is not None and kind == "estop_plc":
                            seg = trace.segments(t0, probe.t_stop)
                            if seg is not None:
                                split.append(seg)
                    if trace is not None:
                        trace.armed = False
                    if kind == "estop_plc":
                        sim.faults.clear("estop")
                    await recover(daemon)
        finally:
            cpu1 = (swapd.cpu_times(), me.cpu_times())
            stop_load.set()
            loader.join()
            injector.shutdown()
            daemon.terminate()
        load_s = time.monotonic() - t_load0
    period = "Modbus poll period" if plc == "modbus" else "OPC UA publishing interval"
    print(f"PLC over {plc}{security}; swapd's {period} {poll_ms:g} ms; CAN: 23 packs "
          f"(~{23 * 22} frames/s) + background {sent.value / load_s:.0f} frames/s; "
          f"load average {os.getloadavg()[0]:.2f} at the end")
    busy = [((b.user + b.system) - (a.user + a.system)) / load_s * 100
            for a, b in zip(cpu0, cpu1, strict=True)]
    print(f"CPU over the run: swapd {busy[0]:.0f} % of one core, this process (simulator, "
          f"relay, probes) {busy[1]:.0f} %")
    for f in failures:
        print("FAILED TRIAL:", f)
    for kind, xs in results.items():
        if not xs:
            print(f"{kind:>13}: no trial reached a stop")
            continue
        print(f"{kind:>13}: n={len(xs)}  p50 {statistics.median(xs):6.2f} ms  "
              f"p99 {pct(xs, 99):6.2f} ms  max {max(xs):6.2f} ms")
    if split:
        print(f"estop_plc over OPC UA, where the time goes ({len(split)} traced trials; ms):")
        for name in split[0]:
            xs = [s[name] for s in split]
            print(f"  {name:>44}: p50 {statistics.median(xs):6.2f}  p99 {pct(xs, 99):6.2f}  "
                  f"max {max(xs):6.2f}")
        timers = [s["sim scan (set -> item told)"] + s["publish wait (told -> in a response)"]
                  for s in split]
        print(f"  {'of which the two timers (set -> in a response)':>44}: p50 "
              f"{statistics.median(timers):6.2f}  p99 {pct(timers, 99):6.2f}  "
              f"max {max(timers):6.2f}")
        slow = sorted(split, key=lambda s: sum(s.values()))[-max(1, len(split) // 100):]
        print("  the slowest trial(s): " + "; ".join(
            ", ".join(f"{v:.1f}" for v in s.values()) for s in slow))


def hot_frame(proto: PackProtocol, sim: SimStation) -> tuple[int, bytes]:
    pack = sim.model.vehicle.pack if sim.model.vehicle else None
    soc = pack.soc_pct if pack else 20.0
    return proto.encode("PackStatus", {"SOC": soc, "PackVoltage": 380.0, "PackCurrent": 0.0,
                                       "MinCellTemp": 25, "MaxCellTemp": 75},
                        sa=VEHICLE_PACK_SA)


async def ready_in_position(daemon: DaemonProcess) -> None:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        st = await daemon.status()
        if st["packml_state"] == "Execute" and st["step"] == "position":
            return
        if st["packml_state"] in ("Aborted", "Stopped"):
            await recover(daemon)  # a stale hot reading can abort the next swap once
        await asyncio.sleep(0.02)
    raise RuntimeError(f"no swap in POSITION: {st}")


async def recover(daemon: DaemonProcess) -> None:
    """The operator's part: clear once the cause is gone, then reset."""
    end = time.monotonic() + 30
    while time.monotonic() < end:
        st = await daemon.status()
        if st["packml_state"] == "Aborted" and not st["active_interlocks"]:
            await daemon.command("clear")
        elif st["packml_state"] == "Stopped":
            if (await daemon.command("reset"))["ok"]:
                return
        elif st["packml_state"] in ("Idle", "Resetting", "Starting", "Execute"):
            return
        await asyncio.sleep(0.02)
    raise RuntimeError(f"station did not recover: {st}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plc", choices=("modbus", "opcua"), default="modbus",
                    help="the PLC link (default modbus); opcua: Basic256Sha256 SignAndEncrypt")
    ap.add_argument("--trials", type=int, default=200, help="trials per kind")
    ap.add_argument("--load-fps", type=int, default=3500)
    ap.add_argument("--poll-ms", type=float, default=None,
                    help="modbus: swapd's poll period (default 20); opcua: the "
                    "subscription's publishing interval (default 10)")
    ap.add_argument("--kinds", default=",".join(KINDS),
                    help=f"comma-separated, of {', '.join(KINDS)} (default both)")
    a = ap.parse_args()
    # the simulator's libraries in this process: a request cut at teardown (pymodbus dumps
    # its frames), a dead session's subscription expiring (asyncua) is not a figure
    for noisy in ("pymodbus", "asyncua"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    chosen = tuple(k for k in a.kinds.split(",") if k)
    if not chosen or any(k not in KINDS for k in chosen):
        ap.error(f"--kinds: of {', '.join(KINDS)}")
    poll = a.poll_ms if a.poll_ms is not None else DEFAULT_POLL_MS[a.plc]
    asyncio.run(main(a.trials, a.load_fps, poll, a.plc, chosen))
