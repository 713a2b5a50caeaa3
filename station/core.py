"""The station's mind: PackML mode, swap sequence, interlocks and charging, without any I/O.

`StationCore.update(image, now)` is one scan: read the process image, evaluate the
interlocks, advance the mode and the sequence, plan the rack's charging, and return what to
record (typed events) and what to do (PLC outputs by contract signal name, pack commands,
pack data requests). The daemon journals the events before it carries out the rest, so
nothing is commanded that has not been recorded (a stop request and a pack isolation go out
first: they are safe whatever follows). Time is passed in (monotonic seconds).

The core imports nothing from drivers/ and reads no file (a test enforces it): it speaks
the vocabulary of station/image.py and the step rows of station/sequence.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from station import interlocks
from station.charging import ChargeGrant, plan_charging
from station.config import StationConfig
from station.events import (
    Alarm,
    AuthorisationsSet,
    Event,
    Fault,
    Inhibit,
    PackCommandChanged,
    PowerCapSet,
    ReservationEnded,
    ReservationMade,
    SlotLocked,
    SlotReleased,
    StateChanged,
    StepDone,
    StepStarted,
    SwapEnded,
    SwapStarted,
)
from station.handshake import Handshake
from station.home import PREFIX as HOME_PREFIX
from station.home import away_from_home, same_things_off
from station.image import (
    BAY,
    NO_COMMAND,
    CmdStatus,
    Location,
    PackData,
    PackIdentity,
    PackState,
    ProcessImage,
    StopRequest,
)
from station.maintenance import MAINTENANCE, PRODUCTION, STOPPING_COMMANDS, Maintenance
from station.network import (
    MAX_RESERVATION_S,
    AuthorisationList,
    Network,
    PowerCap,
    Reservation,
    ReservationRequest,
    format_time,
)
from station.pack_commands import PackCommand, PackCommandKind, PackRequest
from station.pack_safety import PackEvent, TempRiseTracker, pack_events
from station.pack_trust import AlarmGate, Binding, PackTrust, TrustEvent
from station.packml import Cmd, PackMLMachine, State, TransitionRefused
from station.plan import PackInfo, SwapPlan
from station.recovery import Interrupted, RecoveryPlan
from station.selection import Choice, choose_pack, pack_to_reserve, rack_packs, ready
from station.sequence import CHECK_KINDS, SEQUENCE, Step, StepView

STOP_CONFIRM_S = 1.0  # Aborting/Stopping/Holding wait this long at most for the PLC to go idle
STALL_FLOOR_S = 5.0  # never judge a stalled charge faster than a few PackControl periods
IDENTIFY_KINDS = (PackData.IDENTITY, PackData.HEALTH, PackData.LIMITS)
# At rest, where a reset or a start would come from: the machine must be home to leave them
HOME_CHECKED = frozenset({State.IDLE, State.STOPPED, State.ABORTED, State.COMPLETE})
# A pack may go on charging for a few PackControl periods after its last grant: count the
# grant that long when judging how far its SOC could rise.
GRANT_HOLD_PERIODS = 5
# Without authorisation required, a car whose VIN has not been heard yet waits this long
# for it while packs are reserved (J1939-71 Vehicle Identification comes every 5 s), then
# swaps as a car without a reservation.
VIN_WAIT_S = 6.0
FETCH_INDEX = next(i for i, s in enumerate(SEQUENCE) if s.name == "fetch")


@dataclass
class Decision:
    events: list[Event] = field(default_factory=list)
    outputs: dict[str, Any] | None = None  # the whole desired output set, when it changed
    command_issued: bool = False  # a new PLC command: write at once
    pack_commands: list[PackCommand] = field(default_factory=list)
    pack_requests: list[PackRequest] = field(default_factory=list)
    result: dict[str, Any] | None = None  # a command's answer (a reservation: id, slot, serial)

    @property
    def isolations(self) -> list[PackCommand]:
        return [c for c in self.pack_commands if c.command == PackCommandKind.ISOLATE]


@dataclass(frozen=True)
class ResumePoint:
    """A swap the journal shows unfinished: its plan and the step it was in."""

    plan: SwapPlan
    step_index: int
    # serial -> the charge (Ah) the journal shows granted to that pack of the plan since
    # the plan read its SOC: what its SOC may have risen by, where this run learnt nothing
    # of it (a pack the stacker had taken when swapd died)
    granted_ah: Mapping[int, float] = field(default_factory=dict)


class CommandRefused(Exception):
    pass


class NothingToDo(CommandRefused):
    """recover with the machine home: nothing to run."""


class StationCore:
    def __init__(
        self, cfg: StationConfig, *, next_swap_number: int = 1,
        initial_state: State = State.STOPPED, reason: str | None = None,
        resume: ResumePoint | None = None,
        disabled_interlocks: frozenset[str] = frozenset(),
        charge_period_s: float = 1.0,
        last_seq: int | None = None,
        locked_out: dict[int, str] | None = None,
        authorisations: AuthorisationList | None = None,
        power_cap: PowerCap | None = None,
        reservations: tuple[Reservation, ...] | list[Reservation] = (),
        unit_mode: str = PRODUCTION,
        interrupted: Interrupted | None = None,
    ) -> None:
        self.cfg = cfg
        # PackML unit mode (station/maintenance.py) and the last swap that ended before its
        # end (its plan and step: what recovery knows of the packs it moved)
        self.unit_mode = unit_mode
        self.interrupted = interrupted
        self.maintenance = Maintenance(self)
        # what the network told this station (persisted in the journal, reloaded at start)
        self.network = Network(cfg, authorisations, power_cap, reservations)
        self._cap_kw = self.network.ceiling_kw  # the cap the last charging plan ran under
        self.charge_period_s = charge_period_s  # PackControl refresh period of the protocol
        self.machine = PackMLMachine(initial_state)
        self.reason: str | None = reason
        self.plan: SwapPlan | None = None
        self.step_index: int | None = None
        self.step_started_at = 0.0
        self.swap_number = next_swap_number
        self.seq: int | None = None
        # The journal's last command number: it may be ahead of the PLC's ack (journaled,
        # then killed before the write), and a number must never name two commands.
        self._journaled_seq = last_seq
        self.outputs: dict[str, Any] = {
            "cmd_code": NO_COMMAND, "cmd_param1": 0, "cmd_param2": 0, "cmd_seq": 0,
            "stop_request": StopRequest.CAT1 if initial_state == State.ABORTED
            else StopRequest.NONE,
        }
        self._outputs_dirty = True
        self._handshake: Handshake | None = None  # the current step's PLC command
        self._acting_since = 0.0
        self._vehicle_token = 0
        self._identify_started_at: float | None = None
        self._waiting_family: int | None = None  # a car on the platform with no pack to get
        self._inhibit: str | None = None
        self._hb_value: object = None
        self._hb_changed_at: float | None = None
        self.active_interlocks: list[str] = []
        self.disabled_interlocks = disabled_interlocks  # only the dead-code test sets this
        # slot -> why: a pack event, a conflict or an implausible pack; persisted in the
        # journal, released only by an operator (release_slot)
        self.locked_out_slots: dict[int, str] = dict(locked_out or {})
        self.trust = PackTrust(cfg.sequence.speed_factor,
                               settle_s=GRANT_HOLD_PERIODS * charge_period_s)
        self.alarms = AlarmGate()
        self._granted: dict[Location, list[tuple[float, float]]] = {}  # loc -> [(t, A)]
        self._granted_max: dict[Location, float] = {}  # what a pack may still be drawing
        self._isolated: set[tuple[Location, int | None]] = set()  # told to isolate
        self._view: ProcessImage | None = None  # the trusted packs, this scan
        self._carried: dict[Location, Binding | None] = {}  # a pack's binding, in transit
        self._granted_since_plan: dict[int, float] = {}  # ResumePoint.granted_ah
        self._pack_commands: list[PackCommand] = []
        self._pack_requests: list[PackRequest] = []
        self._pack_events: tuple[PackEvent, ...] = ()
        self._temps = TempRiseTracker()
        self._candidate: SwapPlan | None = None
        self._pending: list[Event] = []
        self._command_issued = False
        self._image: ProcessImage | None = None
        self._next_charge_plan = float("-inf")
        self.charging: dict[Location, ChargeGrant] = {}  # the grants last sent
        self._stall: dict[tuple[Location, int | None], float] = {}  # since when no current
        self._stalled: dict[tuple[Location, int | None], float] = {}  # alarmed; retry at
        if resume is not None:
            self.machine.state = State.HELD
            self.plan, self.step_index = resume.plan, resume.step_index
            self._granted_since_plan = dict(resume.granted_ah)
            self.outputs["stop_request"] = StopRequest.CAT2

    # ---- views -------------------------------------------------------------------------
    @property
    def state(self) -> State:
        return self.machine.state

    @property
    def ready_to_start(self) -> bool:
        """An identified vehicle with a pack to give: START would begin its swap."""
        return self._candidate is not None and self.state == State.IDLE

    @property
    def step(self) -> Step | None:
        return SEQUENCE[self.step_index] if self.step_index is not None else None

    def status(self) -> dict[str, Any]:
        return {
            "packml_state": self.state.label,
            "packml_state_number": int(self.state),
            "step": self.step.name if self.step else None,
            "swap_id": self.plan.swap_id if self.plan else None,
            "active_interlocks": list(self.active_interlocks),
            "reason": self.reason,
            "start_inhibited": self._inhibit,
            "locked_out_slots": dict(self.locked_out_slots),
            "untrusted_packs": {str(b.location): b.distrust.detail
                                for b in self.trust.bindings.values() if b.distrust},
            "charging_power_kw": round(sum(g.power_kw for g in self.charging.values()
                                           if g.command == PackCommandKind.CHARGE_ENABLE), 1),
            "power_cap_kw": self.network.cap_at(self._wall()),
            "authorisation_version": self.network.authorisation_version,
            "unit_mode": self.unit_mode,
            "maintenance": self.maintenance.run.as_dict() if self.maintenance.run else None,
            "packs": self.maintenance.ledger(),
            "interrupted_swap": self.interrupted.as_dict() if self.interrupted else None,
        }

    def _wall(self) -> float | None:
        return self._image.wall_time if self._image is not None else None

    def rack_status(self, image: ProcessImage, now: float) -> dict[str, Any]:
        """The rack as the network sees it: power_kw (what the rack packs report drawing),
        power_cap_kw (in force now) and one entry per slot the PLC reports. A slot's state:
        locked_out, empty, untrusted, unknown (occupied, its pack not heard, fresh and
        identified), isolated, ready (selection would give it now, at selection.min_soc_pct,
        to a vehicle of its family), charging, or waiting (neither: too cold, stalled...)."""
        view = self._view if self._view is not None and image is self._image \
            else self.trust.view(image)
        heard = rack_packs(view, self.cfg, now)
        occupied = image.plc.get("rack_slot_occupied") or []
        reserved = {r.slot: r.vin for r in self.network.reservations.values()}
        slots: list[dict[str, Any]] = []
        drawn_kw = 0.0
        for slot in range(1, image.rack_slot_count() + 1):
            loc = Location.rack(slot)
            occ = bool(occupied[slot - 1])
            raw = image.packs.get(loc) if occ else None
            rep = heard.get(slot)
            grant = self.charging.get(loc)
            granted = grant.power_kw if grant is not None and \
                grant.command == PackCommandKind.CHARGE_ENABLE else 0.0
            distrust = self.trust.distrust(loc) if occ else None
            state, reason = "waiting", grant.reason if grant is not None else None
            if slot in self.locked_out_slots:
                state, reason = "locked_out", self.locked_out_slots[slot]
            elif not occ:
                state, reason = "empty", None
            elif distrust is not None:
                state, reason = "untrusted", distrust.detail
            elif rep is None:
                state, reason = "unknown", "pack not heard on CAN (fresh and identified)"
            elif rep.state == PackState.ISOLATED or any(
                    lo == loc for lo, _ in self._isolated):
                state, reason = "isolated", "isolated"
            elif ready(rep, self.cfg):
                state, reason = "ready", None
            elif granted > 0:
                state = "charging"
            if rep is not None and rep.current_a is not None and rep.voltage_v is not None \
                    and rep.current_a > 0:
                drawn_kw += rep.current_a * rep.voltage_v / 1000.0
            shown = rep if rep is not None else raw if distrust is None else None
            slots.append({
                "slot": slot, "occupied": occ,
                "serial": shown.serial if shown else None,
                "chemistry": shown.chemistry if shown else None,
                "family": shown.family if shown else None,
                "soc_pct": shown.soc_pct if shown else None,
                "soh_pct": shown.soh_pct if shown else None,
                "min_cell_temp_c": shown.min_cell_temp_c if shown else None,
                "max_cell_temp_c": shown.max_cell_temp_c if shown else None,
                "state": state, "granted_power_kw": granted, "reason": reason,
                "reserved_for": reserved.get(slot),
            })
        return {"power_kw": round(drawn_kw, 1),
                "power_cap_kw": self.network.cap_at(image.wall_time), "slots": slots}

    # ---- operator commands -------------------------------------------------------------
    def command(self, cmd: Cmd, now: float, origin: str = "operator",
                why: str | None = None) -> Decision:
        """An operator or back-end command (`why`: the sender's words, journaled in the
        reason); raises CommandRefused with the reason."""
        said = f": {why}" if why else ""
        if self.maintenance.running:
            # a running maintenance command: a stop, hold or abort ends it at once, whatever
            # the PackML state; nothing may lift its stop while it runs
            if cmd in STOPPING_COMMANDS:
                self.maintenance.stop(cmd, origin, why, now)
                if not self.machine.allowed(cmd):
                    return self._flush()
            elif cmd == Cmd.CLEAR:
                run = self.maintenance.run
                assert run is not None
                raise CommandRefused(f"clear refused: maintenance command {run.command} (seq "
                                     f"{run.seq}) running: stop it or wait")
        if self.unit_mode == MAINTENANCE and cmd in (Cmd.START, Cmd.RESET):
            raise CommandRefused(f"{cmd.value} refused: station in maintenance mode: switch "
                                 "back with swapctl mode produce")
        if not self.machine.allowed(cmd):
            raise CommandRefused(str(TransitionRefused(self.state, cmd)))
        if cmd in (Cmd.RESET, Cmd.CLEAR, Cmd.START, Cmd.UNHOLD, Cmd.UNSUSPEND):
            if self._image is None or self._image.plc_read_at is None:
                raise CommandRefused(f"{cmd.value} refused: interlocks active: "
                                     "plc_inputs_stale (no PLC input read yet)")
            # each with what is wrong (a set-point mismatch names both values)
            blocking = [f"{il.id} ({detail})" for il, _, detail in self._tripped(now)]
            if blocking:
                raise CommandRefused(f"{cmd.value} refused: interlocks active: "
                                     + ", ".join(blocking))
            # Nothing may be made ready or started from where an abort left the machine
            # (station/home.py); CLEAR only acknowledges the abort, UNHOLD continues a swap.
            away = away_from_home(self._image.plc, self.cfg.sequence)
            if away is not None and cmd in (Cmd.RESET, Cmd.START):
                raise CommandRefused(f"{cmd.value} refused: {away}")
        if cmd == Cmd.START:
            if self._candidate is None:
                raise CommandRefused("start refused: " + (
                    self._inhibit or "no identified vehicle with a pack to give"))
            self._start_swap(self._candidate, now, origin)
            return self._flush()
        if cmd == Cmd.ABORT:
            self._abort(f"abort by {origin}{said}", now)
        elif cmd == Cmd.STOP:
            self._stop_motion(StopRequest.CAT2, f"stop by {origin}{said}", now, Cmd.STOP,
                              "stopped")
        elif cmd in (Cmd.HOLD, Cmd.SUSPEND):
            # Both stop the machine (category 2): a PLC left running a step while the swap
            # is paused would finish it unsupervised, and the resume would send it again.
            self._stop_motion(StopRequest.CAT2, f"{cmd.value} by {origin}{said}", now, cmd,
                              None)
        else:
            self._transition(cmd, now, f"{cmd.value} by {origin}{said}")
        return self._flush()

    # ---- maintenance mode and recovery (station/maintenance.py, station/recovery.py) -------
    def set_unit_mode(self, mode: str, origin: str, now: float) -> Decision:
        """Production or Maintenance (words: produce, maintenance), by a local operator,
        only while no swap runs; raises CommandRefused."""
        return self.maintenance.set_mode(mode, origin, now)

    def maintenance_command(self, name: str, param: int, origin: str, now: float) -> Decision:
        """Run one contract command (by name) in Maintenance, under the interlocks; the
        Decision's result says which (seq, command, param). Raises CommandRefused."""
        return self.maintenance.command(name, param, origin, now)

    def recover_next(self, origin: str, now: float) -> Decision:
        """Run the recovery plan's first step, computed afresh; raises NothingToDo when the
        machine is home, CommandRefused when no plan brings it home or it may not run."""
        return self.maintenance.recover_next(origin, now)

    def recovery_plan(self) -> RecoveryPlan:
        return self.maintenance.plan()

    def recovery_view(self) -> dict[str, Any]:
        """The plan, the interrupted swap, the last maintenance command and the pack ledger."""
        return self.maintenance.view()

    # ---- the network's commands (station/network.py) --------------------------------------
    def request_stop(self, why: str | None, origin: str, now: float) -> Decision:
        """PackML STOP from afar (a stop is always safe); nothing restarts without a local
        operator's reset."""
        return self.command(Cmd.STOP, now, origin, why)

    def request_hold(self, why: str | None, origin: str, now: float) -> Decision:
        return self.command(Cmd.HOLD, now, origin, why)

    def set_authorisations(self, auth: AuthorisationList, origin: str,
                           now: float) -> Decision:
        """A new authorisation list; its version must be greater than the one in force."""
        current = self.network.authorisation_version
        if current is not None and auth.version <= current:
            raise CommandRefused(f"set_authorisations refused: version {auth.version} is not "
                                 f"greater than the version in force ({current})")
        wall = self._wall()
        if wall is not None and auth.valid_until <= wall:
            raise CommandRefused(f"set_authorisations refused: version {auth.version} expired "
                                 f"at {format_time(auth.valid_until)}")
        self.network.authorisations = auth
        sm = auth.summary()
        self._emit(AuthorisationsSet(t=now, version=auth.version, valid_from=sm["valid_from"],
                                     valid_until=sm["valid_until"], entries=sm["entries"],
                                     origin=origin, full=auth.as_dict()))
        return self._flush()

    def set_power_cap(self, cap: PowerCap, origin: str, now: float) -> Decision:
        """The network's cap and daily schedule; only ever below the configured ceiling."""
        ceiling = self.network.ceiling_kw
        over = [c for c in (cap.cap_kw, *(w.cap_kw for w in cap.schedule))
                if c is not None and not 1.0 <= c <= ceiling]
        if over:
            raise CommandRefused(f"set_power_cap refused: {over[0]:g} kW is outside 1-"
                                 f"{ceiling:g} kW (charging.station_power_cap_kw)")
        self.network.power_cap = cap  # a lower cap is planned at the next scan (_charging)
        d = cap.as_dict()
        self._emit(PowerCapSet(t=now, cap_kw=cap.cap_kw, schedule=d["schedule"],
                               ceiling_kw=ceiling, origin=origin))
        return self._flush()

    def reserve_pack(self, req: ReservationRequest, origin: str, now: float,
                     reservation_id: str | None = None) -> Decision:
        """Keep the ready pack selection would give this vehicle now for it alone until
        `req.expires_at`; the Decision's result says which (reservation_id, slot, serial)."""
        image, wall = self._image, self._wall()
        if image is None or image.plc_read_at is None:
            raise CommandRefused("reserve_pack refused: the rack has not been read yet")
        if wall is None:
            raise CommandRefused("reserve_pack refused: no wall-clock time to date it by")
        if req.expires_at <= wall:
            raise CommandRefused(f"reserve_pack refused: expires_at "
                                 f"{format_time(req.expires_at)} is not in the future")
        if req.expires_at > wall + MAX_RESERVATION_S:
            raise CommandRefused(f"reserve_pack refused: expires_at "
                                 f"{format_time(req.expires_at)} is more than "
                                 f"{MAX_RESERVATION_S / 3600:g} h ahead")
        held = self.network.reservation_of(req.vin)
        if held is not None:
            raise CommandRefused(f"reserve_pack refused: vehicle {req.vin} already holds "
                                 f"reservation {held.reservation_id} (slot {held.slot}); "
                                 "cancel it first")
        skip = set(self.locked_out_slots) | set(self.network.reserved_slots())
        for plan in (self.plan, self._candidate):  # a pack on its way to a car
            if plan is not None:
                skip.add(plan.fetch_slot)
        view = self._view if self._view is not None else self.trust.view(image)
        choice = pack_to_reserve(view, self.cfg, req.family, req.min_soc_pct, now,
                                 frozenset(skip))
        if not isinstance(choice, Choice):
            raise CommandRefused(f"reserve_pack refused: {choice.reason}")
        p = choice.pack
        assert p.slot is not None
        r = Reservation(reservation_id or f"rsv-{uuid.uuid4().hex[:16]}", req.vin, req.family,
                        req.min_soc_pct, req.expires_at, p.slot, p.serial)
        self.network.reservations[r.reservation_id] = r
        self._emit(ReservationMade(t=now, reservation_id=r.reservation_id, vin=r.vin,
                                   family=r.family, min_soc_pct=r.min_soc_pct,
                                   expires_at=format_time(r.expires_at), slot=r.slot,
                                   serial=r.serial, soc_pct=p.soc_pct, origin=origin))
        d = self._flush()
        d.result = {"reservation_id": r.reservation_id, "slot": r.slot, "serial": r.serial}
        return d

    def cancel_reservation(self, reservation_id: str, origin: str, now: float) -> Decision:
        r = self.network.reservations.pop(reservation_id, None)
        if r is None:
            raise CommandRefused(f"cancel_reservation refused: no active reservation "
                                 f"{reservation_id!r} (used, expired, cancelled or unknown)")
        self._emit(ReservationEnded(t=now, reservation_id=r.reservation_id, vin=r.vin,
                                    slot=r.slot, serial=r.serial, outcome="cancelled",
                                    reason=f"cancelled by {origin}", swap_id=None))
        return self._flush()

    def slot_maintenance(self, slot: int, action: str, reason: str, origin: str,
                         now: float) -> Decision:
        """Lock a rack slot out of use (no selection, storing or charging; persisted like a
        pack event's lockout, cause "maintenance"), or release it by release_slot's rules
        (which also release a pack event's lockout, refused while the event is still
        seen)."""
        if action == "release":
            return self.release_slot(slot, reason, origin, now, word="slot release")
        if action != "lock":
            raise CommandRefused(f"slot_maintenance refused: unknown action {action!r}")
        reason = reason.strip()
        if not reason:
            raise CommandRefused("slot lock refused: say why (the reason is journaled)")
        count = self._image.rack_slot_count() if self._image is not None else 0
        if not 1 <= slot <= (count or 255):
            raise CommandRefused(f"slot lock refused: the rack has no slot {slot}"
                                 + (f" (slots 1-{count})" if count else ""))
        if slot in self.locked_out_slots:
            raise CommandRefused(f"slot lock refused: rack slot {slot} is already locked "
                                 f"out: {self.locked_out_slots[slot]}")
        if self.plan is not None and slot in (self.plan.store_slot, self.plan.fetch_slot):
            raise CommandRefused(f"slot lock refused: rack slot {slot} is in use by swap "
                                 f"{self.plan.swap_id}; lock it when the swap has ended")
        self.locked_out_slots[slot] = f"maintenance: {reason}"
        self._candidate = None  # chosen before the lock: chosen again at the next scan
        self._next_charge_plan = float("-inf")  # its pack stops charging at the next scan
        self._emit(SlotLocked(t=now, slot=slot, serial=self.trust.serial(Location.rack(slot)),
                              cause="maintenance", reason=reason, isolated=False))
        return self._flush()


    # ---- the scan ----------------------------------------------------------------------
    def update(self, image: ProcessImage, now: float) -> Decision:
        self._image = image
        self._lapse_reservations(image, now)
        self._scan(image, now)
        self._charging(image, now)
        self._ask_unidentified(image)
        return self._flush()

    def _scan(self, image: ProcessImage, now: float) -> None:
        hb = image.plc.get("plc_heartbeat")
        if image.plc_read_at is not None and hb != self._hb_value:
            self._hb_value, self._hb_changed_at = hb, image.plc_read_at
        # The stop first: an interlock that aborts the swap now (an e-stop, a stale PLC) is
        # acted on before the pack bookkeeping below, most of a scan's time. Pack events
        # are latched, so the interlocks see the same ones here as after it.
        early = self._tripped(now)
        for il, reaction, detail in early:
            if reaction == interlocks.Reaction.ABORT:
                self.active_interlocks = [t[0].id for t in early]
                self._abort(f"interlock {il.id}: {detail}", now, code=il.id)
                return None
        self._pack_trust(image, now)
        self._pack_safety(image, now)
        tripped = self._tripped(now)
        self.active_interlocks = [il.id for il, _, _ in tripped]
        for il, reaction, detail in tripped:
            if reaction == interlocks.Reaction.ABORT:
                self._abort(f"interlock {il.id}: {detail}", now, code=il.id)
                return None
        for il, reaction, detail in tripped:
            if reaction == interlocks.Reaction.HOLD and self.machine.allowed(Cmd.HOLD):
                self._emit(Fault(t=now, code=il.id, reason=detail,
                                 swap_id=self.plan.swap_id if self.plan else None,
                                 step=self.step.name if self.step else None))
                self._stop_motion(StopRequest.CAT2, f"interlock {il.id}: {detail}", now, Cmd.HOLD,
                                  None)
                return None
        inhibited = bool(tripped)
        self.maintenance.scan(image, now)  # a maintenance command: its stops and its end
        st = self.state
        away = self._home_inhibit(image, now) if st in HOME_CHECKED else None
        if st == State.RESETTING and not inhibited and self._plc_quiet(image):
            self.outputs["stop_request"] = StopRequest.NONE
            self._outputs_dirty = True
            self._transition(Cmd.SC, now, None)
            self.reason = None
        elif st == State.IDLE:
            if away is None:
                self._idle(image, now, inhibited)
            else:  # no swap starts from where the machine stands: the inhibit says why
                self._candidate = None
        elif st == State.STARTING:
            self._transition(Cmd.SC, now, None)
            self._begin_step(0, now)
        elif st == State.EXECUTE:
            self._execute(image, now)
        elif st == State.COMPLETING:
            self._transition(Cmd.SC, now, None)
        elif st == State.COMPLETE and self.cfg.operation.auto_reset_after_complete \
                and self.unit_mode == PRODUCTION:
            if away is None:
                self._transition(Cmd.RESET, now, "automatic reset after a completed swap")
        elif st in (State.ABORTING, State.STOPPING, State.HOLDING, State.SUSPENDING):
            if self._plc_quiet(image) or now - self._acting_since > STOP_CONFIRM_S:
                self._transition(Cmd.SC, now, self.reason)
        elif st == State.CLEARING:
            self.outputs["stop_request"] = StopRequest.NONE
            self._outputs_dirty = True
            self._transition(Cmd.SC, now, self.reason)
        elif st in (State.UNHOLDING, State.UNSUSPENDING):
            self.outputs["stop_request"] = StopRequest.NONE
            self._outputs_dirty = True
            self._transition(Cmd.SC, now, None)
            self.reason = None
            if self.step_index is not None:
                self._resume_step(image, now)
        return None

    def _resume_step(self, image: ProcessImage, now: float) -> None:
        """Unhold: a step whose result the sensors already show counts as done (it finished
        while we were away); otherwise its command goes again with a new sequence number."""
        assert self.plan is not None and self.step_index is not None
        step = SEQUENCE[self.step_index]
        view = StepView(image, self.plan, self.cfg, now, now)
        if step.command is not None and step.complete(view) and step.fault(view) is None:
            self._emit(StepStarted(t=now, swap_id=self.plan.swap_id, step=step.name,
                                   command=None, seq=None, param=None, resumed=True))
            self.step_started_at = now
            self._step_done(image, now, confirmed_by="read-back")
        else:
            self._begin_step(self.step_index, now)

    # ---- internals ---------------------------------------------------------------------
    def _tripped(self, now: float) -> list[tuple[interlocks.Interlock, interlocks.Reaction, str]]:
        if self._image is None:
            return []
        inp = interlocks.Inputs(
            self._image, self.cfg, now, self._hb_changed_at, self.state,
            self.step.name if self.step else None, self.plan, self._pack_events,
        )
        return interlocks.evaluate(inp, self.disabled_interlocks)

    def _pack_trust(self, image: ProcessImage, now: float) -> None:
        """Bind locations to identities, cross-check what the pack bus says against the PLC
        and against what the station did (station/pack_trust.py); act on a distrusted pack."""
        bound_before = set(self.trust.bindings)
        for ev in self.trust.update(image, now, self._granted_max):
            self._distrusted(ev, now)
        for loc in bound_before - set(self.trust.bindings):  # the pack (or the car) left
            self._isolated = {k for k in self._isolated if k[0] != loc}
            if loc.is_bay:
                self.alarms.clear(loc)
        self._view = self.trust.view(image)

    def _distrusted(self, ev: TrustEvent, now: float) -> None:
        slot = ev.location.rack_slot
        action = ("slot locked out until an operator releases it" if slot is not None else
                  "no swap with this pack until the car leaves or an operator releases it")
        if self._uses(ev.location):
            self._abort(f"pack not trusted: {ev.detail}", now, code=ev.kind)
            action += "; swap aborted"
        self._alarm(ev.location, ev.serial, ev.kind, ev.detail, action, now)
        if slot is not None:
            self._lock_out(slot, ev.serial, ev.kind, ev.detail, now, isolated=False)

    def _uses(self, loc: Location) -> bool:
        """Does the running swap still depend on the pack at loc? The bay always; the fetch
        slot until its pack is on the shuttle."""
        if self.plan is None or self.state in (State.ABORTING, State.ABORTED):
            return False
        if loc.is_bay:
            return True
        fetch_done = self.step_index is not None and self.step_index > FETCH_INDEX
        return loc == Location.rack(self.plan.fetch_slot) and not fetch_done

    def _alarm(self, loc: Location, serial: int | None, kind: str, detail: str, action: str,
               now: float) -> None:
        """One alarm per location, pack and kind until it clears, and a bounded number in
        all (AlarmGate); what the gate holds back is counted and reported once a window."""
        if self.alarms.admit((loc, kind, serial), now):
            self._emit(Alarm(t=now, location=str(loc), slot=loc.rack_slot, serial=serial,
                             alarm=kind, reason=detail, action=action))
        elif self.alarms.flooded(now):
            self._emit(Alarm(t=now, location="station", slot=None, serial=None,
                             alarm="alarms_suppressed",
                             reason=f"more than {self.alarms.burst} alarms in "
                             f"{self.alarms.window_s:g} s: further ones are counted, not "
                             "recorded", action="see the pack alarms before it"))

    def _lock_out(self, slot: int, serial: int | None, cause: str, reason: str, now: float,
                  isolated: bool) -> None:
        if slot in self.locked_out_slots:
            return
        self.locked_out_slots[slot] = reason
        self._emit(SlotLocked(t=now, slot=slot, serial=serial, cause=cause, reason=reason,
                              isolated=isolated))

    def _pack_safety(self, image: ProcessImage, now: float) -> None:
        """Isolate, lock out and alarm on every pack event at a location the PLC shows full,
        whatever the state: isolation once per pack, one alarm per pack and kind."""
        self._pack_events = tuple(pack_events(image, self.cfg, self._temps, now,
                                              binding_of=self.trust.binding_of))
        for ev in self._pack_events:
            loc, slot = ev.location, ev.location.rack_slot
            if (loc, ev.serial) not in self._isolated:
                self._isolated.add((loc, ev.serial))
                self._pack_commands.append(PackCommand(loc, PackCommandKind.ISOLATE))
            self._alarm(loc, ev.serial, ev.kind, f"pack {ev.serial} in {loc}: {ev.detail}",
                        "isolated" + (f", slot {slot} locked out" if slot else ""), now)
            if slot is not None:
                self._lock_out(slot, ev.serial, ev.kind, ev.detail, now, isolated=True)

    def release_slot(self, slot: int, reason: str, origin: str, now: float,
                     word: str = "pack release") -> Decision:
        """An operator has checked a locked-out slot's pack (or the bay's, slot 0) and puts
        it back in service; refused while its cause is still seen. Raises CommandRefused."""
        reason = reason.strip()
        if not reason:
            raise CommandRefused(f"{word} refused: say why (the reason is journaled)")
        loc = BAY if slot == 0 else Location.rack(slot)
        if slot != 0 and slot not in self.locked_out_slots:
            raise CommandRefused(f"{word} refused: {loc} is not locked out")
        if slot == 0 and self.trust.distrust(BAY) is None:
            raise CommandRefused(f"{word} refused: the vehicle bay's pack is trusted")
        still = [ev.detail for ev in self._pack_events if ev.location == loc]
        if still:
            raise CommandRefused(f"{word} refused: {loc} still shows " + "; ".join(still))
        serial = self.trust.serial(loc)
        isolated = any(lo == loc for lo, _ in self._isolated)
        self.locked_out_slots.pop(slot, None)
        self.trust.release(loc)
        self.alarms.clear(loc)
        self._isolated = {k for k in self._isolated if k[0] != loc}
        if isolated or slot != 0:
            # the pack may have isolated itself on our command before a restart: ask it back
            self._pack_commands.append(PackCommand(loc, PackCommandKind.CLEAR_ISOLATION))
        self._emit(SlotReleased(t=now, slot=slot, serial=serial, reason=reason, origin=origin))
        return self._flush()

    # ---- charging, in the scan ----------------------------------------------------------
    def _charging(self, image: ProcessImage, now: float) -> None:
        """Every charge period: a grant for every rack pack, sent as PackControl (the packs
        stop charging without its refresh); journaled when a pack's grant changes."""
        cap = self.network.cap_at(image.wall_time)
        lowered = cap < self._cap_kw  # a schedule window began: not a second over it
        if (now < self._next_charge_plan and not lowered) or image.plc_read_at is None:
            return
        self._next_charge_plan = now + self.charge_period_s
        self._cap_kw = cap
        excluded = {s: f"slot locked out: {why}" for s, why in self.locked_out_slots.items()}
        excluded.update(self._stalls(image, now))
        view = self._view if self._view is not None else self.trust.view(image)
        grants = plan_charging(view, self.cfg, now, excluded, self._waiting_family, cap)
        self._note_grants(grants, now)
        for g in grants:
            self._pack_commands.append(PackCommand(g.location, g.command, g.current_limit_a,
                                                   g.voltage_limit_v))
            last = self.charging.get(g.location)
            if last is None or (last.serial, last.command, last.current_limit_a,
                                last.voltage_limit_v) != (g.serial, g.command,
                                                          g.current_limit_a, g.voltage_limit_v):
                self._emit(PackCommandChanged(
                    t=now, location=str(g.location), slot=g.location.rack_slot,
                    serial=g.serial, command=g.command.value,
                    current_limit_a=g.current_limit_a, voltage_limit_v=g.voltage_limit_v,
                    power_kw=g.power_kw, reason=g.reason))
            self.charging[g.location] = g
        heard = {g.location for g in grants}
        for loc in [loc for loc in self.charging if loc not in heard]:
            last = self.charging.pop(loc)  # the pack left, went silent, or is not trusted
            distrust = self.trust.distrust(loc)
            if distrust is not None and last.command == PackCommandKind.CHARGE_ENABLE:
                # a pack that may be someone else is told to stop now, not at its timeout
                self._pack_commands.append(PackCommand(loc, PackCommandKind.CHARGE_DISABLE))
                self._emit(PackCommandChanged(
                    t=now, location=str(loc), slot=loc.rack_slot, serial=last.serial,
                    command=PackCommandKind.CHARGE_DISABLE.value, current_limit_a=0.0,
                    voltage_limit_v=0.0, power_kw=0.0, reason=f"not trusted: {distrust.detail}"))

    def _note_grants(self, grants: list[ChargeGrant], now: float) -> None:
        """The largest current each pack was granted lately: it may still draw on it (pack
        trust judges its SOC rise and its current by it). Kept once a charge period."""
        hold = GRANT_HOLD_PERIODS * self.charge_period_s
        for g in grants:
            if g.command == PackCommandKind.CHARGE_ENABLE:
                self._granted.setdefault(g.location, []).append((now, g.current_limit_a))
        for loc in list(self._granted):
            self._granted[loc] = [(t, a) for t, a in self._granted[loc] if now - t <= hold]
            if not self._granted[loc]:
                del self._granted[loc]
        self._granted_max = {loc: max(a for _, a in log) for loc, log in self._granted.items()}

    def _stalls(self, image: ProcessImage, now: float) -> dict[int, str]:
        """A pack granted charge current that draws none for longer than stalled_after_s is
        an alarm, not a silent wait; it is left out and retried after ten times as long."""
        c = self.cfg.charging
        limit = max(c.stalled_after_s / self.cfg.sequence.speed_factor, STALL_FLOOR_S)
        out: dict[int, str] = {}
        for loc, g in self.charging.items():
            rep = image.packs.get(loc)
            key = (loc, g.serial)
            slot = loc.rack_slot
            if rep is None or slot is None or rep.serial != g.serial:
                self._stall.pop(key, None)
                continue
            retry_at = self._stalled.get(key)
            if retry_at is not None and now < retry_at:
                out[slot] = "charging stalled: no current drawn; retry later"
                continue
            drawing = rep.current_a is not None and rep.current_a >= c.stalled_current_a
            if g.command != PackCommandKind.CHARGE_ENABLE or drawing:
                self._stall.pop(key, None)
                continue
            since = self._stall.setdefault(key, now)
            if now - since > limit:
                self._stall.pop(key, None)
                first = key not in self._stalled
                self._stalled[key] = now + 10 * limit
                out[slot] = "charging stalled: no current drawn; retry later"
                if first:
                    self._emit(Alarm(
                        t=now, location=str(loc), slot=slot, serial=g.serial,
                        alarm="charge_stalled",
                        reason=f"pack {g.serial} in {loc}: granted {g.current_limit_a:g} A up "
                        f"to {g.voltage_limit_v:g} V but drawing {rep.current_a} A for more "
                        f"than {c.stalled_after_s:g} s (SOC {rep.soc_pct} %, "
                        f"{rep.voltage_v} V)",
                        action="charge disabled; retried later"))
        return out

    def _ask_unidentified(self, image: ProcessImage) -> None:
        """A pack heard but not yet identified (or without its charge limits) is asked at
        once (the CAN side rate-limits the requests) instead of waiting for its period."""
        for loc, rep in image.packs.items():
            if not rep.identified or rep.cell_count is None:
                self._pack_requests.append(PackRequest(loc, IDENTIFY_KINDS))

    def _plc_quiet(self, image: ProcessImage) -> bool:
        return image.plc_read_at is not None and image.plc.get("cmd_status") != CmdStatus.BUSY

    def _emit(self, event: Event) -> None:
        self._pending.append(event)

    def _flush(self) -> Decision:
        d = Decision(events=self._pending, pack_commands=self._pack_commands,
                     pack_requests=self._pack_requests)
        self._pending, self._pack_commands, self._pack_requests = [], [], []
        if self._outputs_dirty:
            d.outputs = dict(self.outputs)
            self._outputs_dirty = False
        d.command_issued = self._command_issued
        self._command_issued = False
        return d

    def _transition(self, cmd: Cmd, now: float, reason: str | None) -> None:
        old = self.state
        new = self.machine.fire(cmd)
        self._acting_since = now
        if reason is not None:
            self.reason = reason
        self._emit(StateChanged(t=now, old=old.label, new=new.label, number=int(new),
                                reason=reason, swap_id=self.plan.swap_id if self.plan else None))

    def _end_swap(self, outcome: str, reason: str | None, now: float) -> None:
        if self.plan is None:
            return
        self._emit(SwapEnded(t=now, swap_id=self.plan.swap_id, outcome=outcome,
                             reason=reason, step=self.step.name if self.step else None))
        if outcome == "completed":
            self.plan, self.step_index = None, None
        else:  # what recovery needs: the plan and the step it ended in
            self.interrupted = Interrupted(self.plan, self.step.name if self.step else None,
                                           outcome)

    def complete_after_restart(self, reason: str, now: float) -> Decision:
        """The read-back shows the held swap's last step already done (the car has left):
        record it completed and stop; nothing moves."""
        assert self.plan is not None and self.step is not None
        self._emit(StepDone(t=now, swap_id=self.plan.swap_id, step=self.step.name,
                            confirmed_by="read-back"))
        self._end_swap("completed", reason, now)
        self.plan, self.step_index = None, None
        self._transition(Cmd.STOP, now, reason)
        return self._flush()

    def abort(self, reason: str, now: float, code: str = "abort") -> Decision:
        """Abort for a reason found outside the scan (e.g. a restart that does not add up)."""
        self._abort(reason, now, code)
        return self._flush()

    def _abort(self, reason: str, now: float, code: str = "abort") -> None:
        if self.state in (State.ABORTING, State.ABORTED):
            return
        self._emit(Fault(t=now, code=code, reason=reason,
                         swap_id=self.plan.swap_id if self.plan else None,
                         step=self.step.name if self.step else None))
        self.outputs["stop_request"] = StopRequest.CAT1
        self._outputs_dirty = True
        self._end_swap("aborted", reason, now)
        self._transition(Cmd.ABORT, now, reason)
        self.plan, self.step_index = None, None

    def _stop_motion(self, cat: StopRequest, reason: str, now: float, cmd: Cmd,
                     outcome: str | None) -> None:
        self.outputs["stop_request"] = cat
        self._outputs_dirty = True
        if outcome is not None:
            self._end_swap(outcome, reason, now)
            self.plan, self.step_index = None, None
        self._transition(cmd, now, reason)

    def _idle(self, image: ProcessImage, now: float, inhibited: bool) -> None:
        token = int(image.plc.get("vehicle_token", 0) or 0)
        if not image.plc.get("vehicle_present") or token == 0:
            self._vehicle_token, self._identify_started_at = 0, None
            self._waiting_family = None
            self._set_inhibit(None, now)
            return
        if token != self._vehicle_token:  # another vehicle: whatever the bay said is old
            self._vehicle_token, self._waiting_family = token, None
            self._identify_started_at = image.plc_read_at or now
        assert self._identify_started_at is not None
        distrust = self.trust.distrust(BAY)
        if distrust is not None:
            self._candidate = None
            self._set_inhibit(f"vehicle pack not trusted: {distrust.detail}", now)
            return
        if not image.pack_present(BAY):  # nothing to swap, and nothing on CAN will count
            self._candidate = None
            self._set_inhibit(f"vehicle {token} on the platform without a pack in its bay "
                              "(PLC vehicle_pack_present off)", now)
            return
        view = self._view if self._view is not None else self.trust.view(image)
        rep = view.packs.get(BAY)
        # The bay pack's identity must have been heard since this vehicle arrived (not the
        # pack we installed in the one before, whether or not we saw that one leave), and
        # its status fresh; until then it is asked for it.
        if rep is None or not rep.identified or \
                not rep.seen_since(self._identify_started_at, PackData.IDENTITY):
            self._pack_requests.append(PackRequest(BAY, IDENTIFY_KINDS))
            return
        if not image.plc.get("vehicle_ready") or not image.fresh(rep, PackData.STATUS, now):
            return  # identification still running
        assert rep.serial is not None and rep.family is not None and rep.chemistry is not None
        if inhibited:
            self._set_inhibit("interlocks active: " + ", ".join(self.active_interlocks), now)
            return
        # The VIN counts only when heard since this vehicle arrived (not the car before's)
        vin = image.vehicle_vin if image.vehicle_vin_at is not None and \
            image.vehicle_vin_at >= self._identify_started_at else None
        refusal = self.network.authorise(vin, rep.family, image.wall_time)
        if refusal is None and vin is None and self.network.reservations and \
                now - self._identify_started_at < VIN_WAIT_S:
            # the car may hold a reservation: give its VIN one broadcast period to come
            refusal = "waiting for the vehicle's VIN on CAN (packs are reserved here)"
        if refusal is not None:  # waiting for the VIN, or not authorised: stays Idle
            self._candidate, self._waiting_family = None, None
            self._set_inhibit(refusal, now)
            return
        choice = choose_pack(view, self.cfg, rep.family, now,
                             excluded=frozenset(self.locked_out_slots),
                             reserved=self.network.reserved_slots(except_vin=vin),
                             own=self.network.reservation_of(vin))
        if not isinstance(choice, Choice):
            self._candidate = None
            self._waiting_family = rep.family  # charging serves its family first
            self._set_inhibit(choice.reason, now)
            return
        self._waiting_family = None
        self._set_inhibit(None, now)
        pack_out = PackInfo(rep.serial, rep.family, rep.chemistry, rep.soc_pct or 0.0,
                            rep.soh_pct, None, rep.rated_energy_kwh)
        swap_id = f"{self.cfg.station.id}-{self.swap_number:06d}"
        self._candidate = SwapPlan(swap_id, token, pack_out, choice.pack, choice.store_slot,
                                   choice.pack.slot or 0, self._identify_started_at, vin)
        if self.cfg.operation.auto_start and self.unit_mode == PRODUCTION:
            self._start_swap(self._candidate, now, "automatic start")

    def _start_swap(self, plan: SwapPlan, now: float, origin: str) -> None:
        self.swap_number += 1
        self.plan, self._candidate = plan, None
        self._granted_since_plan = {}  # the plan read its packs' SOC this scan
        self.interrupted = None  # started from home: the last stop's packs are all put away
        self._emit(SwapStarted(t=now, swap_id=plan.swap_id, vehicle_token=plan.vehicle_token,
                               pack_out=plan.pack_out, pack_in=plan.pack_in,
                               store_slot=plan.store_slot, fetch_slot=plan.fetch_slot,
                               origin=origin, vin=plan.vin))
        own = self.network.reservation_of(plan.vin)
        if own is not None:  # the reservation is spent on this swap, its own pack or not
            del self.network.reservations[own.reservation_id]
            kept = own.slot == plan.fetch_slot and own.serial == plan.pack_in.serial
            self._emit(ReservationEnded(
                t=now, reservation_id=own.reservation_id, vin=own.vin, slot=own.slot,
                serial=own.serial, outcome="used", swap_id=plan.swap_id,
                reason=None if kept else f"reserved pack {own.serial} (slot {own.slot}) no "
                f"longer fit; given pack {plan.pack_in.serial} from slot {plan.fetch_slot}"))
        self._emit(StepStarted(t=plan.identify_started_at, swap_id=plan.swap_id,
                               step="identify", command=None, seq=None, param=None))
        self._emit(StepDone(t=now, swap_id=plan.swap_id, step="identify",
                            confirmed_by="sensors"))
        self._transition(Cmd.START, now, f"vehicle {plan.vehicle_token} identified ({origin})")

    def _lapse_reservations(self, image: ProcessImage, now: float) -> None:
        """A reservation past its expiry frees its pack (journaled)."""
        for r in self.network.expired(image.wall_time):
            del self.network.reservations[r.reservation_id]
            self._emit(ReservationEnded(t=now, reservation_id=r.reservation_id, vin=r.vin,
                                        slot=r.slot, serial=r.serial, outcome="expired",
                                        reason=f"expired at {format_time(r.expires_at)}",
                                        swap_id=None))

    def _home_inhibit(self, image: ProcessImage, now: float) -> str | None:
        """At rest, the machine away from home (station/home.py) holds back every start
        and reset; why is the start inhibit (status, journaled), cleared once it is home."""
        away = (away_from_home(image.plc, self.cfg.sequence)
                if image.plc_read_at is not None else None)
        if away is not None and same_things_off(away, self._inhibit):
            self._inhibit = away  # other readings only (a lift lowered by hand): not journaled
        elif away is not None:
            self._set_inhibit(away, now)
        elif self._inhibit is not None and self._inhibit.startswith(HOME_PREFIX):
            self._set_inhibit(None, now)
            # Homed by hand: the bay may hold another pack than the one heard before (one
            # put back from the shuttle); the car is identified again from scratch.
            self._vehicle_token, self._identify_started_at = 0, None
        return away

    def _set_inhibit(self, reason: str | None, now: float) -> None:
        if reason != self._inhibit:
            self._inhibit = reason
            self._emit(Inhibit(t=now, reason=reason, vehicle_token=self._vehicle_token))

    def _next_seq(self, image: ProcessImage | None) -> int:
        ack = int(image.plc.get("cmd_ack_seq", 0) or 0) if image is not None else 0
        if self.seq is None:
            self.seq = self._journaled_seq if self._journaled_seq is not None else ack
        self.seq = self.seq % 0xFFFF + 1  # 1..65535, never 0
        if self.seq == ack:  # the PLC would take it as a command it has already run
            self.seq = self.seq % 0xFFFF + 1
        return self.seq

    def _expect(self, loc: Location, pack: PackInfo, carried: Binding | None) -> None:
        self.trust.expect(loc, PackIdentity(pack.serial, pack.family, pack.chemistry, None),
                          pack.soc_pct, carried, self._granted_since_plan.get(pack.serial, 0.0))

    def _begin_step(self, index: int, now: float) -> None:
        assert self.plan is not None
        step = SEQUENCE[index]
        self.step_index = index
        self.step_started_at = now
        self._handshake = None
        seq = None
        # What arrives where: bound on arrival, with what was learnt of it where it was
        # (pack_trust). The pack leaves the bay in REMOVE and its slot in FETCH.
        if step.name == "remove":
            self._carried[BAY] = self.trust.snapshot(BAY)
        elif step.name == "fetch":
            self._carried[BAY] = self.trust.snapshot(Location.rack(self.plan.fetch_slot))
        elif step.name == "store":
            self._expect(Location.rack(self.plan.store_slot), self.plan.pack_out,
                         self._carried.pop(BAY, None))
        elif step.name == "install":
            self._expect(BAY, self.plan.pack_in, self._carried.pop(BAY, None))
        if step.command is not None:
            seq = self._next_seq(self._image)
            # the PLC's echo as it stands now: a restart shows as it falling back to 0
            echo = self._image.plc.get("cmd_ack_seq") if self._image is not None else None
            self._handshake = Handshake(step.command, seq, now, last_ack=echo)
            self.outputs.update(
                cmd_code=step.command, cmd_param1=step.param(self.plan), cmd_param2=0,
                cmd_seq=seq,
            )
            self._outputs_dirty = True
            self._command_issued = True
        else:
            # A step the controller does itself reads packs: ask for what it needs now,
            # so that nothing heard before the step counts (the check: the installed pack).
            self._pack_requests.append(PackRequest(BAY, CHECK_KINDS))
        self._emit(StepStarted(t=now, swap_id=self.plan.swap_id, step=step.name,
                               command=step.command, seq=seq, param=step.param(self.plan)))

    def _step_done(self, image: ProcessImage, now: float, confirmed_by: str = "plc") -> None:
        step, plan = self.step, self.plan
        assert step is not None and plan is not None and self.step_index is not None
        t_done = image.plc_read_at if step.command and image.plc_read_at else now
        self._emit(StepDone(t=t_done, swap_id=plan.swap_id, step=step.name,
                            confirmed_by=confirmed_by))
        if self.step_index + 1 < len(SEQUENCE):
            self._begin_step(self.step_index + 1, now)
        else:
            self._end_swap("completed", None, now)
            self.outputs.update(cmd_code=NO_COMMAND, cmd_param1=0, cmd_param2=0)
            self._outputs_dirty = True
            self._transition(Cmd.SC, now, None)

    def _execute(self, image: ProcessImage, now: float) -> None:
        step, plan = self.step, self.plan
        assert step is not None and plan is not None and self.step_index is not None
        view = StepView(image, plan, self.cfg, self.step_started_at, now)
        elapsed = now - self.step_started_at
        done = False
        if step.command is None:
            fault = step.fault(view)
            if fault:
                return self._abort(f"{step.name}: {fault}", now, code=f"{step.name}_failed")
            done = step.complete(view)
            if not done:  # keep asking until the installed pack has said who it is
                self._pack_requests.append(PackRequest(BAY, CHECK_KINDS))
        else:
            assert self._handshake is not None
            verdict = self._handshake.judge(
                image.plc, now, name=step.name, seq_cfg=self.cfg.sequence,
                timeout_s=self.cfg.sequence.timeout(step.name),
                shown=lambda: step.complete(view), fault=lambda: step.fault(view),
                off=lambda: step.off(view))
            if verdict.failed:
                assert verdict.code is not None
                return self._abort(f"{step.name}: {verdict.reason}", now, code=verdict.code)
            done = verdict.done
        if done:
            return self._step_done(image, now)
        timeout = self.cfg.sequence.timeout(step.name)
        if step.command is None and elapsed > timeout:
            return self._abort(f"{step.name}: timed out after {timeout:g} s", now,
                               code="step_timeout")
        return None
