"""Maintenance mode: the PackML unit mode, and the PLC commands a technician runs in it.

The unit mode (OPC 30050 names: Production, Maintenance) is changed by a local operator
only (`swapctl mode maintenance|produce`), only while no swap runs (Stopped, Aborted, Idle,
Complete), and journaled (`unit_mode` events; restored at start-up). In Maintenance no swap
starts: no automatic start or reset, START and RESET refused; CLEAR is allowed.

In Maintenance a technician runs one PLC command at a time: the recovery plan's next step
(`recover`, station/recovery.py) or any contract command (`maintenance_command`). Each is
issued like a swap step's command (a new cmd_seq from the core's numbering, journaled before
it is written), with stop_request lifted to none for its run and set back (cat2; cat1 after
an interlock) when it ends. It is done only when the PLC says done AND the read-back shows
its result (station/handshake.py, the same judgement as a swap step) and, for a command that
is a swap step's, its row's hard-fault check (LOCK, UNLOCK: the bolt windows) and timeout.
Every interlock that would stop a swap, judged as in the command's step with no swap plan,
stops it at once (stop_request cat1), journaled with the reason; so does a pack event at a
location it touches, and an operator's or the back end's stop, hold or abort in any PackML
state (`stop`; clear is refused while it runs). At issue `run` refuses a locked-out slot, and
any command is refused that the interlocks or a live pack event at a location it touches
would stop. A restart or a shutdown of swapd mid-command records it failed, stop_request
cat2; it is never resumed. A command that ends in Idle or Complete stops the station
(Stopping -> Stopped): back in Production a reset returns it to Idle.

Pure logic on the core's state, no I/O: `Maintenance` is the core's helper (it reads and
writes the core's outputs and events); the core's public methods delegate to it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from station import interlocks
from station.events import (
    MaintenanceDone,
    MaintenanceFailed,
    MaintenanceStarted,
    PackMoved,
    UnitModeChanged,
)
from station.handshake import Handshake
from station.image import (
    BAY,
    NO_COMMAND,
    Location,
    PackData,
    PackIdentity,
    ProcessImage,
    StopRequest,
)
from station.pack_trust import Binding
from station.packml import Cmd, State
from station.recovery import (
    COMMANDS,
    SLOT_COMMANDS,
    Interrupted,
    Move,
    RecoveryPlan,
    apply,
    done_when,
    ledger,
    machine_from,
    plan_recovery,
    result_shown,
    slot_name,
)
from station.sequence import SEQUENCE, STEPS_BY_NAME, Car, Step, StepView, Talker

if TYPE_CHECKING:
    from station.core import Decision, StationCore
    from station.plan import SwapPlan

PRODUCTION, MAINTENANCE = "Production", "Maintenance"
UNIT_MODES = (PRODUCTION, MAINTENANCE)
MODE_WORDS = {"produce": PRODUCTION, "production": PRODUCTION, "maintenance": MAINTENANCE}
# where the unit mode may change and a maintenance command may run: no swap in progress
AT_REST = frozenset({State.STOPPED, State.ABORTED, State.IDLE, State.COMPLETE})
RUNNING, DONE, FAILED = "running", "done", "failed"
MAX_PARAM = 0xFFFF


@dataclass
class MaintenanceRun:
    """The running (or last) maintenance command."""

    seq: int
    command: str
    param: int
    source: str  # recover | run
    why: str
    moves: tuple[Move, ...]
    origin: str
    taken_at: float  # monotonic: issued (journaled, then written)
    state: str = RUNNING  # running | done | failed
    reason: str | None = None
    code: str | None = None
    done_at: float | None = None
    touched: frozenset[Location] = field(default_factory=frozenset)
    handshake: Handshake | None = None  # what the PLC's side of it has shown
    lift_mm: float = 0.0  # the lift when it was issued

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "command": self.command, "param": self.param,
                "source": self.source, "why": self.why,
                "moves": [m.as_dict() for m in self.moves], "state": self.state,
                "reason": self.reason, "code": self.code, "taken_at": self.taken_at,
                "done_at": self.done_at, "origin": self.origin}


def _location(name: str) -> Location | None:
    if name == "vehicle bay":
        return BAY
    if name.startswith("slot "):
        return Location.rack(int(name.split()[1]))
    return None  # shuttle, stacker: no CAN, no binding


def step_row(command: str) -> Step | None:
    """The swap step whose command this contract command is (None: HOME, NOOP, NONE): its
    row gives a maintenance command its timeout, its hard-fault check (the bolt windows of
    LOCK and UNLOCK) and the step the interlocks judge it as."""
    row = STEPS_BY_NAME.get(command.lower()) if isinstance(command, str) else None
    return row if row is not None and row.command == command else None


def command_timeout(core: StationCore, command: str) -> float:
    """A maintenance command's timeout: its swap step's, else the longest step's."""
    row = step_row(command)
    if row is not None:
        return core.cfg.sequence.timeout(row.name)
    return max(core.cfg.sequence.timeout(s.name) for s in SEQUENCE if s.command)


# Operator and back-end commands that end a running maintenance command at once, in any
# PackML state (a stop is always allowed): (stop_request, failure code)
STOPPING_COMMANDS = {Cmd.STOP: (StopRequest.CAT2, "stopped"),
                     Cmd.HOLD: (StopRequest.CAT2, "stopped"),
                     Cmd.SUSPEND: (StopRequest.CAT2, "stopped"),
                     Cmd.ABORT: (StopRequest.CAT1, "aborted")}


class Maintenance:
    def __init__(self, core: StationCore) -> None:
        self.core = core
        self.run: MaintenanceRun | None = None  # the running or last command
        self._carried: dict[int, Binding] = {}  # by serial: a pack's binding in transit

    @property
    def running(self) -> bool:
        return self.run is not None and self.run.state == RUNNING

    # ---- the unit mode -------------------------------------------------------------------
    def set_mode(self, word: str, origin: str, now: float) -> Decision:
        core = self.core
        mode = MODE_WORDS.get(word.lower()) if isinstance(word, str) else None
        if mode is None:
            raise core_refused(f"mode refused: unknown mode {word!r}; expected maintenance or "
                               "produce")
        if core.state not in AT_REST:
            raise core_refused(f"mode refused: a swap is in progress ({core.state.label}); "
                               "the unit mode changes only in Stopped, Aborted, Idle or "
                               "Complete")
        if self.running and mode != core.unit_mode:
            assert self.run is not None
            raise core_refused(f"mode refused: maintenance command {self.run.command} (seq "
                               f"{self.run.seq}) is running; wait for it to end")
        if mode != core.unit_mode:
            old, core.unit_mode = core.unit_mode, mode
            core._candidate = None  # chosen in the other mode: chosen again at the next scan
            core._emit(UnitModeChanged(t=now, mode=mode, old=old, origin=origin))
        return core._flush()

    # ---- issuing -------------------------------------------------------------------------
    def _check_can_run(self, word: str, now: float) -> None:
        """What refuses any maintenance command; `_check_command` then judges this one."""
        core = self.core
        if core.unit_mode != MAINTENANCE:
            raise core_refused(f"{word} refused: station in production mode; switch to "
                               "maintenance first (swapctl mode maintenance)")
        if core.state not in AT_REST:
            raise core_refused(f"{word} refused: not while {core.state.label}")
        if self.running:
            assert self.run is not None
            raise core_refused(f"{word} refused: maintenance command {self.run.command} "
                               f"(seq {self.run.seq}) is still running")
        image = core._image
        if image is None or image.plc_read_at is None:
            raise core_refused(f"{word} refused: interlocks active: plc_inputs_stale (no PLC "
                               "input read yet)")
        # Planned from a read-back older than the machine's rest, a command would start from
        # where the machine was, not where it stopped (a shuttle read home, stopped 196 mm
        # out). At rest: the PLC has answered the last command sent and runs none (an echo
        # of 0 with idle is a PLC that restarted: nothing of ours runs there).
        p = image.plc
        sent = int(core.outputs.get("cmd_seq", 0) or 0)
        ack = int(p.get("cmd_ack_seq", 0) or 0)
        status = p.get("cmd_status")
        if status == "busy" or (sent and ack != sent and not (ack == 0 and status == "idle")):
            raise core_refused(
                f"{word} refused: the machine is not at rest yet: the PLC reports command seq "
                f"{ack} {status} and the last one sent is seq {sent}; wait for its read-back "
                "to show it stopped (if it never does, check the PLC link)")

    def _check_command(self, word: str, name: str, touched: set[Location],
                       now: float) -> None:
        """The interlocks as they judge this command (its step's row), and the pack events
        at the locations it touches, at issue time: what would stop it at its first scan."""
        core = self.core
        assert core._image is not None
        lift = core._image.plc.get("lift_height", 0)
        blocking = [f"{il.id} ({detail})"
                    for il, reaction, detail in self._stops(now, name, lift)]
        if blocking:
            raise core_refused(f"{word} refused: interlocks active: " + ", ".join(blocking))
        events = [f"pack {ev.serial} in {ev.location}: {ev.kind} ({ev.detail})"
                  for ev in core._pack_events if ev.location in touched]
        if events:
            raise core_refused(f"{word} refused: {name} touches a location with a live pack "
                               "event: " + "; ".join(events))

    def plan(self) -> RecoveryPlan:
        core = self.core
        image = core._image
        plc = image.plc if image is not None else {}
        return plan_recovery(plc, self.known(), core.interrupted, core.cfg.sequence,
                             frozenset(core.locked_out_slots))

    def recover_next(self, origin: str, now: float) -> Decision:
        self._check_can_run("recover", now)
        plan = self.plan()
        if plan.blocked is not None and not plan.steps:
            raise core_refused(f"recover refused: no recovery plan: {plan.blocked}")
        if not plan.steps:
            raise nothing_to_do("recover: the machine is home: nothing to recover")
        step = plan.steps[0]
        return self._issue(step.command, step.param, "recover", step.why, origin, now)

    def command(self, name: str, param: int, origin: str, now: float) -> Decision:
        word = "run"
        name = name.upper() if isinstance(name, str) else name
        if name not in COMMANDS:
            raise core_refused(f"{word} refused: unknown PLC command {name!r}; the contract's: "
                               + ", ".join(COMMANDS))
        if isinstance(param, bool) or not isinstance(param, int) or \
                not 0 <= param <= MAX_PARAM:
            raise core_refused(f"{word} refused: parameter must be 0-{MAX_PARAM}")
        self._check_can_run(word, now)
        if name in SLOT_COMMANDS:
            count = self.core._image.rack_slot_count() if self.core._image else 0
            if not 1 <= param <= count:
                raise core_refused(f"{word} refused: {name} takes a rack slot 1-{count}, "
                                   f"not {param}")
            lockout = self.core.locked_out_slots.get(param)
            if lockout is not None:
                raise core_refused(f"{word} refused: slot {param} is locked out ({lockout}); "
                                   "release it first (swapctl slot release or pack release)")
        return self._issue(name, param, "run", f"single command by {origin}", origin, now)

    def _issue(self, name: str, param: int, source: str, why: str, origin: str,
               now: float) -> Decision:
        core = self.core
        image = core._image
        assert image is not None
        m = machine_from(image.plc, self.known(), core.interrupted,
                         frozenset(core.locked_out_slots))
        _, moves = apply(m, name, param, core.cfg.sequence)
        touched = {loc for mv in moves for loc in (_location(mv.source), _location(mv.dest))
                   if loc is not None}
        if name in SLOT_COMMANDS:
            touched.add(Location.rack(param))
        if name in ("INSTALL", "REMOVE", "LOCK", "UNLOCK"):
            touched.add(BAY)
        self._check_command("run" if source == "run" else source, name, touched, now)
        self._expect(moves)
        seq = core._next_seq(image)
        core.outputs.update(cmd_code=name, cmd_param1=param, cmd_param2=0, cmd_seq=seq,
                            stop_request=StopRequest.NONE)
        core._outputs_dirty = True
        core._command_issued = True
        self.run = MaintenanceRun(seq, name, param, source, why, tuple(moves), origin, now,
                                  touched=frozenset(touched),
                                  handshake=Handshake(name, seq, now,
                                                      last_ack=image.plc.get("cmd_ack_seq")),
                                  lift_mm=float(image.plc.get("lift_height", 0) or 0))
        core._emit(MaintenanceStarted(t=now, seq=seq, command=name, param=param, source=source,
                                      why=why, moves=[mv.as_dict() for mv in moves],
                                      origin=origin))
        d = core._flush()
        d.result = {"seq": seq, "command": name, "param": param, "why": why,
                    "moves": [mv.as_dict() for mv in moves],
                    "done_when": done_when(name, param)}
        return d

    def _expect(self, moves: list[Move]) -> None:
        """Tell pack trust what each move carries where (as a swap's STORE and INSTALL do),
        with what was learnt of the pack where it was: its arrival is not an impostor."""
        core = self.core
        for mv in moves:
            src = _location(mv.source)
            if src is not None and mv.serial is not None:
                snap = core.trust.snapshot(src)
                if snap is not None:
                    self._carried[mv.serial] = snap
            dest = _location(mv.dest)
            if dest is None or mv.serial is None:
                continue
            carried = self._carried.pop(mv.serial, None)
            if carried is None:
                held = core._carried.get(BAY)  # a swap's pack in transit when it stopped
                if held is not None and held.identity is not None \
                        and held.identity.serial == mv.serial:
                    carried = held
            identity = self._identity(mv.serial, carried)
            if identity is None:
                continue  # not known: bound on first hearing, as a pack put in by hand
            soc = None
            ip = core.interrupted
            if carried is None and ip is not None and mv.serial == ip.plan.pack_out.serial:
                soc = ip.plan.pack_out.soc_pct  # the car's pack: not charged since
            core.trust.expect(dest, identity, soc, carried)

    def _identity(self, serial: int, carried: Binding | None) -> PackIdentity | None:
        if carried is not None and carried.identity is not None \
                and carried.identity.serial == serial:
            return carried.identity
        ip = self.core.interrupted
        if ip is not None:
            for p in (ip.plan.pack_out, ip.plan.pack_in):
                if p.serial == serial:
                    return PackIdentity(p.serial, p.family, p.chemistry, p.rated_energy_kwh)
        return None

    # ---- the scan ------------------------------------------------------------------------
    def _stops(self, now: float, command: str, lift_at_issue: object
               ) -> list[tuple[interlocks.Interlock, interlocks.Reaction, str]]:
        """The interlocks that would stop a swap (abort or hold), judged as in motion in the
        step whose command this is (HOME, NOOP: no step), with no swap plan: what needs the
        plan (the presence rows, the pack to fetch, a pack event near the swap's slots)
        cannot apply; the pack events at the locations the command touches are judged by
        the caller. Two rules are a maintenance command's own:
        - a row that holds the car lifted while the stacker works with the shuttle home
          (STORE, FETCH) asks only that the lift not move, when it was not at swap height
          when the command was issued (no car on the lift, or the car down);
        - a row that needs the car's pack talking (POSITION, LIFT, UNLOCK) needs it when
          the bay shows a pack (the plan-less half of pack_silent)."""
        core = self.core
        image = core._image
        if image is None:
            return []
        row = step_row(command)
        step = row.name if row is not None else None
        disabled = core.disabled_interlocks
        inp = interlocks.Inputs(image, core.cfg, now, core._hb_changed_at, State.EXECUTE,
                                step, None, core._pack_events)
        seq = core.cfg.sequence
        h0 = float(cast(float, lift_at_issue) or 0)
        lift_free = row is not None and row.car == Car.LIFTED and row.shuttle_home \
            and abs(h0 - seq.swap_height_mm) > seq.height_tolerance_mm
        out = [t for t in interlocks.evaluate(inp, disabled)
               if t[1] in (interlocks.Reaction.ABORT, interlocks.Reaction.HOLD)
               and not (lift_free and t[0].id == "lift_position_mismatch")]
        by_id = {il.id: il for il in interlocks.INTERLOCKS}
        if lift_free and "lift_position_mismatch" not in disabled:
            il = by_id["lift_position_mismatch"]
            plain = dataclasses.replace(inp, step=None)
            detail = il.condition(plain)  # over-travel only
            h = float(image.plc.get("lift_height", 0) or 0)
            if detail is None and abs(h - h0) > seq.height_tolerance_mm:
                detail = (f"lift at {h:.0f} mm during {step}, was at {h0:.0f} mm when "
                          f"{command} was issued: must not move")
            if detail is not None:
                out.append((il, interlocks.Reaction.ABORT, detail))
        if row is not None and Talker.VEHICLE in row.talkers and "pack_silent" not in disabled \
                and image.plc.get("vehicle_pack_present"):
            limit = core.cfg.interlocks.pack_silent_s
            rep = image.packs.get(BAY)
            if rep is None or rep.age(PackData.STATUS, now) > limit:
                out.append((by_id["pack_silent"], interlocks.Reaction.ABORT,
                            f"vehicle pack silent on CAN for more than {limit:g} s"))
        return out

    def scan(self, image: ProcessImage, now: float) -> None:
        run, core = self.run, self.core
        if run is None or run.state != RUNNING:
            return
        stop = core.outputs["stop_request"]
        if stop != StopRequest.NONE:
            return self._end(run, now, FAILED, "stopped",
                             f"{run.command}: stopped by stop_request {stop} "
                             f"({core.reason or core.state.label})")
        for il, _, detail in self._stops(now, run.command, run.lift_mm):
            return self._end(run, now, FAILED, il.id, f"interlock {il.id}: {detail}",
                             StopRequest.CAT1)
        for ev in core._pack_events:
            if ev.location in run.touched:
                return self._end(run, now, FAILED, ev.kind,
                                 f"pack {ev.serial} in {ev.location}: {ev.detail}",
                                 StopRequest.CAT1)
        seqc = core.cfg.sequence
        assert run.handshake is not None
        row = step_row(run.command)

        def fault() -> str | None:
            """The step row's hard-fault check (LOCK, UNLOCK: every bolt in its window). A
            commanded step's check reads the image and the set-points, never the plan: there
            is none in maintenance."""
            if row is None:
                return None
            plan = core.interrupted.plan if core.interrupted is not None else None
            return row.fault(StepView(image, cast("SwapPlan", plan), core.cfg, run.taken_at,
                                      now))

        v = run.handshake.judge(
            image.plc, now, name=run.command.lower(), seq_cfg=seqc,
            timeout_s=command_timeout(core, run.command),
            shown=lambda: result_shown(run.command, run.param, image.plc, seqc),
            fault=fault,
            off=lambda: [f"expected {done_when(run.command, run.param)}"])
        if v.failed:
            assert v.code is not None and v.reason is not None
            return self._end(run, now, FAILED, v.code, f"{run.command.lower()}: {v.reason}")
        if v.done:
            return self._end(run, now, DONE, None, None)
        return None

    def _end(self, run: MaintenanceRun, now: float, state: str, code: str | None,
             reason: str | None, stop: StopRequest = StopRequest.CAT2) -> None:
        core = self.core
        run.state, run.code, run.reason, run.done_at = state, code, reason, now
        if state == DONE:
            core._emit(MaintenanceDone(t=now, seq=run.seq, command=run.command, param=run.param))
            if run.command == "LOCK" and core.interrupted is not None:
                core.interrupted = dataclasses.replace(core.interrupted, relocked=True)
            for mv in run.moves:
                core._emit(PackMoved(t=now, serial=mv.serial, source=mv.source, dest=mv.dest,
                                     command=run.command, seq=run.seq))
        else:
            assert code is not None and reason is not None
            core._emit(MaintenanceFailed(t=now, seq=run.seq, command=run.command,
                                         param=run.param, reason=reason, code=code))
            for mv in run.moves:  # what it would have carried arrives nowhere now
                dest = _location(mv.dest)
                if dest is not None:
                    core.trust._expected.pop(dest, None)
        current = StopRequest(core.outputs["stop_request"])
        if stop.severity > current.severity:
            core.outputs["stop_request"] = stop
        core.outputs.update(cmd_code=NO_COMMAND, cmd_param1=0, cmd_param2=0)
        core._outputs_dirty = True
        if core.state in (State.IDLE, State.COMPLETE):
            core._transition(Cmd.STOP, now, f"maintenance command {run.command} ended: reset "
                             "to return to Idle")

    # ---- what ends it from outside --------------------------------------------------------
    def stop(self, cmd: Cmd, origin: str, why: str | None, now: float) -> None:
        """An operator's or the back end's stop, hold, suspend or abort: the running command
        ends at once (stop_request cat2; abort: cat1), whatever the PackML state."""
        run = self.run
        assert run is not None and run.state == RUNNING
        stop, code = STOPPING_COMMANDS[cmd]
        said = f": {why}" if why else ""
        self._end(run, now, FAILED, code, f"{run.command}: ended by {cmd.value} from "
                  f"{origin}{said} (stop_request {stop})", stop)

    def shutdown(self, now: float) -> Decision:
        """swapd stops while a command runs: stop it (cat2) and record it failed; it is not
        resumed at the next start."""
        run = self.run
        if run is not None and run.state == RUNNING:
            self._end(run, now, FAILED, "daemon_stopped", f"{run.command}: swapd stopped "
                      "while it ran (stop_request cat2); it is not resumed")
        return self.core._flush()

    def after_restart(self, started: dict[str, Any], now: float) -> Decision:
        """The journal shows a command started and never ended: swapd stopped (or died)
        while it ran. Record it failed, keep the machine stopped (cat2): never resumed."""
        core = self.core
        seq, command = int(started["seq"]), str(started["command"])
        param = int(started.get("param", 0) or 0)
        reason = (f"{command}: swapd restarted while it ran (seq {seq}); it is not resumed: "
                  "check the machine (swapctl recover --plan)")
        self.run = MaintenanceRun(seq, command, param, str(started.get("source", "run")),
                                  str(started.get("why", "")), (), str(started.get("origin",
                                                                                   "")),
                                  now, state=FAILED, reason=reason, code="daemon_restarted",
                                  done_at=now)
        core._emit(MaintenanceFailed(t=now, seq=seq, command=command, param=param,
                                     reason=reason, code="daemon_restarted"))
        if StopRequest.CAT2.severity > StopRequest(core.outputs["stop_request"]).severity:
            core.outputs["stop_request"] = StopRequest.CAT2
        core._outputs_dirty = True
        if core.reason is None:  # no reset at start-up: a technician looks first
            core.reason = reason
        return core._flush()

    # ---- views ---------------------------------------------------------------------------
    def known(self) -> dict[str, int | None]:
        """The serial bound at the bay and at each rack slot (pack trust)."""
        core = self.core
        out: dict[str, int | None] = {"vehicle bay": core.trust.serial(BAY)}
        image = core._image
        for n in range(1, (image.rack_slot_count() if image is not None else 0) + 1):
            out[slot_name(n)] = core.trust.serial(Location.rack(n))
        return out

    def ledger(self) -> dict[str, int | None]:
        """Where every pack is: location -> serial (None: identity not known)."""
        core = self.core
        if core._image is None or core._image.plc_read_at is None:
            return {}
        return ledger(machine_from(core._image.plc, self.known(), core.interrupted,
                                   frozenset(core.locked_out_slots)))

    def view(self) -> dict[str, Any]:
        """The plan, for `swapctl recover --plan`."""
        core = self.core
        plan = self.plan()
        return {"unit_mode": core.unit_mode, **plan.as_dict(),
                "interrupted_swap": core.interrupted.as_dict() if core.interrupted else None,
                "maintenance": self.run.as_dict() if self.run else None,
                "packs": self.ledger()}


def core_refused(reason: str) -> Exception:
    from station.core import CommandRefused  # the core imports this module

    return CommandRefused(reason)


def nothing_to_do(reason: str) -> Exception:
    from station.core import NothingToDo

    return NothingToDo(reason)


__all__ = ["AT_REST", "MAINTENANCE", "PRODUCTION", "STOPPING_COMMANDS", "UNIT_MODES",
           "Interrupted", "Maintenance", "MaintenanceRun", "command_timeout", "step_row"]
