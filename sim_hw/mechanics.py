"""The station's ground truth and its PLC logic: a pure model, no I/O.

Time is passed in: `now` is simulated seconds; `real` is monotonic wall-clock seconds,
needed only where the contract speaks of real time (the controller heartbeat timeout,
the packs' PackControl timeout, the command log for latency benchmarks). When `real` is
omitted it is derived as now / speed, which keeps unit tests on one fake clock.

The PLC side follows the PLC contract (drivers/plc/contract.toml): a new non-zero cmd_seq
starts cmd_code; cmd_ack_seq echoes it with cmd_status busy, then done or error +
cmd_error_code. The model works with the raw codes of the wire, every one of them taken
from the contract by name.
The sim PLC enforces its own interlocks (refusing with error refused), like a real one would:
the controller is supervision, not the safety barrier.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from drivers.bms.protocol import VEHICLE_PACK_SA, rack_sa
from drivers.plc.contract import load_contract
from sim_hw.config import SimConfig
from sim_hw.faults import FaultRegistry
from sim_hw.motion import Motion, Phase, event, one_by_one, ramp, together, wait
from sim_hw.observer import Observer
from sim_hw.packs import SimPack
from sim_hw.vehicles import Vehicle, VehicleSource

# Every code the PLC side uses, from the contract's command table and enumerations.
CONTRACT = load_contract()
COMMANDS: dict[int, str] = {c.code: c.name for c in CONTRACT.commands.values()}
STATUS_IDLE, STATUS_BUSY, STATUS_DONE, STATUS_ERROR = (
    CONTRACT.encode_enum("cmd_status", n) for n in ("idle", "busy", "done", "error")
)
ERR_NONE, ERR_UNKNOWN, ERR_REFUSED, ERR_MECHANISM, ERR_TIMEOUT, ERR_BAD_PARAM, ERR_STOPPED = (
    CONTRACT.encode_enum("cmd_error_code", n)
    for n in ("none", "unknown_command", "refused", "mechanism_fault", "plc_timeout",
              "bad_parameter", "stopped")
)
STOP_NONE = CONTRACT.encode_enum("stop_request", "none")

POSITION_DONE_MM = 2.0  # POSITION leaves both offsets inside this
LIFT_OFFSET_MAX_MM = 5.0  # LIFT refuses a car standing further off
AT_MM = 0.5  # position tolerance for "lift at 0", "shuttle home", ...
UNLOCK_TORQUE_NM, UNLOCK_ANGLE_DEG = (90.0, 5.0), (720.0, 20.0)  # (nominal, +-)
LOCK_TORQUE_NM, LOCK_ANGLE_DEG = (120.0, 3.0), (90.0, 4.0)
CHARGE_STEP_S = 5.0  # longest integration step for pack charging (simulated seconds)


@dataclass
class CommandRecord:
    """One command as the PLC saw it; times in sim seconds and monotonic real seconds."""

    seq: int
    code: int
    name: str
    param1: int
    param2: int
    taken_sim: float
    taken_real: float
    ended_sim: float | None = None
    ended_real: float | None = None
    status: int = STATUS_BUSY  # the cmd_status code: busy, done or error
    error_code: int = ERR_NONE
    reason: str = ""  # why it was refused or stopped, for logs and tests


@dataclass
class SimEvent:
    t: float  # sim seconds
    kind: str  # arrival, ready, pack_awake, command, departure
    text: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Bolts:
    tight: list[bool]
    torque_nm: list[float]
    angle_deg: list[float]

    @classmethod
    def make(cls, n: int) -> Bolts:
        return cls([True] * n, [0.0] * n, [0.0] * n)

    @property
    def count(self) -> int:
        return len(self.tight)

    @property
    def n_tight(self) -> int:
        return sum(self.tight)


class StationModel:
    """Vehicle, lift, shuttle, stacker, rack, bolts, safety inputs and the command handshake."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        st = config.station
        self.rng = random.Random(f"mech-{config.seed}")
        self.now = 0.0
        self.real = 0.0
        self.on_event: Callable[[SimEvent], None] | None = None
        # mechanism
        self.lift_mm = 0.0
        self.shuttle_mm = 0.0
        self.shuttle_pack: SimPack | None = None
        self.stacker_pos = 0.0  # slot units; 0 = shuttle transfer point
        self.stacker_pack: SimPack | None = None
        # (command, slot) of a STORE or FETCH stopped after its pack changed place: the same
        # command again finishes it (the stacker's way back) instead of being refused
        self._stacker_resume: tuple[str, int] | None = None
        self.rack: dict[int, SimPack | None] = dict.fromkeys(range(1, st.slots + 1))
        for rp in config.initial_rack():
            cycles = self.rng.randrange(20, 600)
            drawn_soh = round(self.rng.uniform(90.0, 99.5), 1)  # drawn always: a seed's
            #                                                     later draws stay the same
            self.rack[rp.slot] = SimPack(
                serial=rp.serial, family=rp.family, chemistry=rp.chemistry, soc_pct=rp.soc,
                cycle_count=cycles, soh_pct=drawn_soh if rp.soh is None else rp.soh,
                ambient_c=config.ambient_c,
                # a pack that has stood still: every cell at one temperature
                min_cell_temp_c=config.ambient_c if rp.temp_c is None else rp.temp_c,
                max_cell_temp_c=config.ambient_c if rp.temp_c is None else rp.temp_c,
            )
        self.bolts = Bolts.make(st.bolt_count)
        # fault injection (sim_hw/faults.py) and the independent observer (observer.py)
        self.faults = FaultRegistry(self)
        self.observer = Observer(self)
        # safety inputs: settable attributes; each also reads false while its fault is set
        self.estop_ok = True
        self.safety_plc_ok = True
        self.light_curtain_clear = True
        self.doors_closed = True
        self.smoke_clear = True
        # vehicles
        self.vehicles = VehicleSource(config, self._rack_serials())
        self.vehicle: Vehicle | None = None
        self.history: list[dict[str, Any]] = []
        # command handshake
        self.ctrl_heartbeat: int | None = None
        self.heartbeat_changed_real: float | None = None
        self.stop_request = STOP_NONE
        # None until the first write after start-up: that cmd_seq counts as already seen, so
        # a controller re-sending its last command after a PLC restart does not re-run it.
        self.last_seq: int | None = None
        self.cmd_ack_seq = 0
        self.cmd_status = STATUS_IDLE
        self.cmd_error_code = ERR_NONE
        self.command_log: list[CommandRecord] = []
        self._motion: Motion | None = None
        self._running: CommandRecord | None = None

    # ----------------------------------------------------------- safety inputs
    @property
    def estop_ok(self) -> bool:
        return self._estop_ok and not self.faults.is_active("estop")

    @estop_ok.setter
    def estop_ok(self, ok: bool) -> None:
        self._estop_ok = bool(ok)

    @property
    def safety_plc_ok(self) -> bool:
        return self._safety_plc_ok and not self.faults.is_active("safety_plc_fault")

    @safety_plc_ok.setter
    def safety_plc_ok(self, ok: bool) -> None:
        self._safety_plc_ok = bool(ok)

    @property
    def light_curtain_clear(self) -> bool:
        return self._light_curtain_clear and not self.faults.is_active("light_curtain")

    @light_curtain_clear.setter
    def light_curtain_clear(self, ok: bool) -> None:
        self._light_curtain_clear = bool(ok)

    @property
    def doors_closed(self) -> bool:
        return self._doors_closed and not self.faults.is_active("door_open")

    @doors_closed.setter
    def doors_closed(self, ok: bool) -> None:
        self._doors_closed = bool(ok)

    @property
    def smoke_clear(self) -> bool:
        return self._smoke_clear and not self.faults.is_active("smoke")

    @smoke_clear.setter
    def smoke_clear(self, ok: bool) -> None:
        self._smoke_clear = bool(ok)

    # ------------------------------------------------------------------ time
    def advance(self, now: float, real: float | None = None) -> None:
        """Bring the model to sim time `now` (never backwards)."""
        now = max(now, self.now)
        real = now / self.config.speed if real is None else real
        dt = now - self.now
        before = self.observer.snapshot()
        seq = self._running.seq if self._running is not None else 0
        if self._running is not None:
            why = self._motion_inhibit(real)
            if why:  # detected at `now`; the motion stops where it stood at the last tick
                self._end(ERR_STOPPED, self.now, real, why)
        if self._motion is not None and self._running is not None:
            end = min(now, self._motion.end)
            if self._motion.advance(end):
                self._end(ERR_NONE, end, real - (now - end) / self.config.speed)
        self._vehicles(now)
        self.faults.apply()
        self._charge(dt, real)
        self.now, self.real = now, real
        self.observer.check(before, seq)

    def set_outputs(self, values: dict[str, Any], now: float, real: float | None = None) -> None:
        """Take the controller's output registers (decoded by name) as written at `now`."""
        self.advance(now, real)
        real = self.real
        hb = values.get("ctrl_heartbeat")
        if hb is not None and hb != self.ctrl_heartbeat:
            self.ctrl_heartbeat = int(hb)
            self.heartbeat_changed_real = real
        if "stop_request" in values:
            self.stop_request = int(values["stop_request"])
        if self._running is not None and self.stop_request != STOP_NONE:
            self._end(ERR_STOPPED, self.now, real, f"stop_request {self.stop_request}")
        if "cmd_seq" not in values:
            return
        seq = int(values["cmd_seq"])
        if self.last_seq is None:
            self.last_seq = seq
        elif seq != 0 and seq != self.last_seq:
            self.last_seq = seq
            self._take(
                seq,
                int(values.get("cmd_code", CONTRACT.command_code("NONE"))),
                int(values.get("cmd_param1", 0)),
                int(values.get("cmd_param2", 0)),
                real,
            )

    def restart_program(self) -> None:
        """The PLC program restarts (a power cycle, a download): the running command is
        lost and its motion stops where it stands; the handshake starts afresh, as the
        contract says of a PLC start-up (cmd_ack_seq 0, cmd_status idle, the cmd_seq in the
        next output block taken as already seen)."""
        if self._running is not None:
            self._running.status, self._running.reason = STATUS_ERROR, "PLC restarted"
        self._running, self._motion = None, None
        self.last_seq = None
        self.cmd_ack_seq, self.cmd_status, self.cmd_error_code = 0, STATUS_IDLE, ERR_NONE
        self._emit("command", "PLC program restarted")

    def heartbeat_stale(self, real: float) -> bool:
        hb = self.heartbeat_changed_real
        return hb is None or real - hb > self.config.ctrl_heartbeat_timeout_s

    @property
    def safety_ok(self) -> bool:
        return all((self.estop_ok, self.safety_plc_ok, self.light_curtain_clear,
                    self.doors_closed, self.smoke_clear))

    def _motion_inhibit(self, real: float) -> str:
        if self.stop_request != STOP_NONE:
            return f"stop_request {self.stop_request}"
        if self.heartbeat_stale(real):
            return "controller heartbeat stale"
        if not self.safety_ok:
            return "safety chain open"
        return ""

    # ------------------------------------------------------------- handshake
    def _take(self, seq: int, code: int, p1: int, p2: int, real: float) -> None:
        before = self.observer.snapshot()
        self._start(seq, code, p1, p2, real)
        self.observer.check(before, seq)

    def _start(self, seq: int, code: int, p1: int, p2: int, real: float) -> None:
        rec = CommandRecord(seq, code, COMMANDS.get(code, f"code {code}"), p1, p2, self.now, real)
        self.command_log.append(rec)
        busy = self._running is not None
        if busy:
            # A new command while one runs breaks the handshake: stop both, like a PLC would.
            self._end(ERR_STOPPED, self.now, real, f"superseded by seq {seq}")
        self._running = rec
        self.cmd_ack_seq, self.cmd_status, self.cmd_error_code = seq, STATUS_BUSY, ERR_NONE
        self._emit("command", f"cmd {seq} {rec.name} p1={p1} taken", rec=rec)
        if busy:
            self._end(ERR_REFUSED, self.now, real, "another command was running")
            return
        if code not in COMMANDS:
            self._end(ERR_UNKNOWN, self.now, real, "unknown command")
            return
        why = self._motion_inhibit(real)
        if why:
            self._end(ERR_REFUSED, self.now, real, why)
            return
        err, why, phases = self._plan(COMMANDS[code], p1)
        if err != ERR_NONE:
            self._end(err, self.now, real, why)
            return
        self._motion = Motion(self.now, self._duration(code), phases)
        if self._motion.advance(self.now):
            self._end(ERR_NONE, self.now, real)

    def _end(self, err: int, t: float, real: float, why: str = "") -> None:
        rec = self._running
        if rec is None:
            return
        rec.ended_sim, rec.ended_real, rec.error_code, rec.reason = t, real, err, why
        rec.status = STATUS_ERROR if err != ERR_NONE else STATUS_DONE
        self._running, self._motion = None, None
        if rec.seq == self.cmd_ack_seq:
            self.cmd_status, self.cmd_error_code = rec.status, err
        if err == ERR_NONE:
            self._completed(rec, t)
        verdict = f"error {err} ({why})" if err != ERR_NONE else "done"
        self._emit("command", f"cmd {rec.seq} {rec.name} {verdict}", rec=rec, t=t)

    def _duration(self, code: int) -> float:
        name = COMMANDS[code].lower()
        return float(getattr(self.config.timing, name, 0.0))

    # ---------------------------------------------------------------- plans
    def _plan(self, command: str, p1: int) -> tuple[int, str, list[Phase]]:
        """Check the PLC's own interlocks for a command (by contract name);
        (error code, reason, phases)."""
        planner: dict[str, Callable[[], list[Phase] | str]] = {
            "NONE": lambda: [], "POSITION": self._plan_position, "LIFT": self._plan_lift,
            "UNLOCK": self._plan_unlock, "REMOVE": self._plan_remove,
            "INSTALL": self._plan_install, "LOCK": self._plan_lock, "LOWER": self._plan_lower,
            "RELEASE": self._plan_release, "HOME": self._plan_home, "NOOP": lambda: [],
        }
        if command in ("STORE", "FETCH"):
            if not 1 <= p1 <= self.config.station.slots:
                return ERR_BAD_PARAM, f"slot {p1} outside 1..{self.config.station.slots}", []
            result = self._plan_store(p1) if command == "STORE" else self._plan_fetch(p1)
        elif command in planner:
            result = planner[command]()
        else:  # a contract command this simulator does not implement
            return ERR_UNKNOWN, f"{command} not implemented by the simulator", []
        if isinstance(result, str):
            return ERR_REFUSED, result, []
        return ERR_NONE, "", result

    def _lift_at(self, mm: float) -> bool:
        return abs(self.lift_mm - mm) <= AT_MM

    @property
    def shuttle_home(self) -> bool:
        return self.shuttle_mm <= AT_MM

    @property
    def shuttle_docked(self) -> bool:
        return self.shuttle_mm >= self.config.station.shuttle_car_mm - AT_MM

    def _set_lift(self, v: float) -> None:
        self.lift_mm = v

    def _set_shuttle(self, v: float) -> None:
        self.shuttle_mm = v

    def _set_stacker(self, v: float) -> None:
        self.stacker_pos = v

    def _shuttle_to(self, share: float, target: float) -> Phase:
        return ramp(share, lambda: self.shuttle_mm, self._set_shuttle, target)

    def _stacker_to(self, share: float, slot: int) -> Phase:
        return ramp(share, lambda: self.stacker_pos, self._set_stacker, float(slot))

    def _plan_position(self) -> list[Phase] | str:
        v = self.vehicle
        if v is None or not v.ready:
            return "no vehicle ready on the platform"
        if not self._lift_at(0):
            return "lift not down"
        fx = self.rng.uniform(-0.75, 0.75) * POSITION_DONE_MM
        fy = self.rng.uniform(-0.75, 0.75) * POSITION_DONE_MM

        def put_x(x: float) -> None:
            v.offset_x_mm = x

        def put_y(y: float) -> None:
            v.offset_y_mm = y

        return [together(1.0, ramp(1.0, lambda: v.offset_x_mm, put_x, fx),
                         ramp(1.0, lambda: v.offset_y_mm, put_y, fy))]

    def _plan_lift(self) -> list[Phase] | str:
        v = self.vehicle
        if v is None:
            return "no vehicle"
        if max(abs(self.offset_x_mm), abs(v.offset_y_mm)) > LIFT_OFFSET_MAX_MM:
            return "vehicle not positioned"
        return [ramp(1.0, lambda: self.lift_mm, self._set_lift,
                     self.config.station.swap_height_mm)]

    def _plan_unlock(self) -> list[Phase] | str:
        if self.vehicle is None or not self._lift_at(self.config.station.swap_height_mm):
            return "vehicle not lifted to swap height"
        if self.shuttle_pack is not None:
            return "shuttle not empty"
        return [
            self._shuttle_to(0.35, self.config.station.shuttle_car_mm),
            one_by_one(0.65, lambda: [i for i, t in enumerate(self.bolts.tight) if t],
                       self._loosen),
        ]

    def _loosen(self, i: int) -> None:
        self._gun_run(i, UNLOCK_TORQUE_NM, UNLOCK_ANGLE_DEG, tight=False)

    def _tighten(self, i: int) -> None:
        self._gun_run(i, LOCK_TORQUE_NM, LOCK_ANGLE_DEG, tight=True)

    def _gun_run(self, i: int, torque: tuple[float, float], angle: tuple[float, float],
                 tight: bool) -> None:
        """One bolt's gun run; a run ending outside its torque window changes nothing."""
        t = self._jitter(torque)
        a = self._jitter(angle)
        forced = self.faults.bolt_torque(i)  # fault injection: bolt_torque_fail
        if forced is not None:
            t = forced
        if abs(t - torque[0]) <= torque[1]:
            self.bolts.tight[i] = tight
        self.bolts.torque_nm[i] = t
        self.bolts.angle_deg[i] = a

    def _jitter(self, window: tuple[float, float]) -> float:
        nominal, tol = window
        return round(nominal + self.rng.uniform(-tol, tol) * 0.9, 1)

    def _plan_remove(self) -> list[Phase] | str:
        v = self.vehicle
        if v is not None and v.pack is not None:
            if self.bolts.n_tight:
                return "bolts not all loose"
            if not self.shuttle_docked or self.shuttle_pack is not None:
                return "shuttle not docked empty under the car"
            return [event(self._bay_pack_quiet), wait(0.4),
                    event(self._pack_bay_to_shuttle), self._shuttle_to(0.6, 0.0)]
        # resume a REMOVE stopped after the pack left the bay
        if self.shuttle_pack is not None and not self.shuttle_home and v is not None:
            return [self._shuttle_to(1.0, 0.0)]
        return "no pack in the vehicle bay"

    def _bay_pack_quiet(self) -> None:
        if self.vehicle is not None:  # the pack's BMS goes quiet as it is lowered away
            self.vehicle.bay_awake_from = None

    def _pack_bay_to_shuttle(self) -> None:
        v = self.vehicle
        if v is None or v.pack is None:
            return
        self.shuttle_pack, v.pack = v.pack, None
        v.visit["pack_out"] = self.shuttle_pack.summary()

    def _plan_store(self, slot: int) -> list[Phase] | str:
        if self._stacker_resume == ("store", slot) and self.stacker_pack is None:
            return [self._stacker_to(1.0, 0)]  # stopped on its way back: finish that
        if self.rack[slot] is not None:
            return f"slot {slot} occupied"
        if self.stacker_pack is None:  # a stacker still holding a pack (stopped) may store it
            if self.shuttle_pack is None or not self.shuttle_home:
                return "no pack on the shuttle at home"
            first = [event(self._pack_shuttle_to_stacker)]
        else:
            first = []
        return [*first, self._stacker_to(0.45, slot), event(lambda: self._stacker_to_slot(slot)),
                self._stacker_to(0.55, 0)]

    def _pack_shuttle_to_stacker(self) -> None:
        self.stacker_pack, self.shuttle_pack = self.shuttle_pack, None

    def _stacker_to_slot(self, slot: int) -> None:
        pack, self.stacker_pack = self.stacker_pack, None
        self.rack[slot] = pack
        self._stacker_resume = ("store", slot)
        v = self.vehicle
        if pack is not None and v is not None and v.visit.get("pack_out", {}).get(
            "serial"
        ) == pack.serial:
            v.visit["stored_slot"] = slot

    def _plan_fetch(self, slot: int) -> list[Phase] | str:
        pack = self.rack[slot]
        held = self.stacker_pack
        if pack is None and held is not None and self._stacker_resume == ("fetch", slot):
            # resume a FETCH stopped after the stacker took the pack out of the slot
            if self.shuttle_pack is not None or not self.shuttle_home:
                return "shuttle not empty at home"
            return [self._stacker_to(1.0, 0), event(lambda: self._stacker_to_shuttle(slot))]
        if pack is None:
            return f"slot {slot} empty"
        # Whether the pack may be used (not isolated, trusted, not locked out) is the
        # controller's judgement, not a precondition here: a PLC cannot know (contract).
        if self.shuttle_pack is not None or not self.shuttle_home:
            return "shuttle not empty at home"
        if self.stacker_pack is not None:
            return "stacker not empty"
        return [self._stacker_to(0.45, slot), event(lambda: self._slot_to_stacker(slot)),
                self._stacker_to(0.55, 0), event(lambda: self._stacker_to_shuttle(slot))]

    def _slot_to_stacker(self, slot: int) -> None:
        self.stacker_pack, self.rack[slot] = self.rack[slot], None
        self._stacker_resume = ("fetch", slot)

    def _stacker_to_shuttle(self, slot: int) -> None:
        self.shuttle_pack, self.stacker_pack = self.stacker_pack, None
        if self.vehicle is not None:
            self.vehicle.visit["fetched_slot"] = slot

    def _plan_install(self) -> list[Phase] | str:
        v = self.vehicle
        if v is None or not self._lift_at(self.config.station.swap_height_mm):
            return "vehicle not lifted to swap height"
        if v.pack is not None:
            return "vehicle bay not empty"
        if self.shuttle_pack is None:
            return "no pack on the shuttle"
        # from home, or from wherever a stopped INSTALL left the shuttle on its rail
        return [self._shuttle_to(0.6, self.config.station.shuttle_car_mm), wait(0.4),
                event(self._pack_shuttle_to_bay)]

    def _pack_shuttle_to_bay(self) -> None:
        v = self.vehicle
        if v is not None and self.shuttle_pack is not None:
            v.pack, self.shuttle_pack = self.shuttle_pack, None

    def _plan_lock(self) -> list[Phase] | str:
        v = self.vehicle
        if v is None or v.pack is None:
            return "no pack in the vehicle bay"
        if self.shuttle_pack is not None:
            return "shuttle not empty"
        # the guns are on the shuttle: it docks first when a stop left it elsewhere
        dock = [] if self.shuttle_docked else [
            self._shuttle_to(0.2, self.config.station.shuttle_car_mm)]
        # every bolt gets its gun run, a tight one too (the gun stops at the final torque):
        # after LOCK each bolt's result is this LOCK's (the contract), also after a partial one
        return [*dock,
                one_by_one(0.7, lambda: list(range(self.bolts.count)), self._tighten),
                self._shuttle_to(0.3, 0.0)]

    def _plan_home(self) -> list[Phase] | str:
        v = self.vehicle
        if v is not None and v.pack is not None and self.bolts.n_tight < self.bolts.count \
                and self.shuttle_mm > AT_MM:
            # a pack with loose bolts may rest on the shuttle's lifting frame
            return "shuttle under a pack whose bolts are not all tight (LOCK it first)"
        return [together(1.0, self._shuttle_to(1.0, 0.0), self._stacker_to(1.0, 0))]

    def _plan_lower(self) -> list[Phase] | str:
        if self.bolts.n_tight != self.bolts.count:
            return "bolts not all tight"
        if not self.shuttle_home:
            return "shuttle not at home"
        return [ramp(1.0, lambda: self.lift_mm, self._set_lift, 0.0)]

    def _plan_release(self) -> list[Phase] | str:
        if self.vehicle is None:
            return "no vehicle"
        if not self._lift_at(0):
            return "lift not down"
        return [wait(1.0)]  # the car drives out

    def _completed(self, rec: CommandRecord, t: float) -> None:
        v = self.vehicle
        if rec.name in ("STORE", "FETCH"):
            self._stacker_resume = None
        if rec.name == "LOCK" and v is not None:
            # the car wakes its electronics; the new pack's BMS comes up after `check`
            v.bay_awake_from = t + self.config.timing.check
        elif rec.name == "RELEASE" and v is not None:
            self._depart(v, t)

    # ------------------------------------------------------ technician, by hand
    def manual_home(self) -> dict[str, Any]:
        """What a technician does with the hand pendant, outside the controller, to bring
        the machine home after an abort: a pack on the stacker goes back into its slot (or
        the first free one); a pack on the shuttle into the car's empty bay, else into the
        slot it was fetched from (or the first free one); the bay's pack is bolted and wakes;
        the shuttle and the stacker go home and the car is lowered. Every pack stays
        accounted for. Refused (ValueError) while the PLC runs a command, or when a pack has
        no free slot to go to. Returns what was done, in words."""
        if self._running is not None:
            raise ValueError(f"the PLC is running {self._running.name}: stop it first")
        done: list[str] = []
        v = self.vehicle
        resume_slot = self._stacker_resume[1] if self._stacker_resume else None

        def free_slot(prefer: int | None) -> int:
            if prefer in self.rack and self.rack[prefer] is None:
                return prefer
            for slot, p in self.rack.items():
                if p is None:
                    return slot
            raise ValueError("no free rack slot for the pack")

        if self.stacker_pack is not None:
            pack, slot = self.stacker_pack, free_slot(resume_slot)
            self.rack[slot], self.stacker_pack = pack, None
            done.append(f"pack {pack.serial} from the stacker into slot {slot}")
        if self.shuttle_pack is not None:
            pack = self.shuttle_pack
            if v is not None and v.pack is None:
                v.pack, self.shuttle_pack = pack, None
                done.append(f"pack {pack.serial} from the shuttle into the car's bay")
            else:
                fetched = v.visit.get("fetched_slot") if v is not None else None
                slot = free_slot(fetched if isinstance(fetched, int) else resume_slot)
                self.rack[slot], self.shuttle_pack = pack, None
                done.append(f"pack {pack.serial} from the shuttle into slot {slot}")
        self._stacker_resume = None
        stored = v.visit.get("stored_slot") if v is not None else None
        if v is not None and v.pack is None and isinstance(stored, int):
            own = self.rack.get(stored)  # the car's own pack, stored before the abort
            if own is not None and own.serial == v.visit.get("pack_out", {}).get("serial"):
                v.pack, self.rack[stored] = own, None
                v.visit.pop("stored_slot", None)
                done.append(f"pack {own.serial} from slot {stored} back into the car's bay")
        if v is not None and v.pack is not None:
            if self.bolts.n_tight != self.bolts.count:
                self.bolts.tight = [True] * self.bolts.count
                done.append("bolts tightened")
            if v.bay_awake_from is None:
                v.bay_awake_from = self.now  # the car's electronics see their pack again
        if not self.shuttle_home:
            self.shuttle_mm = 0.0
            done.append("shuttle home")
        if self.stacker_pos != 0:
            self.stacker_pos = 0.0
            done.append("stacker home")
        if not self._lift_at(0):
            self.lift_mm = 0.0
            done.append("car lowered" if v is not None else "lift lowered")
        self._emit("manual", "technician homing: " + (", ".join(done) or "already home"),
                   done=done)
        return {"done": done}

    # -------------------------------------------------------------- vehicles
    def _vehicles(self, now: float) -> None:
        v = self.vehicle
        if v is None:
            arriving = self.vehicles.due(now, self._rack_families())
            if arriving is None:
                return
            self.vehicle = v = arriving
            self.bolts.tight = [True] * self.bolts.count  # the new car's pack is bolted in
            self._emit("arrival", v.describe(), t=v.arrived_at, token=v.token)
        if not v.ready and now >= v.arrived_at + self.config.timing.identify:
            v.ready = True
            self._emit("ready", f"vehicle {v.token} ready (HV off)",
                       t=v.arrived_at + self.config.timing.identify, token=v.token)

    def _depart(self, v: Vehicle, t: float) -> None:
        visit = {
            "token": v.token,
            "family": v.family,
            "arrived_at": v.arrived_at,
            "pack_out": v.visit.get("pack_out"),
            "pack_in": v.pack.summary() if v.pack is not None else None,
            "stored_slot": v.visit.get("stored_slot"),
            "fetched_slot": v.visit.get("fetched_slot"),
            "left_at": t,
        }
        self.history.append(visit)
        self.vehicle = None
        self.vehicles.departed(t, visit, self.command_log)
        self._emit("departure", _describe_visit(visit), t=t, visit=visit)

    def _rack_families(self) -> list[int]:
        return sorted({p.family for p in self.rack.values() if p is not None})

    def _rack_serials(self) -> set[int]:
        return {p.serial for p in self.rack.values() if p is not None}

    # --------------------------------------------------------------- packs
    def _charge(self, dt: float, real: float) -> None:
        if dt <= 0:
            return
        for pack, in_rack in self._all_packs():
            left = dt
            while left > 0:
                step = min(left, CHARGE_STEP_S)
                pack.advance(step, real, in_rack)
                left -= step

    def _all_packs(self) -> list[tuple[SimPack, bool]]:
        out = [(p, True) for p in self.rack.values() if p is not None]
        for p in (self.shuttle_pack, self.stacker_pack,
                  self.vehicle.pack if self.vehicle else None):
            if p is not None:
                out.append((p, False))
        return out

    def can_packs(self) -> dict[int, SimPack]:
        """Packs whose BMS is on the CAN bus now, by source address."""
        out = {rack_sa(slot): p for slot, p in self.rack.items() if p is not None}
        v = self.vehicle
        if v is not None and v.pack is not None and v.bay_awake_from is not None \
                and self.now >= v.bay_awake_from:
            out[VEHICLE_PACK_SA] = v.pack
        return out

    # ---------------------------------------------------------------- views
    @property
    def offset_x_mm(self) -> float:
        """The car's true x offset: its guided position plus any drift (vehicle_moved)."""
        v = self.vehicle
        return v.offset_x_mm + self.faults.vehicle_drift_x() if v is not None else 0.0

    @property
    def stacker_slot(self) -> int:
        return round(self.stacker_pos)

    def inputs(self) -> dict[str, Any]:
        """Input signals by register-map name (engineering values), except plc_heartbeat."""
        v = self.vehicle
        n_slots = self.config.station.slots
        values: dict[str, Any] = {
            "cmd_ack_seq": self.cmd_ack_seq,
            "cmd_status": self.cmd_status,
            "cmd_error_code": self.cmd_error_code,
            "estop_ok": self.estop_ok,
            "safety_plc_ok": self.safety_plc_ok,
            "light_curtain_clear": self.light_curtain_clear,
            "doors_closed": self.doors_closed,
            "smoke_clear": self.smoke_clear,
            "vehicle_present": v is not None,
            "vehicle_ready": v is not None and v.ready,
            "vehicle_token": v.token if v is not None else 0,
            "position_offset_x": self.offset_x_mm,
            "position_offset_y": v.offset_y_mm if v is not None else 0.0,
            "lift_height": round(self.lift_mm),
            "shuttle_position": round(self.shuttle_mm),
            "shuttle_pack_present": self.shuttle_pack is not None,
            "vehicle_pack_present": v is not None and v.pack is not None,
            "stacker_slot": self.stacker_slot,
            "stacker_pack_present": self.stacker_pack is not None,
            "bolts_tight": self.bolts.n_tight,
            "bolt_count": self.bolts.count,
            "rack_slot_count": n_slots,
            "bolt_torque": list(self.bolts.torque_nm),
            "bolt_angle": list(self.bolts.angle_deg),
            "rack_slot_occupied": [self.rack.get(i) is not None for i in range(1, n_slots + 1)],
            **self.setpoints(),
        }
        self.faults.override_inputs(values)  # sensor faults corrupt the readings only
        return values

    def setpoints(self) -> dict[str, Any]:
        """The values this PLC's program works to, published as the contract's set-points."""
        st = self.config.station

        def window(w: tuple[float, float]) -> list[float]:
            return [w[0] - w[1], w[0] + w[1]]

        return {
            "setpoint_swap_height": st.swap_height_mm,
            "setpoint_height_tolerance": AT_MM,
            "setpoint_position_tolerance": POSITION_DONE_MM,
            "setpoint_shuttle_car_position": st.shuttle_car_mm,
            "setpoint_unlock_torque": window(UNLOCK_TORQUE_NM),
            "setpoint_unlock_angle": window(UNLOCK_ANGLE_DEG),
            "setpoint_lock_torque": window(LOCK_TORQUE_NM),
            "setpoint_lock_angle": window(LOCK_ANGLE_DEG),
        }

    def truth(self) -> dict[str, Any]:
        """Ground truth for tests and benchmarks (serials by place, visits so far)."""
        v = self.vehicle
        return {
            "time": self.now,
            "rack": {s: (p.serial if p else None) for s, p in self.rack.items()},
            "vehicle_present": v is not None,
            "vehicle_token": v.token if v is not None else 0,
            "vehicle_family": v.family if v is not None else None,
            "vehicle_bay": v.pack.serial if v is not None and v.pack is not None else None,
            "shuttle": self.shuttle_pack.serial if self.shuttle_pack else None,
            "stacker": self.stacker_pack.serial if self.stacker_pack else None,
            "lift_mm": self.lift_mm,
            "shuttle_mm": self.shuttle_mm,
            "stacker_slot": self.stacker_slot,
            "offset_x_mm": self.offset_x_mm,
            "offset_y_mm": v.offset_y_mm if v is not None else 0.0,
            "bolts_tight": self.bolts.n_tight,
            "bolts": list(self.bolts.tight),
            "safety": {"estop_ok": self.estop_ok, "safety_plc_ok": self.safety_plc_ok,
                       "light_curtain_clear": self.light_curtain_clear,
                       "doors_closed": self.doors_closed, "smoke_clear": self.smoke_clear},
            "history": [dict(h) for h in self.history],
        }

    def _emit(self, kind: str, text: str, t: float | None = None, **data: Any) -> None:
        if self.on_event is not None:
            self.on_event(SimEvent(self.now if t is None else t, kind, text, data))


def _describe_visit(visit: dict[str, Any]) -> str:
    out, pin = visit["pack_out"], visit["pack_in"]
    parts = [f"vehicle {visit['token']} left"]
    if out:
        parts.append(f"out {out['serial']} ({out['chemistry']}, {out['soc']} %)"
                     f" -> slot {visit['stored_slot']}")
    if pin:
        parts.append(f"in {pin['serial']} ({pin['chemistry']}, {pin['soc']} %)"
                     f" from slot {visit['fetched_slot']}")
    return ", ".join(parts)


__all__ = ["COMMANDS", "Bolts", "CommandRecord", "SimEvent", "StationModel"]
