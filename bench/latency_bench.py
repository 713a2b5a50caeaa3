"""Interlock reaction latency (issue 3), printed, never asserted:

from the moment the simulator changes an input on the wire to the moment the stop command
(stop_request = 1) reaches the simulated PLC, p50 and p99 over N trials each, for
  (a) an e-stop over Modbus (the sim PLC's estop_ok input drops), and
  (b) a pack over-temperature frame over CAN (a PackStatus with MaxCellTemp 75 C from the
      car's pack), while the CAN bus carries the frames of 23 packs plus background load.

swapd runs as its own process (as on a station); the simulator and the load generator run
in this one, over Modbus TCP on loopback and python-can udp_multicast. Each trial: a swap
is in its POSITION step (simulator at real speed, so the step lasts 15 s), the fault is
injected, the stop is timed, then the fault is cleared and the operator's clear + reset
(over swapctl's socket) lets the next swap start.

Run: .venv/bin/python bench/latency_bench.py [--trials 200] [--load-fps 3500]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import statistics
import time
from typing import Any

import can

from drivers.bms.protocol import VEHICLE_PACK_SA, PackProtocol
from sim_hw.station_sim import SimStation
from station.rig import DaemonProcess, ProcessRig


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


async def main(trials: int, load_fps: int, poll_ms: float) -> None:
    proto = PackProtocol()
    async with ProcessRig(speed=1.0, vehicles=1, sim={"station": {"slots": 23}},
                          poll_period_s=poll_ms / 1000, start_daemon=False,
                          name="latency") as rig:
        sim, daemon, group = rig.sim, rig.daemon, rig.channel
        probe = StopProbe(sim)
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
        results: dict[str, list[float]] = {"estop_modbus": [], "overtemp_can": []}
        failures: list[str] = []
        try:
            for kind in ("estop_modbus", "overtemp_can"):
                for _ in range(trials):
                    await ready_in_position(daemon)
                    await asyncio.sleep(random.uniform(0.0, 0.05))
                    probe.t_stop = None
                    if kind == "estop_modbus":
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
                    if kind == "estop_modbus":
                        sim.faults.clear("estop")
                    await recover(daemon)
        finally:
            stop_load.set()
            loader.join()
            injector.shutdown()
            daemon.terminate()
        load_s = time.monotonic() - t_load0
    print(f"swapd PLC poll period {poll_ms:.0f} ms; CAN: 23 packs "
          f"(~{23 * 22} frames/s) + background {sent.value / load_s:.0f} frames/s")
    for f in failures:
        print("FAILED TRIAL:", f)
    for kind, xs in results.items():
        if not xs:
            print(f"{kind:>13}: no trial reached a stop")
            continue
        print(f"{kind:>13}: n={len(xs)}  p50 {statistics.median(xs):6.2f} ms  "
              f"p99 {pct(xs, 99):6.2f} ms  max {max(xs):6.2f} ms")


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
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--load-fps", type=int, default=3500)
    ap.add_argument("--poll-ms", type=float, default=20.0)
    a = ap.parse_args()
    asyncio.run(main(a.trials, a.load_fps, a.poll_ms))
