"""The recovery plan: from where a stop left the machine back home, every pack accounted for.

Pure logic, no I/O. `plan_recovery` takes the PLC's read-back, what the station knows of
the packs (the pack ledger: the serial bound at each location, station/pack_trust.py) and
what the journal knows of the interrupted swap (its plan and the step it ended in), and
returns the ordered list of PLC commands that brings the machine home (station/home.py's
definition): each with its parameter, why (a technician's words), what it moves (pack
serial, from -> to) and the read-back that shows it done.

The plan is computed on an abstract copy of the machine (`Machine`), applying one rule at a
time, first match:

1. a pack on the stacker: STORE it into the slot it came from or was going to, else the
   first free slot not locked out;
2. a pack on the shuttle: INSTALL it if a car is lifted at swap height with an empty bay
   and the journal says the pack is that car's (its own pack or the charged pack of its
   interrupted swap, the platform's vehicle token matching the swap's); else HOME (when
   the shuttle is away) then STORE into its slot of origin or a free one;
3. a car lifted with an empty bay: FETCH its own pack back (the journal says where it was
   stored, a slot not locked out; HOME first if the shuttle is away), then INSTALL it;
4. a pack in the bay with bolts not all tight: LOCK; so too a pack the interrupted swap
   was installing or locking (its car wakes to it only once a LOCK has ended);
5. the shuttle or the stacker away: HOME;
6. the lift up: LOWER.

Before any rule, the read-back must add up (`implausible`): a pack in the bay with no
vehicle, a pack in the bay with bolt_count 0 or more bolts tight than it has, a position
below home or not a number, a slot occupied beyond rack_slot_count... block the plan,
naming what does not add up. Only slots 1..rack_slot_count exist for the plan.

Nothing left: home. When no rule can bring it home (no free slot, the car's pack nowhere
known or in a locked-out slot, a lift stopped between heights with an empty bay), the plan
says exactly what is off and that the hand pendant is needed: it never guesses. The car
stays on the platform (no RELEASE): back in production it is identified again and swapped
normally.

`result_shown` is the read-back that shows a command done (for a plan's step and for a
single command a technician runs); `moves_of` what a command moves, on the same model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from station.config import SequenceSection
from station.home import away_from_home
from station.plan import SwapPlan

# The PLC contract's commands (drivers/plc/contract.toml; a unit test keeps them equal),
# and those that take a rack slot as parameter.
COMMANDS: tuple[str, ...] = ("NONE", "POSITION", "LIFT", "UNLOCK", "REMOVE", "STORE", "FETCH",
                             "INSTALL", "LOCK", "LOWER", "RELEASE", "HOME", "NOOP")
SLOT_COMMANDS = frozenset({"STORE", "FETCH"})

BAY = "vehicle bay"
SHUTTLE = "shuttle"
STACKER = "stacker"
HAND_PENDANT = "bring it home with the hand pendant"
DOCKED_MM = 1000.0  # the abstract shuttle's place under the car (away from home)


def slot_name(n: int) -> str:
    return f"slot {n}"


@dataclass(frozen=True)
class Pack:
    """A pack somewhere on the machine; serial None: present, identity not known."""

    serial: int | None

    def __str__(self) -> str:
        return f"pack {self.serial}" if self.serial is not None else "a pack of unknown identity"


@dataclass(frozen=True)
class Interrupted:
    """The last swap that ended before its end: its plan and the step it was in."""

    plan: SwapPlan
    step: str | None
    outcome: str = "aborted"
    # a LOCK has run since (recovery): the car's electronics have seen their pack again
    relocked: bool = False

    def as_dict(self) -> dict[str, Any]:
        p = self.plan
        return {"swap_id": p.swap_id, "step": self.step, "outcome": self.outcome,
                "vehicle_token": p.vehicle_token, "store_slot": p.store_slot,
                "fetch_slot": p.fetch_slot, "pack_out": p.pack_out.serial,
                "pack_in": p.pack_in.serial}


@dataclass(frozen=True)
class Move:
    serial: int | None
    source: str
    dest: str

    def as_dict(self) -> dict[str, Any]:
        return {"serial": self.serial, "from": self.source, "to": self.dest}

    def __str__(self) -> str:
        who = f"pack {self.serial}" if self.serial is not None else "pack (unknown)"
        return f"{who}: {self.source} -> {self.dest}"


@dataclass(frozen=True)
class RecoveryStep:
    command: str
    param: int
    why: str
    moves: tuple[Move, ...]
    done_when: str  # the read-back that shows it done, in words

    def as_dict(self) -> dict[str, Any]:
        return {"command": self.command, "param": self.param, "why": self.why,
                "moves": [m.as_dict() for m in self.moves], "done_when": self.done_when}


@dataclass(frozen=True)
class RecoveryPlan:
    steps: tuple[RecoveryStep, ...]
    off: str | None  # what is away from home now (station/home.py), None: home
    blocked: str | None = None  # why no plan brings it home (the hand pendant is needed)

    @property
    def home(self) -> bool:
        return not self.steps and self.blocked is None

    def as_dict(self) -> dict[str, Any]:
        return {"home": self.home, "off": self.off, "blocked": self.blocked,
                "steps": [s.as_dict() for s in self.steps]}


@dataclass
class Machine:
    """The abstract machine the plan is worked out on."""

    car: bool
    token: int
    lift_mm: float
    bay: Pack | None
    bolts_tight: int
    bolt_count: int
    shuttle_mm: float
    shuttle: Pack | None
    stacker_slot: int
    stacker: Pack | None
    slots: dict[int, Pack | None]
    locked_out: frozenset[int] = frozenset()
    relocked: bool = False  # a LOCK has ended since the interrupted swap

    def copy(self) -> Machine:
        return dataclasses.replace(self, slots=dict(self.slots))


def _num(plc: Mapping[str, Any], name: str) -> float:
    try:
        return float(plc.get(name, 0) or 0)
    except (TypeError, ValueError):
        return 0.0


def _slot_count(plc: Mapping[str, Any]) -> int:
    """The rack's slots (1..N): rack_slot_count, bounded by the occupancy array (the
    register map's array is longer than most racks); without a count, the array's length."""
    occ = plc.get("rack_slot_occupied") or []
    if "rack_slot_count" not in plc:
        return len(occ)
    return max(0, min(int(_num(plc, "rack_slot_count")), len(occ)))


def _bad_number(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    try:
        return not math.isfinite(float(v))
    except (TypeError, ValueError):
        return True


def implausible(plc: Mapping[str, Any], seq: SequenceSection) -> str | None:
    """What in the read-back contradicts itself or is physically absurd, in words; None:
    it adds up. No plan is made from a read-back that does not add up: a sensor or the
    PLC's image is wrong, and a command planned on it may move a pack with loose bolts."""
    bad: list[str] = []
    for name in ("lift_height", "shuttle_position", "bolts_tight", "bolt_count",
                 "stacker_slot", "vehicle_token", "rack_slot_count"):
        v = plc.get(name)
        if v is not None and _bad_number(v):
            bad.append(f"{name} is not a number ({v!r})")
    if bad:
        return "; ".join(bad)
    for name in ("bolts_tight", "bolt_count", "stacker_slot", "vehicle_token",
                 "rack_slot_count"):
        v = _num(plc, name)
        if v < 0 or v != int(v):
            bad.append(f"{name} {v:g} is not a count")
    lift, shuttle = _num(plc, "lift_height"), _num(plc, "shuttle_position")
    if lift < -seq.height_tolerance_mm:
        bad.append(f"lift at {lift:.0f} mm, below down")
    if shuttle < -seq.shuttle_home_tolerance_mm:
        bad.append(f"shuttle at {shuttle:.0f} mm, behind home")
    bay_pack = bool(plc.get("vehicle_pack_present"))
    if bay_pack and not plc.get("vehicle_present"):
        bad.append("a pack in the vehicle bay but no vehicle on the platform")
    tight, count = _num(plc, "bolts_tight"), _num(plc, "bolt_count")
    if bay_pack and count < 1:
        bad.append(f"a pack in the vehicle bay held by bolt_count {count:g} bolts")
    if bay_pack and tight > count:
        bad.append(f"{tight:g} bolts tight of bolt_count {count:g}")
    occ = plc.get("rack_slot_occupied") or []
    n = _slot_count(plc)
    if "rack_slot_count" in plc and _num(plc, "rack_slot_count") > len(occ):
        bad.append(f"rack_slot_count {_num(plc, 'rack_slot_count'):g} but only {len(occ)} "
                   "slot occupancy bits")
    beyond = [i for i, full in enumerate(occ, start=1) if full and i > n]
    if beyond:
        bad.append(f"slot {', '.join(map(str, beyond))} reads occupied but the rack has {n} "
                   "slots")
    if _num(plc, "stacker_slot") > n:
        bad.append(f"stacker at slot {_num(plc, 'stacker_slot'):g} of a {n}-slot rack")
    return "; ".join(bad) if bad else None


def machine_from(plc: Mapping[str, Any], known: Mapping[str, int | None],
                 interrupted: Interrupted | None,
                 locked_out: frozenset[int] | set[int] = frozenset()) -> Machine:
    """The abstract machine from the read-back. `known`: the serial bound at the bay and
    at each rack slot ("vehicle bay", "slot N"); a pack on the shuttle or the stacker is
    one of the interrupted swap's two packs, the one not seen elsewhere (`carried`)."""
    occ = plc.get("rack_slot_occupied") or []
    slots: dict[int, Pack | None] = {}
    for i, full in enumerate(occ[:_slot_count(plc)], start=1):
        slots[i] = Pack(known.get(slot_name(i))) if full else None
    car = bool(plc.get("vehicle_present"))
    bay = Pack(known.get(BAY)) if car and plc.get("vehicle_pack_present") else None
    m = Machine(car=car, token=int(_num(plc, "vehicle_token")), lift_mm=_num(plc, "lift_height"),
                bay=bay, bolts_tight=int(_num(plc, "bolts_tight")),
                bolt_count=int(_num(plc, "bolt_count")),
                shuttle_mm=_num(plc, "shuttle_position"),
                shuttle=Pack(None) if plc.get("shuttle_pack_present") else None,
                stacker_slot=int(_num(plc, "stacker_slot")),
                stacker=Pack(None) if plc.get("stacker_pack_present") else None,
                slots=slots, locked_out=frozenset(locked_out),
                relocked=interrupted is not None and interrupted.relocked)
    carried = _carried(m, interrupted)
    if m.stacker is not None and carried:
        m.stacker = Pack(carried.pop(0))
    if m.shuttle is not None and carried:
        m.shuttle = Pack(carried.pop(0))
    return m


def _carried(m: Machine, interrupted: Interrupted | None) -> list[int]:
    """The interrupted swap's packs seen nowhere else, most likely on the machine first: a
    swap stopped in remove or store carries the car's pack, in fetch or install the
    charged one."""
    if interrupted is None:
        return []
    p = interrupted.plan
    seen = {x.serial for x in (m.bay, *m.slots.values()) if x is not None}
    order = [p.pack_in.serial, p.pack_out.serial] if interrupted.step in ("fetch", "install") \
        else [p.pack_out.serial, p.pack_in.serial]
    return [s for s in order if s not in seen]


def ledger(m: Machine) -> dict[str, int | None]:
    """Where every pack is: location -> serial (None: identity not known), occupied only."""
    out: dict[str, int | None] = {}
    for name, p in ((BAY, m.bay), (SHUTTLE, m.shuttle), (STACKER, m.stacker)):
        if p is not None:
            out[name] = p.serial
    for n, p in sorted(m.slots.items()):
        if p is not None:
            out[slot_name(n)] = p.serial
    return out


# ---- the read-back that shows a command done --------------------------------------------

def result_shown(command: str, param: int, plc: Mapping[str, Any],
                 seq: SequenceSection) -> bool:
    """Does the read-back show `command`'s result? (the PLC's done alone never counts)"""
    lifted = abs(_num(plc, "lift_height") - seq.swap_height_mm) <= seq.height_tolerance_mm
    shuttle_home = abs(_num(plc, "shuttle_position")) <= seq.shuttle_home_tolerance_mm
    occ = plc.get("rack_slot_occupied") or []

    def slot_full(n: int) -> bool:
        return 1 <= n <= len(occ) and bool(occ[n - 1])

    shuttle_pack = bool(plc.get("shuttle_pack_present"))
    stacker_pack = bool(plc.get("stacker_pack_present"))
    bay_pack = bool(plc.get("vehicle_pack_present"))
    tol = seq.position_tolerance_mm
    checks: dict[str, bool] = {
        "POSITION": abs(_num(plc, "position_offset_x")) <= tol
        and abs(_num(plc, "position_offset_y")) <= tol,
        "LIFT": lifted,
        "UNLOCK": _num(plc, "bolts_tight") == 0 and lifted,
        "REMOVE": shuttle_pack and not bay_pack and shuttle_home,
        "STORE": slot_full(param) and not stacker_pack and not shuttle_pack,
        "FETCH": not slot_full(param) and shuttle_pack and not stacker_pack,
        "INSTALL": bay_pack and not shuttle_pack,
        "LOCK": _num(plc, "bolts_tight") == _num(plc, "bolt_count") > 0 and shuttle_home,
        "LOWER": _num(plc, "lift_height") <= seq.height_tolerance_mm,
        "RELEASE": not plc.get("vehicle_present"),
        "HOME": shuttle_home and int(_num(plc, "stacker_slot")) == 0,
    }
    return checks.get(command, True)


DONE_WHEN = {
    "POSITION": "both position offsets within the tolerance",
    "LIFT": "lift at swap height",
    "UNLOCK": "0 bolts tight, car at swap height",
    "REMOVE": "pack on the shuttle at home, vehicle bay empty",
    "STORE": "slot {p} occupied, stacker and shuttle empty",
    "FETCH": "slot {p} empty, pack on the shuttle, stacker empty",
    "INSTALL": "pack in the vehicle bay, shuttle empty",
    "LOCK": "every bolt tight, shuttle home",
    "LOWER": "lift down",
    "RELEASE": "no vehicle on the platform",
    "HOME": "shuttle home, stacker at 0",
    "NOOP": "the PLC's done",
    "NONE": "the PLC's done",
}


def done_when(command: str, param: int) -> str:
    return DONE_WHEN.get(command, "the PLC's done").format(p=param)


# ---- what a command does to the abstract machine -----------------------------------------

def apply(m: Machine, command: str, param: int, seq: SequenceSection) -> tuple[Machine, list[Move]]:
    """The machine after `command` (its moves), as the contract says; a command whose
    preconditions do not hold changes nothing."""
    m = m.copy()
    moves: list[Move] = []
    if command == "STORE" and m.slots.get(param, "absent") is None:
        src, pack = (STACKER, m.stacker) if m.stacker is not None else (SHUTTLE, m.shuttle)
        if pack is not None:
            moves.append(Move(pack.serial, src, slot_name(param)))
            m.slots[param] = pack
            if src == STACKER:
                m.stacker = None
            else:
                m.shuttle = None
            m.stacker_slot = 0
    elif command == "FETCH" and m.slots.get(param) is not None and m.shuttle is None:
        pack = m.slots[param]
        assert pack is not None
        moves.append(Move(pack.serial, slot_name(param), SHUTTLE))
        m.slots[param], m.shuttle, m.stacker_slot = None, pack, 0
    elif command == "INSTALL" and m.shuttle is not None and m.bay is None and m.car:
        moves.append(Move(m.shuttle.serial, SHUTTLE, BAY))
        m.bay, m.shuttle = m.shuttle, None
        m.shuttle_mm = DOCKED_MM  # under the car: away from home
    elif command == "REMOVE" and m.bay is not None and m.shuttle is None:
        moves.append(Move(m.bay.serial, BAY, SHUTTLE))
        m.shuttle, m.bay, m.shuttle_mm = m.bay, None, 0.0
    elif command == "LOCK" and m.bay is not None and m.shuttle is None:
        m.bolts_tight, m.shuttle_mm, m.relocked = m.bolt_count, 0.0, True
    elif command == "UNLOCK":
        m.bolts_tight = 0
    elif command == "HOME":
        m.shuttle_mm, m.stacker_slot = 0.0, 0
    elif command == "LOWER":
        m.lift_mm = 0.0
    elif command == "LIFT":
        m.lift_mm = seq.swap_height_mm
    elif command == "RELEASE":
        m.car, m.bay = False, None
    return m, moves


def moves_of(m: Machine, command: str, param: int, seq: SequenceSection) -> list[Move]:
    return apply(m, command, param, seq)[1]


# ---- the plan ------------------------------------------------------------------------------

def _free_slot(m: Machine, prefer: int | None) -> int | None:
    if prefer is not None and m.slots.get(prefer, "absent") is None \
            and prefer not in m.locked_out:
        return prefer
    for n, p in sorted(m.slots.items()):
        if p is None and n not in m.locked_out:
            return n
    return None


def _origin_slot(pack: Pack, interrupted: Interrupted | None) -> int | None:
    """The slot a pack came from or was going to in the interrupted swap."""
    if interrupted is None or pack.serial is None:
        return None
    p = interrupted.plan
    if pack.serial == p.pack_in.serial:
        return p.fetch_slot
    if pack.serial == p.pack_out.serial:
        return p.store_slot
    return None


LOWERED_MM = 0.5  # the read-back rounds to whole mm: above this the lift is not at 0


def plan_recovery(plc: Mapping[str, Any], known: Mapping[str, int | None],
                  interrupted: Interrupted | None, seq: SequenceSection,
                  locked_out: frozenset[int] | set[int] = frozenset(),
                  max_steps: int = 12) -> RecoveryPlan:
    """The ordered commands that bring the machine home from the read-back `plc`."""
    off = away_from_home(plc, seq)
    wrong = implausible(plc, seq)
    if wrong is not None:
        return RecoveryPlan((), off, blocked=f"the read-back does not add up: {wrong}: "
                            f"{HAND_PENDANT}")
    m = machine_from(plc, known, interrupted, locked_out)
    steps: list[RecoveryStep] = []
    for _ in range(max_steps):
        nxt = _next(m, interrupted, seq)
        if nxt is None:
            return RecoveryPlan(tuple(steps), off)
        if isinstance(nxt, str):
            return RecoveryPlan(tuple(steps), off, blocked=nxt)
        command, param, why = nxt
        m, moves = apply(m, command, param, seq)
        steps.append(RecoveryStep(command, param, why, tuple(moves), done_when(command, param)))
    return RecoveryPlan(tuple(steps), off,
                        blocked=f"no plan within {max_steps} steps: {HAND_PENDANT}")


def _next(m: Machine, interrupted: Interrupted | None,
          seq: SequenceSection) -> tuple[str, int, str] | str | None:
    """The next command (command, param, why), None when home, or why no plan exists."""
    tol = seq.height_tolerance_mm
    lifted = m.car and abs(m.lift_mm - seq.swap_height_mm) <= tol
    # Lowered is lift_height = 0 for the PLC (POSITION's precondition, the contract), not
    # within the controller's tolerance: a lift stopped at 3 mm is lowered, or no swap starts
    lift_up = abs(m.lift_mm) > LOWERED_MM
    shuttle_away = abs(m.shuttle_mm) > seq.shuttle_home_tolerance_mm
    if m.stacker is not None:
        slot = _free_slot(m, _origin_slot(m.stacker, interrupted))
        if slot is None:
            return (f"{m.stacker} on the stacker and no free rack slot that is not locked "
                    f"out: {HAND_PENDANT}")
        return ("STORE", slot, f"{m.stacker} is on the stacker: store it in slot {slot}"
                + (" (where it came from or was going)"
                   if slot == _origin_slot(m.stacker, interrupted) else " (a free slot)"))
    if m.shuttle is not None:
        if lifted and m.bay is None and _cars_pack(m, m.shuttle, interrupted):
            return ("INSTALL", 0, f"{m.shuttle} is on the shuttle and the lifted car's bay is "
                    "empty: put it into the car (the journal says it is this car's)")
        if shuttle_away:
            if m.bay is not None and m.bolts_tight < m.bolt_count:
                return (f"{m.shuttle} on the shuttle away from home under a car whose bolts "
                        f"are not all tight: {HAND_PENDANT}")
            return ("HOME", 0, f"{m.shuttle} is on the shuttle away from home: bring it home "
                    "to store it" + (_not_the_cars(m) if lifted and m.bay is None else ""))
        slot = _free_slot(m, _origin_slot(m.shuttle, interrupted))
        if slot is None:
            return (f"{m.shuttle} on the shuttle and no free rack slot that is not locked "
                    f"out: {HAND_PENDANT}")
        return ("STORE", slot, f"{m.shuttle} is on the shuttle at home: store it in slot "
                f"{slot}" + (" (where it came from or was going)"
                             if slot == _origin_slot(m.shuttle, interrupted)
                             else " (a free slot)")
                + (_not_the_cars(m) if lifted and m.bay is None else ""))
    if m.car and m.bay is None and lift_up:
        if not lifted:
            return (f"car at {m.lift_mm:.0f} mm with an empty bay, not at swap height: "
                    f"{HAND_PENDANT}")
        own = _own_pack_slot(m, interrupted)
        if isinstance(own, str):
            return own
        if shuttle_away:
            return ("HOME", 0, "the shuttle must be home, empty, to fetch the car's own pack")
        serial = interrupted.plan.pack_out.serial if interrupted is not None else None
        return ("FETCH", own, f"the lifted car's bay is empty: fetch its own pack {serial} "
                f"back from slot {own}, where the swap stored it")
    if m.bay is not None and m.bolts_tight < m.bolt_count:
        return ("LOCK", 0, f"{m.bolts_tight} of {m.bolt_count} bolts tight on the car's pack: "
                "tighten them all")
    if m.bay is not None and m.car and interrupted is not None and not m.relocked \
            and interrupted.step in ("install", "lock") \
            and interrupted.plan.vehicle_token == m.token:
        return ("LOCK", 0, f"the swap stopped in {interrupted.step} before its LOCK ended: "
                "check every bolt and wake the car to its pack")
    if shuttle_away or m.stacker_slot != 0:
        where = [f"shuttle at {m.shuttle_mm:.0f} mm"] if shuttle_away else []
        if m.stacker_slot != 0:
            where.append(f"stacker at slot {m.stacker_slot}")
        return ("HOME", 0, " and ".join(where) + ": bring them home")
    if lift_up:
        return ("LOWER", 0, f"{'car' if m.car else 'lift'} at {m.lift_mm:.0f} mm, every bolt "
                "tight and the shuttle home: lower it")
    return None


def _cars_pack(m: Machine, pack: Pack, interrupted: Interrupted | None) -> bool:
    """Does the journal say `pack` belongs in the car on the platform: its own pack or the
    charged pack of its interrupted swap (the platform's vehicle token the swap's)?"""
    if interrupted is None or pack.serial is None or not m.car \
            or interrupted.plan.vehicle_token != m.token:
        return False
    return pack.serial in (interrupted.plan.pack_out.serial, interrupted.plan.pack_in.serial)


def _not_the_cars(m: Machine) -> str:
    return (f"; the journal does not say it is the lifted car's (vehicle {m.token}), so it "
            "is not put into that car")


def _own_pack_slot(m: Machine, interrupted: Interrupted | None) -> int | str:
    """The slot holding the car's own pack (the interrupted swap stored it), or why not
    known."""
    if interrupted is None or interrupted.plan.vehicle_token != m.token:
        return (f"the lifted car's bay is empty and the journal knows no interrupted swap of "
                f"this car (vehicle {m.token}), so where its pack is is not known: "
                f"{HAND_PENDANT}")
    p = interrupted.plan
    serial = p.pack_out.serial
    found = next((n for n, pack in sorted(m.slots.items())
                  if pack is not None and pack.serial == serial), None)
    there = m.slots.get(p.store_slot)
    if found is None and there is not None and there.serial is None:
        found = p.store_slot  # the journal stored it there; nothing else heard in its place
    if found is not None and found in m.locked_out:
        return (f"the lifted car's bay is empty and its own pack {serial} is in slot {found}, "
                f"which is locked out: a pack in a locked-out slot is never fetched "
                f"(the lockout must be cleared first, or {HAND_PENDANT})")
    if found is not None:
        return found
    return (f"the lifted car's bay is empty and its own pack {serial} is not where the "
            f"journal stored it (slot {p.store_slot}: "
            f"{'empty' if there is None else there}): {HAND_PENDANT}")


__all__ = ["COMMANDS", "SLOT_COMMANDS", "Interrupted", "Machine", "Move", "Pack",
           "RecoveryPlan", "RecoveryStep", "apply", "done_when", "implausible", "ledger",
           "machine_from", "moves_of", "plan_recovery", "result_shown"]
