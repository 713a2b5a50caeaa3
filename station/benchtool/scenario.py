"""The scenario file (TOML): a test written once, run on the simulator and on a bench.

    [scenario]   name, description, covers, until, timeout_s, speed (sim)
    [setup]      ambient, rack packs, vehicles, authorisations, reservations, power cap
    [[action]]   when (a time, a state, a step, an event) -> do (fault, clear_fault,
                 operator, cloud, broker, swapd, recover)
    [[expect]]   what must be seen: a state (and its reason), a journal event, swap
                 counts, the final state, the pack ledger, published telemetry, the
                 simulator's observer

Times are station seconds since the scenario started (on the simulator: simulated
seconds, so a scenario reads the same at any speed). Patterns are Python regular
expressions: a state or step pattern must match the whole name (`Abort.*`), a reason or a
string in `match` is searched in the text (`estop`). docs/bench.md is the reference.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from station.benchtool.tomlfile import first_problem, read_toml

Chemistry = Literal["nmc", "lfp", "sodium_ion"]
NAME = r"^[a-z0-9][a-z0-9_.-]{0,79}$"
VIN = r"^[A-HJ-NPR-Z0-9]{17}$"
STEPS = ("IDENTIFY", "POSITION", "LIFT", "UNLOCK", "REMOVE", "STORE", "FETCH", "INSTALL",
         "LOCK", "CHECK", "LOWER", "RELEASE")
OPERATOR_COMMANDS = ("reset", "clear", "start", "stop", "hold", "unhold", "suspend",
                     "unsuspend", "abort", "pack_release", "slot_maintenance", "unit_mode",
                     "recover", "maintenance_command")
CLOUD_COMMANDS = ("reserve_pack", "cancel_reservation", "set_authorisations", "set_power_cap",
                  "slot_maintenance", "request_stop", "request_hold", "snapshot")


class ScenarioError(ValueError):
    """A scenario file that cannot be run as written: the message names the file and key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _regex(v: str | None, what: str) -> str | None:
    if v is not None:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"{what} {v!r}: not a regular expression: {exc}") from exc
    return v


class Trigger(_Strict):
    """When: at a time, or the n-th time the station reaches a state, a step or a journal
    event, or once n swaps have ended; then `after_s` later."""

    at_s: float | None = Field(default=None, ge=0)
    state: str | None = None  # PackML state label, whole match: "Held", "Abort.*"
    step: str | None = None  # swap step name: "LIFT"
    event: str | None = None  # journal event kind: "fault", "swap_ended"
    match: dict[str, Any] = Field(default_factory=dict)  # the event's data must contain
    swaps_ended: int | None = Field(default=None, ge=1)
    occurrence: int = Field(default=1, ge=1)
    after_s: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _one(self) -> Trigger:
        given = [k for k in ("at_s", "state", "step", "event", "swaps_ended")
                 if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of at_s, state, step, event, swaps_ended "
                             f"(given: {', '.join(given) or 'none'})")
        if self.match and self.event is None:
            raise ValueError("match applies to an event trigger only")
        _regex(self.state, "state")
        if self.step is not None and self.step not in STEPS:
            raise ValueError(f"step {self.step!r}: one of {', '.join(STEPS)}")
        return self

    def describe(self) -> str:
        if self.at_s is not None:
            what = f"t={self.at_s:g} s"
        elif self.state is not None:
            what = f"state {self.state}"
        elif self.step is not None:
            what = f"step {self.step}"
        elif self.event is not None:
            what = f"event {self.event}" + (f" {self.match}" if self.match else "")
        else:
            what = f"{self.swaps_ended} swap(s) ended"
        if self.occurrence > 1:
            what += f" (#{self.occurrence})"
        return what + (f" + {self.after_s:g} s" if self.after_s else "")


ActionKind = Literal["fault", "clear_fault", "operator", "cloud", "broker", "swapd",
                     "recover"]


class Action(_Strict):
    """What to do when the trigger fires.

    fault / clear_fault   `fault` (a simulator fault name: docs/bench.md lists them, e.g.
                          estop, light_curtain, pack_over_temp, can_bus_off, plc_silent),
                          optional `target` and `value`
    operator              `command` (a swapctl word: reset, clear, start, hold, unhold,
                          abort, unit_mode, recover, ...) with `args`; `expect_ok` (when
                          given, the answer must be this or the scenario fails)
    cloud                 `command` (a signed back-end command) with `args`; the runner
                          fills in the timestamps a command needs; `expect_ok` as above
    broker                `state` "down" or "up": the MQTT broker stops or starts
    swapd                 `state` "kill" (SIGKILL), "start"
    recover               the guided recovery from an operator's seat: maintenance mode,
                          `recover --next` until home, production mode, reset
    """

    when: Trigger
    do: ActionKind
    fault: str | None = None
    target: str | int | None = None
    value: float | str | None = None
    command: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    expect_ok: bool | None = None
    state: Literal["down", "up", "kill", "start"] | None = None

    @model_validator(mode="after")
    def _fields(self) -> Action:
        need: dict[str, tuple[str, ...]] = {
            "fault": ("fault",), "clear_fault": ("fault",), "operator": ("command",),
            "cloud": ("command",), "broker": ("state",), "swapd": ("state",), "recover": ()}
        allowed = {"fault": {"fault", "target", "value"}, "clear_fault": {"fault", "target"},
                   "operator": {"command", "args", "expect_ok"},
                   "cloud": {"command", "args", "expect_ok"},
                   "broker": {"state"}, "swapd": {"state"}, "recover": set()}[self.do]
        for key in need[self.do]:
            if getattr(self, key) is None:
                raise ValueError(f'do = "{self.do}" needs `{key}`')
        for key in ("fault", "target", "value", "command", "expect_ok", "state"):
            if getattr(self, key) is not None and key not in allowed:
                raise ValueError(f'`{key}` does not apply to do = "{self.do}"')
        if self.args and "args" not in allowed:
            raise ValueError(f'`args` does not apply to do = "{self.do}"')
        if self.do == "operator" and self.command not in OPERATOR_COMMANDS:
            raise ValueError(f"operator command {self.command!r}: one of "
                             + ", ".join(OPERATOR_COMMANDS))
        if self.do == "cloud" and self.command not in CLOUD_COMMANDS:
            raise ValueError(f"cloud command {self.command!r}: one of "
                             + ", ".join(CLOUD_COMMANDS))
        if self.do == "broker" and self.state not in ("down", "up"):
            raise ValueError('broker state: "down" or "up"')
        if self.do == "swapd" and self.state not in ("kill", "start"):
            raise ValueError('swapd state: "kill" or "start"')
        return self

    def describe(self) -> str:
        if self.do in ("fault", "clear_fault"):
            parts = [self.do, str(self.fault)]
            if self.target is not None:
                parts.append(f"@{self.target}")
            if self.value is not None:
                parts.append(f"={self.value}")
            return " ".join(parts)
        if self.do in ("operator", "cloud"):
            return f"{self.do} {self.command}" + (f" {self.args}" if self.args else "")
        if self.do in ("broker", "swapd"):
            return f"{self.do} {self.state}"
        return self.do


class RackPack(_Strict):
    slot: int = Field(ge=1, le=64)
    chemistry: Chemistry
    family: int = Field(ge=0, le=250)
    soc: float = Field(ge=0, le=100)
    soh: float = Field(default=100.0, ge=50, le=100)
    temp_c: float | None = Field(default=None, ge=-40, le=80)  # None: the ambient
    serial: int | None = Field(default=None, ge=1, le=0xFFFFFFFE)


class Vehicle(_Strict):
    """A car that comes to the station with its pack."""

    vin: str | None = Field(default=None, pattern=VIN)
    family: int = Field(default=20, ge=0, le=250)
    chemistry: Chemistry = "nmc"
    soc: float = Field(default=15.0, ge=0, le=100)
    soh: float = Field(default=100.0, ge=50, le=100)
    temp_c: float | None = Field(default=None, ge=-40, le=80)  # None: just driven (warm)
    at_s: float = Field(default=0.0, ge=0)  # joins the queue (station seconds)


class Authorised(_Strict):
    """An entry of the authorisation list (a vehicle, or a brand's VIN prefix)."""

    vin: str | None = Field(default=None, pattern=VIN)
    vin_prefix: str | None = Field(default=None, pattern=r"^[A-HJ-NPR-Z0-9]{1,16}$")
    families: list[int] = Field(min_length=1)

    @model_validator(mode="after")
    def _one(self) -> Authorised:
        if (self.vin is None) == (self.vin_prefix is None):
            raise ValueError("give vin or vin_prefix")
        return self


class Reservation(_Strict):
    vin: str = Field(pattern=VIN)
    family: int = Field(default=20, ge=0, le=250)
    min_soc_pct: float = Field(default=80.0, ge=0, le=100)
    ttl_s: float = Field(default=3600.0, gt=0)


class Setup(_Strict):
    """The station before the scenario starts. On a bench the physical part (rack packs,
    ambient, cars) is the bench's; the runner compares what it can and prompts for it."""

    ambient_c: float = Field(default=25.0, ge=-40, le=60)
    rack: list[RackPack] = Field(default_factory=list)  # empty: the simulator's default rack
    slots: int | None = Field(default=None, ge=1, le=64)  # rack slots (sim); None: default
    vehicles: list[Vehicle] = Field(default_factory=list)  # empty: `vehicle_count` cars
    vehicle_count: int = Field(default=1, ge=0, le=100)
    authorisations: list[Authorised] | None = None  # None: no list sent (open station)
    reservations: list[Reservation] = Field(default_factory=list)
    power_cap_kw: float | None = Field(default=None, ge=1, le=20000)
    auto_start: bool = True  # swapd starts a swap when a car is ready
    cloud: bool | None = None  # None: when a cloud command or telemetry needs it
    # swapd configuration changes (sim only: a bench runs its own configuration)
    swapd: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _rack(self) -> Setup:
        slots = [p.slot for p in self.rack]
        if len(slots) != len(set(slots)):
            raise ValueError("rack: a slot is given twice")
        if self.slots is not None and any(s > self.slots for s in slots):
            raise ValueError(f"rack: a slot beyond slots = {self.slots}")
        return self

    @property
    def cars(self) -> int:
        return len(self.vehicles) if self.vehicles else self.vehicle_count


class Until(_Strict):
    """The scenario ends when this is reached (then `settle_s` more, for what follows)."""

    state: str | None = None
    swaps_ended: int | None = Field(default=None, ge=1)
    event: str | None = None
    match: dict[str, Any] = Field(default_factory=dict)
    at_s: float | None = Field(default=None, gt=0)
    actions_done: bool = True  # and every action has run
    settle_s: float = Field(default=5.0, ge=0)

    @model_validator(mode="after")
    def _one(self) -> Until:
        given = [k for k in ("state", "swaps_ended", "event", "at_s")
                 if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("until: give exactly one of state, swaps_ended, event, at_s")
        _regex(self.state, "until.state")
        return self


class Info(_Strict):
    name: str = Field(pattern=NAME)
    description: str = Field(min_length=1, max_length=2000)
    covers: list[str] = Field(default_factory=list)  # e.g. "interlock:estop_ok", "abort"
    until: Until
    timeout_s: float = Field(default=900.0, gt=0)  # station seconds for the whole run
    speed: float = Field(default=20.0, gt=0, le=100)  # sim: the simulator's speed
    plc: Literal["modbus", "opcua"] | None = None  # sim: None = the rig's default


ExpectKind = Literal["state", "event", "swaps", "final_state", "ledger", "telemetry",
                     "observer", "status"]


class Expect(_Strict):
    """One expectation; its kind is the subject given.

    state        `state` reached (whole match), with `reason` (searched) if given
    event        a journal event of kind `event` whose data has `match`; `count`, or
                 `min_count` / `max_count` (max_count = 0: must never happen)
    swaps        `completed` and/or `aborted` swaps (exact counts)
    final_state  the state when the scenario ended (whole match), `reason` if given
    ledger       `packs`: location ("bay", "slot:3", "shuttle") -> a serial, or "empty",
                 or "any" (a pack, serial known or not); from swapd's ledger and, on the
                 simulator, the truth
    telemetry    a message on leaf `telemetry` (status, state, rack, events, swaps)
                 whose payload has `match`; counts as for event
    observer     the simulator's observer saw `violations` (normally 0) violations
    status       a number in swapd's status (a key, dotted for a nested one, e.g.
                 "charging_power_kw"), over every sample: never above `max`, never below
                 `min`, at or above `reach` at least once

    `within_s` (state, event, telemetry): reached within these station seconds of the
    start. `after` (state, event): not before the n-th action ran (1-based).
    """

    state: str | None = None
    event: str | None = None
    swaps: bool | None = None
    final_state: str | None = None
    ledger: bool | None = None
    telemetry: str | None = None
    observer: bool | None = None
    status: str | None = Field(default=None, pattern=r"^[a-z_0-9]+(\.[a-z_0-9]+)*$")

    reason: str | None = None
    match: dict[str, Any] = Field(default_factory=dict)
    count: int | None = Field(default=None, ge=0)
    min_count: int | None = Field(default=None, ge=0)
    max_count: int | None = Field(default=None, ge=0)
    completed: int | None = Field(default=None, ge=0)
    aborted: int | None = Field(default=None, ge=0)
    packs: dict[str, int | str] = Field(default_factory=dict)
    violations: int = Field(default=0, ge=0)
    max: float | None = None
    min: float | None = None
    reach: float | None = None
    within_s: float | None = Field(default=None, gt=0)
    after: int | None = Field(default=None, ge=1)
    name: str | None = Field(default=None, max_length=200)  # shown in the report

    @model_validator(mode="after")
    def _one(self) -> Expect:
        given = [k for k in ("state", "event", "swaps", "final_state", "ledger", "telemetry",
                             "observer", "status") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("an expectation has exactly one subject: state, event, swaps, "
                             "final_state, ledger, telemetry, observer or status (given: "
                             f"{', '.join(given) or 'none'})")
        kind = given[0]
        applies = {
            "reason": ("state", "final_state"), "match": ("event", "telemetry"),
            "count": ("event", "telemetry"), "min_count": ("event", "telemetry"),
            "max_count": ("event", "telemetry"), "completed": ("swaps",),
            "aborted": ("swaps",), "packs": ("ledger",), "within_s": ("state", "event",
                                                                      "telemetry"),
            "after": ("state", "event"), "max": ("status",), "min": ("status",),
            "reach": ("status",)}
        for key, kinds in applies.items():
            v = getattr(self, key)
            if v not in (None, {}) and kind not in kinds:
                raise ValueError(f"`{key}` does not apply to a `{kind}` expectation")
        if kind == "swaps" and self.completed is None and self.aborted is None:
            raise ValueError("a swaps expectation needs completed and/or aborted")
        if kind == "status" and self.max is None and self.min is None and self.reach is None:
            raise ValueError("a status expectation needs max, min and/or reach")
        if kind == "ledger" and not self.packs:
            raise ValueError("a ledger expectation needs packs")
        if self.count is not None and (self.min_count is not None or
                                       self.max_count is not None):
            raise ValueError("give count, or min_count / max_count")
        _regex(self.state, "state")
        _regex(self.final_state, "final_state")
        _regex(self.reason, "reason")
        for loc, v in self.packs.items():
            if not re.fullmatch(r"bay|shuttle|stacker|slot:\d{1,2}", loc):
                raise ValueError(f'ledger location {loc!r}: "bay", "shuttle", "stacker" or '
                                 '"slot:N"')
            if isinstance(v, str) and v not in ("empty", "any"):
                raise ValueError(f'ledger {loc}: a serial, "empty" or "any"')
        return self

    @property
    def kind(self) -> ExpectKind:
        for k in ("state", "event", "swaps", "final_state", "ledger", "telemetry", "status"):
            if getattr(self, k) is not None:
                return k
        return "observer"

    def bounds(self) -> tuple[int, int | None]:
        """(min, max) occurrences for an event or telemetry expectation."""
        if self.count is not None:
            return self.count, self.count
        if self.min_count is not None:
            return self.min_count, self.max_count
        # max_count alone bounds from above only (max_count = 0: must never happen)
        return (0 if self.max_count is not None else 1), self.max_count

    def describe(self) -> str:
        if self.name:
            return self.name
        k = self.kind
        if k == "state":
            s = f"state {self.state}" + (f" ({self.reason})" if self.reason else "")
        elif k == "final_state":
            s = f"ends in {self.final_state}" + (f" ({self.reason})" if self.reason else "")
        elif k in ("event", "telemetry"):
            lo, hi = self.bounds()
            n = (f"x{lo}" if lo == hi else f"x{lo}.." + ("" if hi is None else str(hi)))
            s = (f"event {self.event}" if k == "event" else f"telemetry {self.telemetry}") \
                + (f" {self.match}" if self.match else "") + f" {n}"
        elif k == "swaps":
            s = "swaps" + "".join(f" {n}={v}" for n, v in (("completed", self.completed),
                                                           ("aborted", self.aborted))
                                  if v is not None)
        elif k == "ledger":
            s = "ledger " + ", ".join(f"{loc}={v}" for loc, v in self.packs.items())
        elif k == "status":
            s = f"status {self.status}" + "".join(
                f" {w} {v:g}" for w, v in (("max", self.max), ("min", self.min),
                                           ("reach", self.reach)) if v is not None)
        else:
            s = f"observer violations = {self.violations}"
        if self.within_s is not None:
            s += f" within {self.within_s:g} s"
        if self.after is not None:
            s += f" after action {self.after}"
        return s


class Scenario(_Strict):
    scenario: Info
    setup: Setup = Field(default_factory=Setup)
    action: list[Action] = Field(default_factory=list)
    expect: list[Expect] = Field(min_length=1)
    path: str = ""  # the file it came from

    @model_validator(mode="after")
    def _refs(self) -> Scenario:
        for i, e in enumerate(self.expect):
            if e.after is not None and e.after > len(self.action):
                raise ValueError(f"expect[{i}].after = {e.after}: there are "
                                 f"{len(self.action)} actions")
        return self

    @property
    def name(self) -> str:
        return self.scenario.name

    @property
    def needs_cloud(self) -> bool:
        s = self.setup
        if s.cloud is not None:
            return s.cloud
        return bool(s.authorisations is not None or s.reservations
                    or s.power_cap_kw is not None
                    or any(a.do in ("cloud", "broker") for a in self.action)
                    or any(e.kind == "telemetry" for e in self.expect))

    @property
    def faults(self) -> list[str]:
        return sorted({a.fault for a in self.action if a.fault is not None})


def load_scenario(path: str | Path) -> Scenario:
    """Read and check one scenario file; ScenarioError names the file and the key."""
    p = Path(path)
    data = read_toml(p, ScenarioError)
    try:
        return Scenario.model_validate({**data, "path": str(p)})
    except ValidationError as exc:
        raise ScenarioError(f"{p}: {first_problem(exc)}") from exc


def load_scenarios(paths: list[str | Path]) -> list[Scenario]:
    """Files and directories (every *.toml in them, sorted); names must be unique."""
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        files.extend(sorted(p.glob("*.toml")) if p.is_dir() else [p])
    out = [load_scenario(f) for f in files]
    seen: dict[str, str] = {}
    for s in out:
        if s.name in seen:
            raise ScenarioError(f"{s.path}: scenario name {s.name!r} is also {seen[s.name]}'s")
        seen[s.name] = s.path
    return out
