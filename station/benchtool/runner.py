"""Run one scenario on a target: follow the station, fire the actions, judge the
expectations, keep a timeline for the report.

The runner sees the station only as swapd shows it (status and journal events through the
local API, telemetry on the broker) plus, on the simulator, the simulator's ground truth.
It polls swapd's status every SAMPLE_S real seconds (the timeline) and reads the journal's
events after the last one seen (states, steps, faults, alarms, swaps: nothing is missed
between two polls, whatever the speed). Actions run in file order, each once its trigger
has fired (counted from the scenario's start); the scenario ends when `until` is reached
and every action has run, `settle_s` later, or fails at `timeout_s`.
"""

from __future__ import annotations

import asyncio
import re
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import structlog

from station.benchtool.result import Check, Marker, MarkerKind, Sample, ScenarioResult
from station.benchtool.scenario import Action, Expect, Scenario, Trigger, Until
from station.benchtool.target import Target

log = structlog.get_logger("swap_bench")

SAMPLE_S = 0.2  # real seconds between two status samples
# while an action waits for a state, step or event, this often: a step may last half a
# real second on the simulator, and the fault it carries must land inside it
TRIGGER_SAMPLE_S = 0.05
RECOVER_MAX_STEPS = 12
RECOVER_WAIT_S = 120.0  # station seconds one recovery command may take
NOT_AT_REST = "not at rest yet"
LEDGER_PLACE = {"vehicle bay": "bay"}


def data_matches(data: Any, match: dict[str, Any]) -> bool:
    """Does an event's data contain `match`? A string in `match` is a regular expression
    searched in the value's text; a table matches a table recursively; anything else
    must be equal."""
    if not isinstance(data, dict):
        return False
    for key, want in match.items():
        if key not in data:
            return False
        have = data[key]
        if isinstance(want, dict):
            if not data_matches(have, want):
                return False
        elif isinstance(want, str):
            if have is None or not re.search(want, str(have)):
                return False
        elif isinstance(want, bool) or isinstance(have, bool):
            if have is not want:
                return False
        elif have != want:
            return False
    return True


@dataclass
class Seen:
    """What the runner has seen of the station so far, in station seconds."""

    speed: float
    wall0: float
    states: list[tuple[float, str, str | None]] = field(default_factory=list)  # t, state, why
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    last_event_id: int = 0
    status: dict[str, Any] = field(default_factory=dict)
    history_before: float = 0.0  # events journaled before this (wall) are not the run's

    def t_of(self, wall: float) -> float:
        return max(0.0, (wall - self.wall0) * self.speed)

    def add_events(self, events: list[dict[str, Any]]) -> None:
        for ev in events:
            self.last_event_id = max(self.last_event_id, int(ev["id"]))
            if float(ev.get("wall") or 0.0) < self.history_before:
                continue  # the journal's history (a bench's): not this scenario's
            t = self.t_of(float(ev.get("wall") or self.wall0))
            self.events.append((t, ev))
            if ev["kind"] == "state":
                d = ev.get("data") or {}
                self.states.append((t, str(d.get("new")), d.get("reason")))

    def of_kind(self, kind: str, match: dict[str, Any] | None = None
                ) -> list[tuple[float, dict[str, Any]]]:
        return [(t, e) for t, e in self.events if e["kind"] == kind
                and (not match or data_matches(e.get("data"), match))]

    def state_entries(self, pattern: str) -> list[tuple[float, str | None]]:
        return [(t, why) for t, s, why in self.states if re.fullmatch(pattern, s)]


def trigger_time(trig: Trigger, seen: Seen) -> float | None:
    """When the trigger fired (station seconds, `after_s` included), None: not yet."""
    n = trig.occurrence
    at: float | None = None
    if trig.at_s is not None:
        at = trig.at_s
    elif trig.state is not None:
        hits = seen.state_entries(trig.state)
        at = hits[n - 1][0] if len(hits) >= n else None
    elif trig.step is not None:
        steps = seen.of_kind("step_started", {"step": f"(?i)^{trig.step}$"})
        at = steps[n - 1][0] if len(steps) >= n else None
    elif trig.event is not None:
        evs = seen.of_kind(trig.event, trig.match)
        at = evs[n - 1][0] if len(evs) >= n else None
    elif trig.swaps_ended is not None:
        ends = seen.of_kind("swap_ended")
        k = trig.swaps_ended + n - 1
        at = ends[k - 1][0] if len(ends) >= k else None
    return None if at is None else at + trig.after_s


def until_time(u: Until, seen: Seen) -> float | None:
    if u.at_s is not None:
        return u.at_s
    if u.state is not None:
        hits = seen.state_entries(u.state)
        return hits[0][0] if hits else None
    if u.swaps_ended is not None:
        ends = seen.of_kind("swap_ended")
        return ends[u.swaps_ended - 1][0] if len(ends) >= u.swaps_ended else None
    assert u.event is not None
    evs = seen.of_kind(u.event, u.match)
    return evs[0][0] if evs else None


class Run:
    """One scenario on one target."""

    def __init__(self, scenario: Scenario, target: Target) -> None:
        self.sc = scenario
        self.target = target
        self.speed = target.speed
        self.result = ScenarioResult(
            name=scenario.name, file=scenario.path, description=scenario.scenario.description,
            target=target.name, verdict="error", speed=self.speed)
        self.seen = Seen(self.speed, time.time())
        self.action_times: list[float | None] = [None] * len(scenario.action)
        self.checks: list[Check] = []
        self.statuses: list[tuple[float, dict[str, Any]]] = []
        self._restarted = True  # the first status gives the state swapd is in

    # ---- timeline -------------------------------------------------------------------
    def now(self) -> float:
        return self.seen.t_of(time.time())

    def mark(self, kind: MarkerKind, label: str, t: float | None = None) -> None:
        self.result.markers.append(Marker(self.now() if t is None else t, kind, label))

    async def observe(self) -> None:
        st = await self.target.status()
        self.seen.status = st
        self.statuses.append((self.now(), st))
        state = str(st.get("packml_state"))
        if st.get("down"):
            self._restarted = True  # swapd is down: the state it comes back in is new
        elif self._restarted:
            # the state swapd starts in (at the start, after a restart) is journaled as
            # no transition: take it from its status
            self._restarted = False
            if not self.seen.states or self.seen.states[-1][1] != state:
                self.seen.states.append((self.now(), state, st.get("reason")))
        while True:
            evs = await self.target.events_after(self.seen.last_event_id)
            if not evs:
                break
            self.seen.add_events(evs)
            for ev in evs:
                if float(ev.get("wall") or 0.0) >= self.seen.history_before:
                    self._event_marker(ev)
        inputs = st.get("inputs") or {}
        packs: dict[str, dict[str, float | None]] = {}
        for p in st.get("pack_details") or []:
            packs[str(p.get("location"))] = {"soc_pct": p.get("soc_pct"),
                                             "temp_c": p.get("max_cell_temp_c")}
        self.result.samples.append(Sample(
            t=self.now(), state=str(st.get("packml_state")), step=st.get("step"),
            lift_height_mm=inputs.get("lift_height"),
            shuttle_position_mm=inputs.get("shuttle_position"), packs=packs))

    def _event_marker(self, ev: dict[str, Any]) -> None:
        d = ev.get("data") or {}
        t = self.seen.t_of(float(ev.get("wall") or self.seen.wall0))
        kind = ev["kind"]
        if kind == "alarm":
            self.mark("alarm", f"{d.get('alarm')} {d.get('location')}", t)
        elif kind == "fault":
            self.mark("event", f"fault {d.get('code')}", t)
        elif kind == "swap_ended":
            self.mark("event", f"swap {d.get('outcome')}", t)

    # ---- actions --------------------------------------------------------------------
    async def perform(self, i: int, action: Action) -> None:
        label = f"#{i + 1} {action.describe()}"
        kind: MarkerKind = {"fault": "fault", "clear_fault": "fault_clear",
                            "operator": "command", "cloud": "cloud",
                            "recover": "command"}.get(action.do, "action")  # type: ignore[assignment]
        self.mark(kind, label)
        if action.do == "operator":
            assert action.command is not None
            answer = await self.target.operator(action.command, dict(action.args))
            self._answered(i, action, bool(answer.get("ok")), str(answer.get("error") or ""))
        elif action.do == "cloud":
            assert action.command is not None
            answer = await self.target.cloud(action.command, dict(action.args))
            ok = answer.get("accepted") is True
            self._answered(i, action, ok, str(answer.get("reason") or answer.get("code")
                                              or ""))
        elif action.do == "recover":
            await self.recover(i)
        else:
            done = await self.target.act(action)
            log.info("bench.action", scenario=self.sc.name, action=label, done=done)

    def _answered(self, i: int, action: Action, ok: bool, why: str) -> None:
        log.info("bench.answer", scenario=self.sc.name, action=i + 1, ok=ok, why=why)
        if action.expect_ok is not None:
            self.checks.append(Check(
                f"action {i + 1} ({action.describe()}) answered ok={action.expect_ok}",
                ok == action.expect_ok,
                f"answered ok={ok}" + (f": {why}" if why else "")))

    async def recover(self, i: int) -> None:
        """The guided recovery, as an operator runs it (docs/operator.md): maintenance
        mode, `recover --next` until home (asked again while the machine is not yet at
        rest), production mode, clear and reset."""
        t = self.target
        ran: list[str] = []

        async def ask(word: str, **args: Any) -> dict[str, Any]:
            return await t.operator(word, args)

        def fail(why: str) -> None:
            self.checks.append(Check(f"action {i + 1} (recover) brings the station home",
                                     False, f"{why}; ran: {ran}"))

        r = await ask("unit_mode", mode="maintenance")
        if not r.get("ok"):
            return fail(f"maintenance mode refused: {r.get('error')}")
        for _ in range(RECOVER_MAX_STEPS):
            r = await ask("recover")
            while not r.get("ok") and NOT_AT_REST in str(r.get("error")):
                await asyncio.sleep(0.05)
                r = await ask("recover")
            if not r.get("ok") and r.get("code") == "nothing_to_do":
                break
            if not r.get("ok"):
                return fail(f"recover refused: {r.get('error')}")
            res = r.get("result") or {}
            seq = res.get("seq")
            ran.append(f"{res.get('command')} {res.get('param', 0)}")
            self.mark("command", f"recover: {ran[-1]}")
            end = time.monotonic() + RECOVER_WAIT_S / self.speed
            while True:
                run = (await t.status()).get("maintenance") or {}
                if run.get("seq") == seq and run.get("state") != "running":
                    break
                if time.monotonic() > end:
                    return fail(f"{ran[-1]} still running after {RECOVER_WAIT_S:g} s")
                await asyncio.sleep(0.05)
            if run.get("state") != "done":
                return fail(f"{ran[-1]} failed: {run.get('reason')}")
        else:
            return fail(f"not home after {RECOVER_MAX_STEPS} commands")
        r = await ask("unit_mode", mode="produce")
        if not r.get("ok"):
            return fail(f"production mode refused: {r.get('error')}")
        end = time.monotonic() + 60.0
        while time.monotonic() < end:
            st = await t.status()
            state = st.get("packml_state")
            if state == "Aborted":
                await ask("clear")
            elif state in ("Stopped", "Complete") and not str(
                    st.get("start_inhibited") or "").startswith("machine away"):
                await ask("reset")
            elif state in ("Idle", "Starting", "Execute"):
                self.checks.append(Check(f"action {i + 1} (recover) brings the station home",
                                         True, f"ran: {ran or 'nothing (already home)'}; "
                                         f"then {state}"))
                return None
            await asyncio.sleep(0.1)
        return fail(f"not back in service: {(await t.status()).get('packml_state')}")

    # ---- the run --------------------------------------------------------------------
    async def run(self) -> ScenarioResult:
        t_real = time.monotonic()
        sc = self.sc
        why_not = self.target.cannot(sc)
        if why_not is not None:
            self.result.verdict, self.result.reason = "not_run", why_not
            return self.result
        self.seen.history_before = time.time()
        try:
            await self.target.start(sc)
            # the target knows its speed once started (the sim takes the scenario's)
            self.speed = self.result.speed = self.seen.speed = self.target.speed
            self.seen.wall0 = time.time()
            differences = getattr(self.target, "setup_differences", None)
            if differences is not None:  # a bench: what it has against the scenario's set-up
                diff = differences()
                self.checks.append(Check("the bench is set up as the scenario says",
                                         not diff, "; ".join(diff) or "as set up"))
            await self.drive()
            await self.judge()
        except Exception as exc:
            self.result.verdict = "error"
            self.result.reason = f"{type(exc).__name__}: {exc}"
            self.result.extra["traceback"] = traceback.format_exc()
            log.warning("bench.error", scenario=sc.name, error=self.result.reason)
        finally:
            try:
                self.result.log_tail = self.target.log_tail()
            finally:
                await self.target.stop()
            self.result.duration_s = round(time.monotonic() - t_real, 2)
        return self.result

    async def drive(self) -> None:
        sc = self.sc
        pending = list(enumerate(sc.action))
        running: asyncio.Task[None] | None = None
        end_at: float | None = None
        while True:
            await self.observe()
            now = self.now()
            if running is not None and running.done():
                running.result()  # an action that raised is the scenario's error
                running = None
            if running is None and pending:
                i, action = pending[0]
                fired = trigger_time(action.when, self.seen)
                if fired is not None and now >= fired:
                    pending.pop(0)
                    self.action_times[i] = now
                    running = asyncio.create_task(self.perform(i, action))
            if end_at is None:
                u = sc.scenario.until
                reached = until_time(u, self.seen)
                if reached is not None and now >= reached and (
                        not u.actions_done or (not pending and running is None)):
                    end_at = now + u.settle_s
            if end_at is not None and now >= end_at and running is None:
                return
            if now > sc.scenario.timeout_s:
                if running is not None:
                    running.cancel()
                left = [a.describe() for _, a in pending]
                raise_timeout = (f"timed out after {sc.scenario.timeout_s:g} station s "
                                 f"waiting for until ({self._until_text()})"
                                 + (f"; actions not run: {left}" if left else ""))
                self.checks.append(Check("scenario ends in time", False, raise_timeout))
                return
            waiting = running is None and pending and pending[0][1].when.at_s is None
            await asyncio.sleep(TRIGGER_SAMPLE_S if waiting else SAMPLE_S)

    def _until_text(self) -> str:
        u = self.sc.scenario.until
        for k in ("state", "swaps_ended", "event", "at_s"):
            if getattr(u, k) is not None:
                return f"{k} = {getattr(u, k)}"
        return "?"

    # ---- expectations ---------------------------------------------------------------
    async def judge(self) -> None:
        telemetry = await self.target.telemetry() if any(
            e.kind == "telemetry" for e in self.sc.expect) else []
        truth = await self.target.ground_truth()
        for e in self.sc.expect:
            self.checks.append(self.check(e, telemetry, truth))
        self.result.checks = self.checks
        failures = self.result.failures
        if failures:
            self.result.verdict = "failed"
            self.result.reason = f"{failures[0].name}: {failures[0].detail}"
        else:
            self.result.verdict = "passed"
            self.result.reason = ""

    def _not_before(self, e: Expect) -> float:
        if e.after is None:
            return 0.0
        t = self.action_times[e.after - 1]
        return float("inf") if t is None else t

    def check(self, e: Expect, telemetry: list[dict[str, Any]],
              truth: dict[str, Any] | None) -> Check:
        name = e.describe()
        seen = self.seen
        lo_t = self._not_before(e)
        hi_t = e.within_s if e.within_s is not None else float("inf")
        if e.kind == "state":
            assert e.state is not None
            hits = [(t, why) for t, why in seen.state_entries(e.state) if t >= lo_t]
            if e.reason is not None:
                hits = [(t, why) for t, why in hits if why and re.search(e.reason, why)]
            inside = [h for h in hits if h[0] <= hi_t]
            if inside:
                return Check(name, True, f"reached at t={inside[0][0]:.1f} s"
                             + (f" ({inside[0][1]})" if inside[0][1] else ""))
            return Check(name, False, "not reached" + (
                f" within {hi_t:g} s (first at t={hits[0][0]:.1f} s)" if hits else "")
                + f"; states seen: {self._states_text()}")
        if e.kind == "final_state":
            assert e.final_state is not None
            st = seen.status
            state, why = str(st.get("packml_state")), st.get("reason")
            ok = bool(re.fullmatch(e.final_state, state)) and (
                e.reason is None or bool(why and re.search(e.reason, str(why))))
            return Check(name, ok, f"ended in {state}" + (f" ({why})" if why else ""))
        if e.kind in ("event", "telemetry"):
            lo, hi = e.bounds()
            if e.kind == "event":
                assert e.event is not None
                found = [t for t, _ in seen.of_kind(e.event, e.match) if lo_t <= t <= hi_t]
            else:
                found = [seen.t_of(m["wall"]) for m in telemetry
                         if m["leaf"] == e.telemetry and data_matches(m["payload"], e.match)]
                found = [t for t in found if t <= hi_t]
            n = len(found)
            ok = n >= lo and (hi is None or n <= hi)
            detail = f"seen {n}" + (f", first at t={found[0]:.1f} s" if found else "")
            if not ok and e.kind == "event" and e.event is not None:
                kinds = sorted({ev['kind'] for _, ev in seen.events})
                same = [ev.get("data") for _, ev in seen.of_kind(e.event)][:3]
                detail += f"; events of that kind: {same}" if same else \
                    f"; kinds seen: {kinds}"
            if not ok and e.kind == "telemetry":
                detail += f"; messages on {e.telemetry}: " + str(
                    sum(1 for m in telemetry if m["leaf"] == e.telemetry))
            return Check(name, ok, detail)
        if e.kind == "swaps":
            ended = [ev.get("data") or {} for _, ev in seen.of_kind("swap_ended")]
            done = sum(1 for d in ended if d.get("outcome") == "completed")
            aborted = sum(1 for d in ended if d.get("outcome") != "completed")
            ok = (e.completed is None or done == e.completed) and (
                e.aborted is None or aborted == e.aborted)
            return Check(name, ok, f"completed {done}, aborted or stopped {aborted}" + (
                "; " + "; ".join(f"{d.get('swap_id')} {d.get('outcome')} at "
                                 f"{d.get('step')}: {d.get('reason')}"
                                 for d in ended if d.get("outcome") != "completed")
                if aborted else ""))
        if e.kind == "ledger":
            return self._ledger(name, e, truth)
        if e.kind == "status":
            return self._status_bounds(name, e)
        # observer
        if truth is None:
            return Check(name, True, "no ground truth on this target", skipped=True)
        v = truth.get("violations") or []
        return Check(name, len(v) == e.violations,
                     f"{len(v)} violation(s)" + (f": {v[:3]}" if v else ""))

    def _status_bounds(self, name: str, e: Expect) -> Check:
        assert e.status is not None
        values = [(t, v) for t, v in self.status_series(e.status) if v is not None]
        if not values:
            return Check(name, False, f"{e.status} never had a number in the status")
        problems = []
        hi = max(values, key=lambda tv: tv[1])
        lo = min(values, key=lambda tv: tv[1])
        if e.max is not None and hi[1] > e.max:
            problems.append(f"{hi[1]:g} > {e.max:g} at t={hi[0]:.1f} s")
        if e.min is not None and lo[1] < e.min:
            problems.append(f"{lo[1]:g} < {e.min:g} at t={lo[0]:.1f} s")
        if e.reach is not None and hi[1] < e.reach:
            problems.append(f"never reached {e.reach:g} (highest {hi[1]:g})")
        return Check(name, not problems, "; ".join(problems) or
                     f"{len(values)} samples within {lo[1]:g}..{hi[1]:g}")

    def status_series(self, key: str) -> list[tuple[float, float | None]]:
        return [(t, _number(_dig(st, key))) for t, st in self.statuses]

    def _states_text(self) -> str:
        return " > ".join(f"{s}@{t:.0f}" for t, s, _ in self.seen.states[-12:])

    def _ledger(self, name: str, e: Expect, truth: dict[str, Any] | None) -> Check:
        # swapd's ledger names places as an operator reads them ("vehicle bay", "slot 3")
        ledger = {LEDGER_PLACE.get(str(k), str(k).replace("slot ", "slot:")): v
                  for k, v in (self.seen.status.get("packs") or {}).items()}
        where = (truth or {}).get("packs") if truth is not None else None
        problems: list[str] = []
        for loc, want in e.packs.items():
            have = ledger.get(loc)
            if want == "empty":
                if loc in ledger and have is not None:
                    problems.append(f"{loc}: ledger {have}, expected empty")
            elif want == "any":
                if loc not in ledger:
                    problems.append(f"{loc}: ledger has no pack there")
            elif have != want:
                problems.append(f"{loc}: ledger {have}, expected {want}")
            if where is not None:
                real = where.get(loc)
                if want == "empty" and real is not None:
                    problems.append(f"{loc}: the simulator has pack {real} there")
                elif isinstance(want, int) and real != want:
                    problems.append(f"{loc}: the simulator has {real} there")
        return Check(name, not problems, "; ".join(problems) or f"ledger {ledger}")


def _dig(d: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)
    return d


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


async def run_scenario(scenario: Scenario, target: Target) -> ScenarioResult:
    return await Run(scenario, target).run()
