"""The `sim` target: the simulated station and swapd, started here for one scenario.

The simulator runs in this process, swapd as a `swapd` subprocess (station.rig.ProcessRig:
Modbus TCP or OPC UA on loopback, CAN over udp_multicast, the local API on a Unix socket),
so that the runner talks to swapd exactly as on a bench and a scenario may kill it. A
scenario that needs the cloud gets a mosquitto of its own (plain MQTT on loopback) and a
signing key swapd trusts. Cars are held until swapd is up and the cloud set-up is in
(authorisations, reservations, power cap); the scenario's clock starts then.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from station.benchtool.cloud_side import Backend
from station.benchtool.scenario import Action, Scenario
from station.benchtool.target import TargetError, down_status
from station.cloud import swapnet

SETUP_TIMEOUT_S = 60.0  # real seconds for swapd to answer and the cloud set-up to land
SERIAL_BASE = 0x5C000000
# swapd's first reconnection to the broker after an outage comes this long after it (the
# back end's comes sooner: it is listening before the station delivers its backlog)
STATION_RETRY_S = 1.0  # rack pack serials of a scenario: this + the slot


class SimTarget:
    name = "sim"

    def __init__(self, *, plc: str | None = None, keep_dir: Path | None = None) -> None:
        self.plc = plc
        self.keep_dir = keep_dir  # where the workdir of each scenario is kept (reports)
        self._speed = 20.0
        self._rig: Any = None
        self._broker: Any = None
        self._backend: Backend | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._workdir: Path | None = None
        self._station_id = "PSS-BENCH-SIM"

    @property
    def speed(self) -> float:
        return self._speed

    def cannot(self, scenario: Scenario) -> str | None:
        from sim_hw.broker import find_mosquitto

        if scenario.needs_cloud and find_mosquitto() is None:
            return "needs the cloud: mosquitto is not installed (apt-get install mosquitto)"
        return None

    # ---- set-up ---------------------------------------------------------------------
    def sim_overrides(self, scenario: Scenario) -> dict[str, Any]:
        from sim_hw.config import ArrivalsConfig, RackPackConfig, ScheduledArrival

        s = scenario.setup
        sim: dict[str, Any] = {"ambient_c": s.ambient_c, "hold_arrivals": True,
                               "vehicles": s.cars}
        if s.slots is not None:
            sim["station"] = {"slots": s.slots}
        if s.rack:
            sim["rack_pack"] = [RackPackConfig(
                slot=p.slot, serial=p.serial or SERIAL_BASE + p.slot, family=p.family,
                chemistry=p.chemistry, soc=p.soc, soh=p.soh, temp_c=p.temp_c) for p in s.rack]
        if s.vehicles:
            sim["arrivals"] = ArrivalsConfig(patience_s=None, schedule=[ScheduledArrival(
                at_s=v.at_s, family=v.family, chemistry=v.chemistry, soc=v.soc, soh=v.soh,
                temp_c=v.temp_c, vin=v.vin) for v in s.vehicles])
        return sim

    def swapd_overrides(self, scenario: Scenario) -> dict[str, Any]:
        cfg: dict[str, Any] = {"operation": {"auto_start": scenario.setup.auto_start},
                               "station": {"id": self._station_id}}
        for section, values in scenario.setup.swapd.items():
            if isinstance(values, dict) and isinstance(cfg.get(section), dict):
                cfg[section] = {**cfg[section], **values}
            else:
                cfg[section] = values
        return cfg

    async def start(self, scenario: Scenario) -> None:
        from station.rig import ProcessRig

        self._speed = scenario.scenario.speed
        self._tmp = tempfile.TemporaryDirectory(prefix=f"swap-bench-{scenario.name}-")
        self._workdir = Path(self._tmp.name)
        config = self.swapd_overrides(scenario)
        if scenario.needs_cloud:
            config = {**config, **await self._start_cloud()}
        self._rig = ProcessRig(speed=self._speed, vehicles=scenario.setup.cars,
                               sim=self.sim_overrides(scenario), config=config,
                               workdir=self._workdir, name=scenario.name[:20],
                               plc=scenario.scenario.plc or self.plc)  # type: ignore[arg-type]
        await self._rig.start()
        await self._station_ready()
        if self._backend is not None:
            await self._backend.start()
            try:
                await self._backend.set_up(scenario.setup)
            except swapnet.ConsoleError as exc:
                raise TargetError(f"set-up: {exc}") from exc
        self._rig.sim.release_arrivals()

    async def _station_ready(self) -> None:
        """swapd answers and has heard every rack pack (a reservation or a pack choice
        before that would see an empty rack)."""
        rig = self._rig
        loop = asyncio.get_running_loop()
        end = loop.time() + SETUP_TIMEOUT_S
        rack = {s for s in (rig.sim.truth().get("rack") or {}).values() if s is not None}
        while True:
            st = await rig.daemon.status(timeout=SETUP_TIMEOUT_S)
            heard = {p.get("serial") for p in st.get("pack_details") or []}
            if rack <= heard:
                return
            if loop.time() > end:
                raise TargetError(f"swapd not ready after {SETUP_TIMEOUT_S:g} s: state "
                                  f"{st.get('packml_state')}, rack packs not heard: "
                                  f"{sorted(rack - heard)}")
            await asyncio.sleep(0.1)

    async def _start_cloud(self) -> dict[str, Any]:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from sim_hw.broker import Broker
        from station.cloud.signing import public_pem

        assert self._workdir is not None
        self._broker = Broker(self._workdir / "broker", tls=False)
        await asyncio.to_thread(self._broker.start)
        keys = self._workdir / "keys"
        keys.mkdir(mode=0o755)
        key = Ed25519PrivateKey.generate()
        (keys / "bench.pub").write_bytes(public_pem(key.public_key()))
        prefix = "swapnet/v1"
        self._backend = Backend(swapnet.Broker(self._broker.host, self._broker.port, False),
                                prefix, self._station_id, key, "bench")
        return {"cloud": {"enabled": True, "host": self._broker.host,
                          "port": self._broker.port, "trusted_keys_dir": str(keys),
                          "topic_prefix": prefix, "reconnect_min_s": STATION_RETRY_S,
                          "reconnect_max_s": 2 * STATION_RETRY_S, "rack_period_s": 1.0,
                          "connect_timeout_s": 3.0}}

    # ---- running --------------------------------------------------------------------
    async def stop(self) -> None:
        try:
            if self._backend is not None:
                await self._backend.stop()
            if self._rig is not None:
                with contextlib.suppress(Exception):
                    self._rig.sim.faults.clear_all()
                await self._rig.stop()
        finally:
            if self._broker is not None:
                await asyncio.to_thread(self._broker.stop)
            if self._tmp is not None:
                if self.keep_dir is not None and self._workdir is not None:
                    dest = self.keep_dir / self._workdir.name
                    shutil.copytree(self._workdir, dest, dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns("*.sock", "pki"))
                self._tmp.cleanup()
            self._rig = self._broker = self._backend = self._tmp = None

    async def status(self) -> dict[str, Any]:
        if not self._rig.daemon.running:  # killed by the scenario
            return down_status("swapd is not running")
        return await self._rig.daemon.status(timeout=SETUP_TIMEOUT_S)

    async def events_after(self, event_id: int) -> list[dict[str, Any]]:
        from station.local_api import request

        if not self._rig.daemon.running:
            return []
        r = await request(self._rig.daemon.socket, {"cmd": "events", "after": event_id,
                                                    "limit": 500}, timeout=10.0)
        if not r.get("ok"):
            raise TargetError(f"events: {r.get('error')}")
        return list(r["events"])

    async def operator(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        from station.local_api import request

        return await request(self._rig.daemon.socket, {"cmd": command, **args}, timeout=10.0)

    async def cloud(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        if self._backend is None:
            raise TargetError("the scenario has no cloud (setup.cloud)")
        return await self._backend.command(command, args)

    async def act(self, action: Action) -> str:
        rig = self._rig
        if action.do == "fault":
            assert action.fault is not None
            info = rig.sim.faults.set(action.fault, action.value, action.target)
            return f"fault {info}"
        if action.do == "clear_fault":
            assert action.fault is not None
            return f"cleared {rig.sim.faults.clear(action.fault)}"
        if action.do == "broker":
            if self._broker is None:
                raise TargetError("no broker: the scenario has no cloud")
            if action.state == "down":
                await asyncio.to_thread(self._broker.stop)
                return "broker down"
            await asyncio.to_thread(self._broker.start)
            if self._backend is not None:
                await self._backend.subscribed()
            return "broker up"
        if action.do == "swapd":
            if action.state == "kill":
                await asyncio.to_thread(rig.daemon.kill)
                return "swapd killed (SIGKILL)"
            rig.daemon.start()
            await rig.daemon.status(timeout=SETUP_TIMEOUT_S)
            return "swapd started"
        raise TargetError(f"the sim target cannot {action.do}")

    async def telemetry(self) -> list[dict[str, Any]]:
        return list(self._backend.received) if self._backend is not None else []

    async def ground_truth(self) -> dict[str, Any] | None:
        rig = self._rig
        truth = rig.sim.truth()
        packs: dict[str, Any] = {"bay": truth.get("vehicle_bay"),
                                 "shuttle": truth.get("shuttle"),
                                 "stacker": truth.get("stacker")}
        for slot, serial in (truth.get("rack") or {}).items():
            packs[f"slot:{slot}"] = serial
        rig.sim.sync()
        return {"packs": packs, "violations": list(rig.sim.observer.violations)}

    def log_tail(self) -> str:
        if self._rig is None:
            return ""
        return str(self._rig.daemon.log_tail(4000))
