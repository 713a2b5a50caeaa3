"""`swapd demo`: the daemon drives the simulated station (embedded) through N swaps.

The simulator speaks real Modbus TCP on loopback and real CAN frames on a python-can
`virtual` channel; the daemon cannot tell it from a station. Progress is printed per step,
and the summary is computed from the daemon's own journal.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any, TextIO

from sim_hw.config import SimConfig
from station.config import ModbusSection, OpcUaSection
from station.events import (
    Event,
    Inhibit,
    StateChanged,
    StepDone,
    StepStarted,
    SwapEnded,
    SwapStarted,
)
from station.packml import State
from station.rig import PlcProtocol, Rig, speed_refusal

NOMINAL_SWAP_S = 144.0
PLC_NAMES = {"modbus": "Modbus TCP", "opcua": "OPC UA (Basic256Sha256, SignAndEncrypt)"}
DEMO_STATION_ID = "PSS-DEMO-0001"


class BrokerOptionError(ValueError):
    """The demo's --broker options do not make a usable [cloud] section."""


def cloud_overrides(url: str | None, station_id: str | None, trusted_keys: Path | None,
                    ca: Path | None, cert: Path | None, key: Path | None
                    ) -> dict[str, Any] | None:
    """The config sections that make the demo publish to a broker (None: broker-free)."""
    if url is None:
        if any(v is not None for v in (station_id, trusted_keys, ca, cert, key)):
            raise BrokerOptionError("--station-id, --trusted-keys, --ca, --cert and --key "
                                    "go with --broker")
        return None
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
        raise BrokerOptionError(f"--broker {url!r}: expected mqtt://HOST:PORT or "
                                "mqtts://HOST:PORT")
    try:
        port = u.port or (8883 if u.scheme == "mqtts" else 1883)
    except ValueError as exc:
        raise BrokerOptionError(f"--broker {url!r}: {exc}") from None
    tls = (ca, cert, key)
    if u.scheme == "mqtts" and None in tls:
        raise BrokerOptionError("mqtts needs --ca, --cert and --key")
    if u.scheme == "mqtt" and any(v is not None for v in tls):
        raise BrokerOptionError("--ca/--cert/--key need an mqtts:// broker")
    if trusted_keys is None:
        # no key trusted: every command is answered, and refused (unknown_key)
        trusted_keys = Path(tempfile.mkdtemp(prefix="swapd-demo-keys-"))
    cloud: dict[str, Any] = {"enabled": True, "host": u.hostname, "port": port,
                             "trusted_keys_dir": str(trusted_keys), "rack_period_s": 2.0}
    if u.scheme == "mqtts":
        cloud.update(ca_file=str(ca), cert_file=str(cert), key_file=str(key))
    return {"cloud": cloud, "station": {"id": station_id or DEMO_STATION_ID,
                                        "name": "Demo station (simulated)"}}


class Progress:
    """Prints one line per step and per swap as the journal records them."""

    def __init__(self, out: TextIO, speed: float) -> None:
        self.out, self.speed = out, speed
        self.started: dict[tuple[str, str], float] = {}
        self.swap_started: dict[str, float] = {}
        self.ended = 0
        self.numbers: dict[str, int] = {}

    def __call__(self, ev: Event) -> None:
        match ev:
            case SwapStarted():
                n = self.numbers.setdefault(ev.swap_id, len(self.numbers) + 1)
                po, pi = ev.pack_out, ev.pack_in
                self._p(f"\nSwap {n} ({ev.swap_id}), vehicle {ev.vehicle_token}, pack family "
                        f"{po.family}\n"
                        f"  out: pack {po.serial} {po.chemistry.upper()} "
                        f"{po.soc_pct:.1f} % -> rack slot {ev.store_slot}\n"
                        f"  in:  pack {pi.serial} {pi.chemistry.upper()} "
                        f"{pi.soc_pct:.1f} % <- rack slot {ev.fetch_slot}")
            case StepStarted():
                self.started[(ev.swap_id, ev.step)] = ev.t
                if ev.step == "identify":
                    self.swap_started[ev.swap_id] = ev.t
            case StepDone():
                t0 = self.started.get((ev.swap_id, ev.step), ev.t)
                self._p(f"    {ev.step:<9} done {self._sim(ev.t - t0):7.1f} s")
            case SwapEnded():
                self.ended += 1
                total = self._sim(ev.t - self.swap_started.get(ev.swap_id, ev.t))
                if ev.outcome == "completed":
                    self._p(f"  completed in {total:.1f} s (simulated)")
                else:
                    self._p(f"  {ev.outcome.upper()} at {ev.step}: {ev.reason}")
            case Inhibit(reason=str() as reason):
                self._p(f"  start inhibited: {reason}")
            case StateChanged(new="Aborted" | "Stopped"):
                self._p(f"  station {ev.new}: {ev.reason}")
            case _:
                pass

    def _sim(self, real_s: float) -> float:
        return real_s * self.speed

    def _p(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        "",
        f"== Summary: {s['swaps_completed']} swaps completed, {s['swaps_aborted']} aborted ==",
    ]
    secs = s["swap_seconds"]
    if secs:
        lines.append(f"swap time (simulated s): min {min(secs):.1f}  "
                     f"mean {sum(secs) / len(secs):.1f}  max {max(secs):.1f}")
    lines.append(f"{'step':<10}{'count':>6}{'min s':>9}{'mean s':>9}{'max s':>9}")
    for name, st in s["steps"].items():
        lines.append(f"{name:<10}{st['count']:>6}{st['min']:>9.1f}{st['mean']:>9.1f}"
                     f"{st['max']:>9.1f}")
    lines.append("packs moved:")
    for p in s["packs"]:
        o, i = p["out"], p["in"]
        lines.append(
            f"  {p['swap_id']} [{p['outcome']}] vehicle {p['vehicle_token']}: out "
            f"{o['serial']} {o['chemistry']} {o['soc_pct']:.1f} % -> slot {o['stored_slot']}; "
            f"in {i['serial']} {i['chemistry']} {i['soc_pct']:.1f} % <- slot {i['fetched_slot']}"
        )
    if s["controller_dead_time_ms"]:
        d = s["controller_dead_time_ms"]
        lines.append(f"controller dead time per swap (ms): min {min(d):.1f}  "
                     f"max {max(d):.1f}")
    for f in s["faults"]:
        lines.append(f"fault: {f['code']}: {f['reason']}")
    return "\n".join(lines)


async def run_demo(
    swaps: int, speed: float, summary_json: Path | None = None, journal: Path | None = None,
    out: TextIO = sys.stdout, cloud: dict[str, Any] | None = None,
    plc: PlcProtocol = "modbus",
) -> int:
    section = OpcUaSection() if plc == "opcua" else ModbusSection()
    refusal = speed_refusal(speed, SimConfig(speed=speed), section.update_period_s)
    if refusal is not None:
        print(f"swapd demo: {refusal}", file=sys.stderr)
        return 2
    print(f"swapd demo: {swaps} swaps, simulated time x{speed:g} "
          f"(a swap is ~{NOMINAL_SWAP_S:.0f} s simulated, ~{NOMINAL_SWAP_S / speed:.1f} s here), "
          f"PLC over {PLC_NAMES[plc]}", file=out, flush=True)
    progress = Progress(out, speed)
    if cloud is not None:
        c = cloud["cloud"]
        print(f"publishing to mqtt{'s' if 'ca_file' in c else ''}://{c['host']}:{c['port']} "
              f"as station {cloud['station']['id']} (watch: swapnet watch --broker "
              f"mqtt://{c['host']}:{c['port']})", file=out, flush=True)
    # swapd's default PLC poll period, as on a station; the journal in a temporary
    # directory of the rig unless one is given
    async with Rig(speed=speed, vehicles=swaps, journal=journal, observer=progress,
                   poll_period_s=None, capture_log=False, name="swapd-demo",
                   config=cloud, plc=plc) as rig:
        daemon, task = rig.daemon, rig.task
        assert task is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + swaps * NOMINAL_SWAP_S * 4 / speed + 30
        while progress.ended < swaps and loop.time() < deadline and not task.done():
            if daemon.core.state in (State.ABORTED, State.STOPPED) and progress.ended:
                break
            await asyncio.sleep(0.05)
        if loop.time() >= deadline:
            print("demo: time limit reached", file=out)
        summary: dict[str, Any] = daemon.journal.summary(speed)
        summary["speed"] = speed
        summary["swaps_requested"] = swaps
        try:
            await rig.stop(15)
        except TimeoutError:
            print("demo: the daemon did not stop within 15 s", file=out)
    print(format_summary(summary), file=out, flush=True)
    if summary_json is not None:
        summary_json.write_text(json.dumps(summary, indent=2, default=str))
        print(f"summary written to {summary_json}", file=out)
    return 0 if summary["swaps_completed"] == swaps else 1
