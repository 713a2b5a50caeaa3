"""The `bench` target: a running station's swapd on a hardware-in-the-loop bench.

swapd is reached through its local API (status, the journal's events, operator
commands), the back end through the bench's MQTT broker (signed commands, telemetry), and
faults are made by the adapters the bench config names (relay coils, the engineer). The
physical set-up (rack packs, ambient, cars) is the bench's: it is shown to the engineer
(setup = "prompt") or taken as given ("assume"), and compared with what swapd reports
(`setup_differences`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from station.benchtool.adapters import AdapterError, FaultMeans, PromptAdapter
from station.benchtool.bench_config import BenchConfig, BrokerSection
from station.benchtool.cloud_side import Backend
from station.benchtool.scenario import Action, Scenario
from station.benchtool.target import TargetError, down_status
from station.cloud.swapnet import ConsoleError
from station.local_api import EVENTS_MAX, LocalApiError, request

log = logging.getLogger("swap-bench.bench")

SOC_TOLERANCE_PCT = 5.0  # a bench pack's SOC within this of the scenario's counts as it
STATES_READY = ("Idle", "Stopped", "Aborted", "Complete", "Execute")


class BenchTarget:
    """A `Target` on a bench: `BenchTarget(load_bench_config(path), prompt=PromptAdapter()
    or None)`; `prompt` None means no one can be asked (faults that need the prompt, and
    setup = "prompt", make a scenario not run)."""

    name = "bench"

    def __init__(self, config: BenchConfig, prompt: PromptAdapter | None = None) -> None:
        self.config = config
        self.bench = config.bench
        self.prompt = prompt
        self.means = FaultMeans.from_config(config, prompt)
        self._differences: list[str] = []
        self._backend: Backend | None = None
        self.notes: list[str] = []  # what start() saw or assumed (for the report)
        self._swapd_killed = False  # by a scenario's action: status() is down until back

    @property
    def speed(self) -> float:
        return 1.0

    @property
    def origin(self) -> str:
        return self.config.path or "the bench config"

    # ---- what this bench cannot do ------------------------------------------------------
    def cannot(self, scenario: Scenario) -> str | None:
        b, origin = self.bench, self.origin
        if scenario.setup.swapd:
            return ("sets swapd configuration ([setup] swapd); a bench runs its own "
                    f"configuration ({origin})")
        if b.setup == "prompt" and self.prompt is None and _physical(scenario):
            return (f"{origin} says setup = \"prompt\" and no one can be asked (not a "
                    "terminal; give --yes to be asked anyway)")
        for a in scenario.action:
            if a.do == "fault":
                assert a.fault is not None
                found = self.means.find(a.fault, a.target, a.value)
                if isinstance(found, str):
                    return found
            elif a.do == "clear_fault":
                assert a.fault is not None
                if self.means.for_clear(a.fault, a.target) is None:
                    return str(self.means.find(a.fault, a.target))
            elif a.do in ("cloud", "broker") and b.broker is None:
                return f"action {a.describe()}: needs [bench.broker] in {origin}"
            elif a.do == "broker" and b.broker is not None and b.broker.down is None:
                return f"action {a.describe()}: needs [bench.broker] down and up in {origin}"
            elif a.do == "swapd" and b.swapd is None:
                return f"action {a.describe()}: needs [bench.swapd] kill and start in {origin}"
        if b.broker is None:
            if any(e.kind == "telemetry" for e in scenario.expect):
                return f"expects telemetry: needs [bench.broker] in {origin}"
            if scenario.needs_cloud:
                return f"sets up the cloud side: needs [bench.broker] in {origin}"
        return None

    # ---- life cycle ---------------------------------------------------------------------
    async def start(self, scenario: Scenario) -> None:
        self._differences = []
        self.notes = []
        try:
            st = await self.status()
        except TargetError as exc:
            raise TargetError(f"bench {self.bench.name}: swapd does not answer: {exc}") \
                from exc
        state = str(st.get("packml_state"))
        self.notes.append(f"swapd is {state}"
                          + (f" ({st['reason']})" if st.get("reason") else ""))
        if state not in STATES_READY:
            self.notes.append(f"swapd starts the scenario in {state}, not Idle")
        for r in self.means.relays:
            await r.connect()
        await self._physical_setup(scenario)
        self._differences = compare_rack(scenario, await self.status())
        if self.bench.broker is not None and (scenario.needs_cloud or any(
                e.kind == "telemetry" for e in scenario.expect)):
            await self._start_backend(self.bench.broker)
            try:
                assert self._backend is not None
                await self._backend.set_up(scenario.setup)
            except ConsoleError as exc:
                raise TargetError(str(exc)) from exc

    def setup_differences(self) -> list[str]:
        """How swapd's view of the bench differed from the scenario's set-up at start."""
        return list(self._differences)

    async def stop(self) -> None:
        failure: AdapterError | None = None
        try:
            await self.means.close()
        except AdapterError as exc:
            failure = exc
        if self._backend is not None:
            await self._backend.stop()
            self._backend = None
        if failure is not None:
            raise failure

    # ---- swapd's local API --------------------------------------------------------------
    async def _api(self, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            return await request(self.bench.socket, payload, timeout=self.bench.api_timeout_s)
        except (OSError, TimeoutError, LocalApiError) as exc:
            why = type(exc).__name__ if not str(exc) else str(exc)
            raise TargetError(f"swapd's local API at {self.bench.socket}: {why}") from exc

    async def status(self) -> dict[str, Any]:
        if self._swapd_killed:  # by the scenario: down until it answers again
            try:
                resp = await self._api({"cmd": "status"})
            except TargetError as exc:
                return down_status(str(exc))
            self._swapd_killed = False
        else:
            resp = await self._api({"cmd": "status"})
        if not resp.get("ok") or not isinstance(resp.get("status"), dict):
            raise TargetError(f"status refused: {resp.get('error', resp)}")
        return dict(resp["status"])

    async def events_after(self, event_id: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        after = event_id
        while True:
            resp = await self._api({"cmd": "events", "after": after, "limit": EVENTS_MAX})
            if not resp.get("ok"):
                raise TargetError(f"events refused: {resp.get('error', resp)}")
            page = list(resp.get("events") or [])
            out += page
            if len(page) < EVENTS_MAX:
                return out
            after = int(page[-1]["id"])

    async def operator(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        return await self._api({**args, "cmd": command})

    # ---- the back end -------------------------------------------------------------------
    async def cloud(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        if self._backend is None:
            raise TargetError(f"cloud {command}: no [bench.broker] in {self.origin}")
        try:
            return await self._backend.command(command, args)
        except (ConsoleError, OSError) as exc:
            raise TargetError(f"cloud {command}: {exc}") from exc

    async def _start_backend(self, b: BrokerSection) -> None:
        """The back end on the bench's broker: telemetry collected from now on (kept across
        a broker outage), signed commands with the bench's key."""
        from station.cloud.signing import KeyFileError, load_private_key

        try:
            key = load_private_key(b.signing_key)
        except (KeyFileError, OSError) as exc:
            raise TargetError(f"[bench.broker] signing_key: {exc}") from exc
        self._backend = Backend(_broker(b), b.prefix, b.station_id, key, b.key_id,
                                ttl_s=b.ttl_s, timeout_s=b.timeout_s)
        try:
            await self._backend.start()
        except ConsoleError as exc:
            await self._backend.stop()
            self._backend = None
            raise TargetError(f"telemetry from {b.url}: {exc}") from exc

    async def telemetry(self) -> list[dict[str, Any]]:
        return list(self._backend.received) if self._backend is not None else []

    # ---- actions ------------------------------------------------------------------------
    async def act(self, action: Action) -> str:
        a = action
        if a.do == "fault":
            assert a.fault is not None
            found = self.means.find(a.fault, a.target, a.value)
            if isinstance(found, str):
                raise TargetError(found)
            return await found.make(a.fault, a.target, a.value)
        if a.do == "clear_fault":
            assert a.fault is not None
            adapter = self.means.for_clear(a.fault, a.target)
            if adapter is None:
                raise TargetError(str(self.means.find(a.fault, a.target)))
            return await adapter.clear(a.fault, a.target)
        if a.do == "swapd":
            sw = self.bench.swapd
            if sw is None:
                raise TargetError(f"swapd {a.state}: no [bench.swapd] in {self.origin}")
            argv = sw.kill if a.state == "kill" else sw.start
            await run_command(argv, sw.timeout_s, f"swapd {a.state}")
            self._swapd_killed = True  # down (kill), or starting (start) until it answers
            return f"swapd {a.state}: {' '.join(argv)}"
        if a.do == "broker":
            b = self.bench.broker
            if b is None or b.down is None or b.up is None:
                raise TargetError(f"broker {a.state}: no [bench.broker] down / up in "
                                  f"{self.origin}")
            argv = b.down if a.state == "down" else b.up
            await run_command(argv, b.timeout_s * 3, f"broker {a.state}")
            return f"broker {a.state}: {' '.join(argv)}"
        raise TargetError(f"action {a.describe()}: the runner sends it through operator() "
                          "or cloud(), not act()")

    async def ground_truth(self) -> dict[str, Any] | None:
        return None

    def log_tail(self) -> str:
        # swapd's log is the bench's journald (or its own file); swap-bench does not assume
        # either: the report points at the time of the failure instead.
        return ""

    # ---- the physical set-up ------------------------------------------------------------
    async def _physical_setup(self, scenario: Scenario) -> None:
        lines = describe_setup(scenario)
        if not _physical(scenario):
            return
        if self.bench.setup == "assume" or self.prompt is None:
            for line in lines:
                log.info("set-up (assumed): %s", line)
            self.notes.append("physical set-up assumed")
            return
        self.prompt.say(f"Scenario {scenario.name}: arrange the bench as follows.")
        for line in lines:
            self.prompt.say(f"  {line}")
        try:
            await self.prompt.ask("Press Enter when the bench is set up; type 'skip' to "
                                  "abandon this scenario")
        except AdapterError as exc:
            raise TargetError(f"set-up not confirmed: {exc}") from exc


def _physical(scenario: Scenario) -> bool:
    s = scenario.setup
    return bool(s.rack or s.vehicles or s.vehicle_count or s.ambient_c != 25.0)


def describe_setup(scenario: Scenario) -> list[str]:
    """The physical set-up in lines for the engineer."""
    s = scenario.setup
    out = [f"ambient {s.ambient_c:g} degC"]
    for p in sorted(s.rack, key=lambda p: p.slot):
        temp = "ambient" if p.temp_c is None else f"{p.temp_c:g} degC"
        serial = f", serial {p.serial}" if p.serial is not None else ""
        out.append(f"slot {p.slot}: {p.chemistry} family {p.family}, SOC {p.soc:g} %, "
                   f"SOH {p.soh:g} %, {temp}{serial}")
    if not s.rack:
        out.append("rack: the bench's usual packs")
    for i, v in enumerate(s.vehicles, start=1):
        temp = "warm (just driven)" if v.temp_c is None else f"{v.temp_c:g} degC"
        out.append(f"car {i} at t={v.at_s:g} s: VIN {v.vin or '(any)'}, pack {v.chemistry} "
                   f"family {v.family}, SOC {v.soc:g} %, SOH {v.soh:g} %, {temp}")
    if not s.vehicles:
        out.append(f"cars: {s.vehicle_count}")
    return out


def compare_rack(scenario: Scenario, status: dict[str, Any]) -> list[str]:
    """The scenario's rack against swapd's `pack_details`: one line per difference."""
    details = status.get("pack_details")
    if not scenario.setup.rack:
        return []
    if not isinstance(details, list):
        return ["swapd's status has no pack_details: the rack cannot be compared"]
    seen = {str(d.get("location")): d for d in details if isinstance(d, dict)}
    out: list[str] = []
    for p in sorted(scenario.setup.rack, key=lambda p: p.slot):
        loc = f"slot:{p.slot}"
        d = seen.get(loc)
        if d is None:
            out.append(f"{loc}: the scenario has a {p.chemistry} pack, swapd reports none")
            continue
        if d.get("chemistry") is not None and d["chemistry"] != p.chemistry:
            out.append(f"{loc}: chemistry {d['chemistry']}, the scenario says {p.chemistry}")
        if d.get("family") is not None and d["family"] != p.family:
            out.append(f"{loc}: family {d['family']}, the scenario says {p.family}")
        soc = d.get("soc_pct")
        if isinstance(soc, int | float) and abs(soc - p.soc) > SOC_TOLERANCE_PCT:
            out.append(f"{loc}: SOC {soc:g} %, the scenario says {p.soc:g} %")
        if p.serial is not None and d.get("serial") not in (None, p.serial):
            out.append(f"{loc}: serial {d['serial']}, the scenario says {p.serial}")
    wanted = {f"slot:{p.slot}" for p in scenario.setup.rack}
    for loc in sorted(seen):
        if loc.startswith("slot:") and loc not in wanted:
            out.append(f"{loc}: swapd reports a pack the scenario does not have")
    return out


async def run_command(argv: list[str], timeout_s: float, what: str) -> None:
    """Run a configured command (no shell); TargetError on a failure or a timeout."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    except OSError as exc:
        raise TargetError(f"{what}: cannot run {argv[0]}: {exc.strerror or exc}") from exc
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise TargetError(f"{what}: {' '.join(argv)} did not end within {timeout_s:g} s") \
            from None
    if proc.returncode != 0:
        tail = out.decode(errors="replace").strip()[-300:]
        raise TargetError(f"{what}: {' '.join(argv)} exited {proc.returncode}"
                          + (f": {tail}" if tail else ""))


def _broker(b: BrokerSection) -> Any:
    from station.cloud.swapnet import parse_broker

    return parse_broker(b.url, str(b.ca) if b.ca else None, str(b.cert) if b.cert else None,
                        str(b.key) if b.key else None, b.username,
                        str(b.password_file) if b.password_file else None)


__all__ = ["BenchTarget", "compare_rack", "describe_setup", "run_command"]
