"""Fault injection: named faults that can be set and cleared at any moment.

The names are stable: the controller's interlock table (`station/interlocks.py`,
`docs/interlocks.md`) and bench scripts refer to them. Each fault has a description, an
optional value (with its meaning and unit) and an optional target.

Two kinds of effect, kept apart on purpose:

- **physical** faults change the ground truth: the safety inputs (`estop`, `door_open`, ...),
  the car's true position (`vehicle_moved`), a bolt's gun run (`bolt_torque_fail`), a
  pack's temperature, BMS flags and insulation, and the wires (`plc_silent`, `can_silent`,
  `network_down`);
- **sensor** faults corrupt only the values the PLC reports on the wire
  (`lift_overtravel`, `shuttle_misplaced`, `bolt_not_reported`, `pack_present_ghost`,
  `pack_missing_sensor`, `safety_report_delay`, `setpoint_mismatch`). The sim PLC's own
  interlocks and the observer keep judging the truth, as the safety-rated hardware of a
  real station would.

The OPC UA faults (`opcua_bad_status`, `opcua_wrong_type`, `opcua_subscription_stall`,
`opcua_write_refused`) corrupt only what the OPC UA server says; they exist on a
simulator whose PLC speaks OPC UA (`SimConfig.plc_protocol`): `list()` shows them there
only and `set()` refuses them on a Modbus PLC. An OPC UA fault that names an input takes
the contract's name of an input signal as its target.

Pack faults take a place as their target ("vehicle", "shuttle", "stacker" or a slot
number). The place is resolved to a pack when the fault is applied (at once if a pack is
there, else as soon as one arrives: "vehicle" with an empty bay means the pack that will
be installed) and the fault then follows that pack wherever it goes until cleared.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from drivers.bms.protocol import VEHICLE_PACK_SA, rack_sa
from sim_hw.packs import FAULTS as PACK_FAULT_FLAGS
from sim_hw.packs import SimPack

if TYPE_CHECKING:
    from sim_hw.mechanics import StationModel

TargetKind = Literal["bolt", "place", "can", "input", "bus"]
Target = str | int | None
Value = float | str | None
FaultInfo = dict[str, Any]

PLACES = ("vehicle", "shuttle", "stacker")
BOLT_WINDOWS = {"unlock": (90.0, 5.0), "lock": (120.0, 3.0)}  # mechanics' (nominal, +-) N*m


class FaultError(ValueError):
    """A fault request that cannot be applied: unknown name, bad value or target."""


@dataclass(frozen=True)
class ValueSpec:
    meaning: str
    unit: str | None
    default: float | str
    lo: float = -math.inf
    hi: float = math.inf
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class FaultSpec:
    name: str
    description: str
    value: ValueSpec | None = None  # None: the fault takes no value
    target: TargetKind | None = None  # None: the fault takes no target
    default_target: Target = None
    target_meaning: str = ""
    physical: bool = True  # False: only the readings on the wire are corrupted
    protocol: str | None = None  # "opcua": only on an OPC UA PLC; None: every protocol


_PACK_TARGET = 'the pack at "vehicle" (bay, or the pack to be installed), "shuttle", ' \
    '"stacker" or a rack slot number, resolved when applied; the fault follows that pack'
_PLACE_TARGET = '"shuttle", "vehicle", "stacker" or a rack slot number'
_INPUT_TARGET = "an input signal of the PLC contract (e.g. lift_height)"
_BUS_TARGET = "a bus name of [sim.can] (none: the first bus)"

SPECS: tuple[FaultSpec, ...] = (
    FaultSpec("estop", "e-stop chain open: estop_ok reads 0; the sim PLC stops all motion"),
    FaultSpec("safety_plc_fault",
              "safety PLC faulted: safety_plc_ok reads 0; the sim PLC stops all motion"),
    FaultSpec("light_curtain",
              "light curtain / area scanner breached: light_curtain_clear reads 0; motion stops"),
    FaultSpec("door_open", "station door open: doors_closed reads 0; motion stops"),
    FaultSpec("smoke", "smoke detector tripped: smoke_clear reads 0; motion stops"),
    FaultSpec("vehicle_moved",
              "the car drifts on x while it stands on the platform: its true offset (and "
              "position_offset_x) is off by VALUE mm; the sim PLC then refuses LIFT",
              ValueSpec("drift of the car along x", "mm", 30.0, -1000.0, 1000.0)),
    FaultSpec("lift_overtravel",
              "sensor: lift_height reads VALUE mm above the true height (at rest: above the "
              "commanded height); the lift itself stops where commanded",
              ValueSpec("reading above the true lift height", "mm", 40.0, -5000.0, 5000.0),
              physical=False),
    FaultSpec("shuttle_misplaced",
              "sensor: shuttle_position reads VALUE mm off the true position",
              ValueSpec("reading off the true shuttle position", "mm", 200.0, -5000.0, 5000.0),
              physical=False),
    FaultSpec("bolt_torque_fail",
              "bolt TARGET's unlock/lock runs while active end at VALUE N*m; a run outside "
              "its window (unlock 90+-5, lock 120+-3) leaves the bolt as it was (a failed "
              "unlock stays tight, a failed lock stays loose); the command still ends done",
              ValueSpec("final torque of the run", "N*m", 60.0, 0.0, 6553.5),
              "bolt", 1, "bolt index 1..bolt_count"),
    FaultSpec("bolt_not_reported",
              "sensor: bolt TARGET's torque and angle read 0 and it never counts in "
              "bolts_tight (the bolt itself works)",
              None, "bolt", 1, "bolt index 1..bolt_count", physical=False),
    FaultSpec("pack_present_ghost",
              "sensor: the pack presence sensor at TARGET reads 1 though no pack is there",
              None, "place", "shuttle", _PLACE_TARGET, physical=False),
    FaultSpec("pack_missing_sensor",
              "sensor: the pack presence sensor at TARGET reads 0 though a pack is there",
              None, "place", "shuttle", _PLACE_TARGET, physical=False),
    FaultSpec("pack_over_temp",
              "the TARGET pack's hottest cell jumps to VALUE degC and stays there (CAN "
              "MaxCellTemp); after clearing it cools back within ~30 simulated seconds",
              ValueSpec("max cell temperature", "degC", 75.0, -40.0, 210.0),
              "place", "vehicle", _PACK_TARGET),
    FaultSpec("pack_temp_rise",
              "the TARGET pack's hottest cell climbs VALUE degC per simulated minute; after "
              "clearing it cools back within ~30 simulated seconds",
              ValueSpec("temperature rise", "degC/min", 20.0, 0.1, 6000.0),
              "place", "vehicle", _PACK_TARGET),
    FaultSpec("pack_fault",
              "the TARGET pack's BMS raises the fault flag VALUE (PackCells)",
              ValueSpec("BMS fault flag", None, "thermal_alarm",
                        choices=tuple(sorted(PACK_FAULT_FLAGS))),
              "place", "vehicle", _PACK_TARGET),
    FaultSpec("pack_insulation_low",
              "the TARGET pack's insulation resistance reads VALUE kOhm (PackCells)",
              ValueSpec("insulation resistance", "kOhm", 50.0, 0.0, 64255.0),
              "place", "vehicle", _PACK_TARGET),
    FaultSpec("plc_silent",
              "the PLC answers nothing (a hung PLC, a cut cable): Modbus requests are "
              "dropped unanswered, OPC UA traffic is black-holed both ways with the "
              "connections left open; with no heartbeat getting through, the sim PLC "
              "stops motion on its timeout"),
    FaultSpec("can_silent",
              "packs at TARGET stop sending CAN frames (they still hear PackControl)",
              None, "can", None, 'a rack slot number, "vehicle" (0xF4), or none = all packs'),
    FaultSpec("can_wrong_bus",
              "the pack at TARGET is wired to another CAN bus than its location's (the next "
              "bus of [sim.can] buses): it sends and hears there; no effect with one bus",
              None, "can", "vehicle", 'a rack slot number or "vehicle" (0xF4)'),
    FaultSpec("can_error_passive",
              "the CAN controller of bus TARGET reports error passive: an error frame "
              "(CRTL, RX/TX passive) every 100 ms; error active again when cleared",
              None, "bus", None, _BUS_TARGET),
    FaultSpec("can_bus_off",
              "bus TARGET goes bus-off: an error frame (BUSOFF) every 100 ms and no frame "
              "gets through it either way; restarted (CAN_ERR_RESTARTED) when cleared",
              None, "bus", None, _BUS_TARGET),
    FaultSpec("can_babble",
              "a babbling node on bus TARGET sends VALUE frames/s of garbage (identifiers "
              "no DBC message has, wrong lengths, 11-bit frames) from address 0x27",
              ValueSpec("frames per second", "frames/s", 4000.0, 1.0, 50000.0),
              "bus", None, _BUS_TARGET),
    FaultSpec("network_down",
              "PLC silent and every pack silent and deaf on CAN (no PackControl reaches them)"),
    FaultSpec("safety_report_delay",
              "sensor: every safety input (estop_ok, safety_plc_ok, light_curtain_clear, "
              "doors_closed, smoke_clear) is reported VALUE ms after it changes; the sim "
              "PLC stops motion at once, so error stopped comes before its cause (contract "
              "timing stop_cause_grace_ms)",
              ValueSpec("report delay", "ms", 60.0, 0.0, 5000.0), physical=False),
    FaultSpec("setpoint_mismatch",
              "sensor: the PLC publishes setpoint_swap_height VALUE mm off the height it "
              "lifts to (a PLC program set up for another station); swapd's interlock "
              "plc_setpoint_mismatch refuses to run",
              ValueSpec("published swap height minus the real one", "mm", 20.0, -1000.0,
                        1000.0), physical=False),
    FaultSpec("opcua_bad_status",
              "OPC UA only: input TARGET's node is published with status BadSensorFailure "
              "(its value still follows the truth)",
              None, "input", "lift_height", _INPUT_TARGET, physical=False, protocol="opcua"),
    FaultSpec("opcua_wrong_type",
              "OPC UA only: input TARGET's node holds a String (\"garbage\") instead of its "
              "data type",
              None, "input", "lift_height", _INPUT_TARGET, physical=False, protocol="opcua"),
    FaultSpec("opcua_subscription_stall",
              "OPC UA only: every subscription stops publishing (no data, no keep-alive) "
              "while sessions and connections stay up and reads, writes and calls are "
              "answered; publishing resumes when cleared",
              physical=False, protocol="opcua"),
    FaultSpec("opcua_write_refused",
              "OPC UA only: the output method call and writes to output nodes are answered "
              "BadUserAccessDenied and change nothing",
              physical=False, protocol="opcua"),
)
SPEC_BY_NAME: dict[str, FaultSpec] = {s.name: s for s in SPECS}
# The faults of every simulator, whatever its PLC's protocol (the stable list)
FAULT_NAMES: tuple[str, ...] = tuple(s.name for s in SPECS if s.protocol is None)
# Those of a simulator whose PLC speaks OPC UA, on top
OPCUA_FAULT_NAMES: tuple[str, ...] = tuple(s.name for s in SPECS if s.protocol == "opcua")
SAFETY_FAULTS = {"estop": "estop_ok", "safety_plc_fault": "safety_plc_ok",
                 "light_curtain": "light_curtain_clear", "door_open": "doors_closed",
                 "smoke": "smoke_clear"}
PACK_FAULTS = frozenset({"pack_over_temp", "pack_temp_rise", "pack_fault",
                         "pack_insulation_low"})
PRESENCE_INPUT = {"vehicle": "vehicle_pack_present", "shuttle": "shuttle_pack_present",
                  "stacker": "stacker_pack_present"}


@dataclass
class ActiveFault:
    spec: FaultSpec
    value: Value
    target: Target
    set_at: float  # sim seconds
    pack: SimPack | None = None  # the pack a pack fault is bound to (None: not yet)
    undo: dict[str, Any] = field(default_factory=dict)


class FaultRegistry:
    """The simulator's faults: `set`, `clear`, `clear_all`, `list`, plus hooks for the model."""

    def __init__(self, model: StationModel) -> None:
        self.model = model
        self._active: dict[str, ActiveFault] = {}
        # Called before every change: SimStation brings the model to "now" so that motion
        # up to this instant is not judged under the new fault (and vice versa).
        self.sync: Callable[[], None] | None = None
        # Called after every change: the OPC UA server puts what the fault changes in its
        # nodes at once.
        self.changed: Callable[[], None] | None = None
        # safety_report_delay: per safety input, its changes as seen by a scan (real s, value)
        self._safety_seen: dict[str, list[tuple[float, bool]]] = {}

    # ------------------------------------------------------------ public API
    def set(self, name: str, value: Value = None, target: Target = None) -> FaultInfo:
        """Activate (or re-aim) a fault; raises FaultError naming what is wrong."""
        spec = self._spec(name)
        val = self._value(spec, value)
        tgt = self._target(spec, target)
        self._sync()
        old = self._active.pop(name, None)
        if old is not None:
            self._undo(old)
        f = ActiveFault(spec, val, tgt, self.model.now)
        self._active[name] = f
        if name == "safety_report_delay" and old is None:  # reported as they are now
            self._safety_seen = {n: [(-math.inf, bool(getattr(self.model, n)))]
                                 for n in SAFETY_FAULTS.values()}
        self._apply(f)
        self._changed()
        return self._info(spec)

    def clear(self, name: str) -> FaultInfo:
        """Deactivate a fault (clearing an inactive one is fine); normal behaviour returns."""
        spec = self._spec(name)
        self._sync()
        f = self._active.pop(name, None)
        if f is not None:
            self._undo(f)
            self._changed()
        info = self._info(spec)
        info["was_active"] = f is not None
        return info

    def clear_all(self) -> list[str]:
        """Clear every active fault; returns the names that were active."""
        self._sync()
        names = list(self._active)
        for name in names:
            self._undo(self._active.pop(name))
        if names:
            self._changed()
        return names

    def list(self) -> list[FaultInfo]:
        """Every fault of this simulator's PLC protocol, active or not, in a stable order."""
        return [self._info(s) for s in SPECS if self._offered(s)]

    def is_active(self, name: str) -> bool:
        return name in self._active

    def active(self, name: str) -> ActiveFault | None:
        return self._active.get(name)

    # ------------------------------------------------------- model hooks
    def apply(self) -> None:
        """Every model advance: bind pending pack faults, keep applying pack effects, time
        the safety inputs' changes (safety_report_delay)."""
        if "safety_report_delay" in self._active:
            self._delay_safety({n: getattr(self.model, n) for n in SAFETY_FAULTS.values()})
        for f in self._active.values():
            if f.spec.name in PACK_FAULTS:
                self._apply(f)

    def vehicle_drift_x(self) -> float:
        f = self._active.get("vehicle_moved")
        return _num(f.value) if f is not None and self.model.vehicle is not None else 0.0

    def bolt_torque(self, index: int) -> float | None:
        """The torque a failing bolt's run ends at (0-based index), or None: run normally."""
        f = self._active.get("bolt_torque_fail")
        if f is None or f.target != index + 1:
            return None
        assert isinstance(f.value, float)
        return f.value

    def plc_silent(self) -> bool:
        return "plc_silent" in self._active or "network_down" in self._active

    def can_silenced(self, sa: int) -> bool:
        """True: the pack at source address `sa` sends nothing."""
        if "network_down" in self._active:
            return True
        f = self._active.get("can_silent")
        if f is None:
            return False
        if f.target is None:
            return True
        want = VEHICLE_PACK_SA if f.target == "vehicle" else rack_sa(int(f.target))
        return sa == want

    def can_wrong_bus(self, sa: int) -> bool:
        """True: the pack at `sa` is wired to another bus (can_wrong_bus)."""
        f = self._active.get("can_wrong_bus")
        if f is None:
            return False
        return sa == (VEHICLE_PACK_SA if f.target == "vehicle" else rack_sa(int(f.target or 0)))

    def can_bus_error(self, bus: str) -> str | None:
        """The bad state bus `bus` is in: "bus_off", "passive", or None."""
        for name, state in (("can_bus_off", "bus_off"), ("can_error_passive", "passive")):
            f = self._active.get(name)
            if f is not None and f.target == bus:
                return state
        return None

    def can_babble(self, bus: str) -> float:
        """Frames per second of garbage a babbling node sends on `bus` (0: none)."""
        f = self._active.get("can_babble")
        return _num(f.value) if f is not None and f.target == bus else 0.0

    def can_deaf(self, sa: int) -> bool:
        """True: the pack at `sa` hears nothing (the network is down)."""
        return "network_down" in self._active

    def override_inputs(self, values: dict[str, Any]) -> None:
        """Corrupt the Modbus readings (sensor faults) in place; truth stays untouched."""
        m = self.model
        self._delay_safety(values)
        for f in self._active.values():
            name = f.spec.name
            if name == "setpoint_mismatch":
                values["setpoint_swap_height"] = values["setpoint_swap_height"] + _num(f.value)
            elif name == "lift_overtravel":
                values["lift_height"] = _u16(m.lift_mm + _num(f.value))
            elif name == "shuttle_misplaced":
                values["shuttle_position"] = _u16(m.shuttle_mm + _num(f.value))
            elif name == "bolt_not_reported":
                i = int(f.target or 1) - 1
                values["bolt_torque"][i] = 0.0
                values["bolt_angle"][i] = 0.0
                if m.bolts.tight[i]:
                    values["bolts_tight"] -= 1
            elif name in ("pack_present_ghost", "pack_missing_sensor"):
                seen = name == "pack_present_ghost"
                if isinstance(f.target, int):
                    values["rack_slot_occupied"][f.target - 1] = seen
                else:
                    values[PRESENCE_INPUT[str(f.target)]] = seen

    def _delay_safety(self, values: dict[str, Any]) -> None:
        """safety_report_delay: each safety input reads what it was VALUE ms ago (its
        changes timed as a scan first saw them)."""
        f = self._active.get("safety_report_delay")
        if f is None:
            self._safety_seen.clear()
            return
        real, delay = self.model.real, _num(f.value) / 1000.0
        for name in SAFETY_FAULTS.values():
            truth = bool(values[name])
            seen = self._safety_seen.setdefault(name, [(-math.inf, truth)])
            if seen[-1][1] != truth:
                seen.append((real, truth))
            while len(seen) > 1 and seen[1][0] <= real - delay:
                seen.pop(0)
            values[name] = seen[0][1]

    # ------------------------------------------------------------ internals
    def _sync(self) -> None:
        if self.sync is not None:
            self.sync()

    def _changed(self) -> None:
        if self.changed is not None:
            self.changed()

    def _offered(self, spec: FaultSpec) -> bool:
        return spec.protocol is None or spec.protocol == self.model.config.plc_protocol

    def _spec(self, name: str) -> FaultSpec:
        spec = SPEC_BY_NAME.get(str(name))
        if spec is None or not self._offered(spec):
            known = ", ".join(s.name for s in SPECS if self._offered(s))
            if spec is not None:
                raise FaultError(f"{name}: OPC UA only, and this simulator's PLC speaks "
                                 f"{self.model.config.plc_protocol}; known: {known}")
            raise FaultError(f"unknown fault {name!r}; known: {known}")
        return spec

    def _value(self, spec: FaultSpec, value: Value) -> Value:
        vs = spec.value
        if vs is None:
            if value is not None:
                raise FaultError(f"{spec.name}: takes no value (got {value!r})")
            return None
        if value is None:
            return vs.default
        if vs.choices:
            v = str(value).strip().lower()
            if v not in vs.choices:
                raise FaultError(f"{spec.name}: value {value!r} is not one of "
                                 f"{', '.join(vs.choices)}")
            return v
        if isinstance(value, bool):
            raise FaultError(f"{spec.name}: value must be a number of {vs.unit}, not {value!r}")
        try:
            num = float(value)
        except (TypeError, ValueError):
            raise FaultError(
                f"{spec.name}: value must be a number of {vs.unit}, not {value!r}") from None
        if not math.isfinite(num) or not vs.lo <= num <= vs.hi:
            raise FaultError(f"{spec.name}: value {num:g} {vs.unit} outside "
                             f"{vs.lo:g}..{vs.hi:g}")
        return num

    def _target(self, spec: FaultSpec, target: Target) -> Target:
        kind = spec.target
        if isinstance(target, str) and target.strip().lower() in ("", "none", "all") \
                and kind == "can":
            target = None
        if kind is None:
            if target is not None:
                raise FaultError(f"{spec.name}: takes no target (got {target!r})")
            return None
        if kind == "bus":
            buses = [b.name for b in self.model.config.can.bus_list()]
            name = buses[0] if target is None else str(target).strip()
            if name not in buses:
                raise FaultError(f"{spec.name}: target {target!r} is not a bus "
                                 f"({', '.join(buses)})")
            return name
        if target is None:
            return spec.default_target
        if kind == "input":
            return _input_target(spec, target)
        t: Target = target
        if isinstance(t, str):
            t = t.strip().lower()
            if t.lstrip("-").isdigit():
                t = int(t)
        if isinstance(t, bool) or (isinstance(t, float) and not t.is_integer()):
            raise FaultError(f"{spec.name}: bad target {target!r}; expected "
                             f"{spec.target_meaning}")
        if isinstance(t, float):
            t = int(t)
        st = self.model.config.station
        if kind == "bolt":
            if not isinstance(t, int) or not 1 <= t <= st.bolt_count:
                raise FaultError(f"{spec.name}: target {target!r} is not a bolt index "
                                 f"1..{st.bolt_count}")
            return t
        if isinstance(t, int):
            if not 1 <= t <= st.slots:
                raise FaultError(f"{spec.name}: target slot {t} outside 1..{st.slots}")
            return t
        allowed = ("vehicle",) if kind == "can" else PLACES
        if t not in allowed:
            raise FaultError(f"{spec.name}: bad target {target!r}; expected "
                             f"{spec.target_meaning}")
        return t

    def _apply(self, f: ActiveFault) -> None:
        name = f.spec.name
        if name not in PACK_FAULTS:
            return  # the model and the wires ask the registry when they need to
        if f.pack is None:
            f.pack = self._resolve_pack(f.target)
            if f.pack is None:
                return  # pending: bound as soon as a pack is at the target
        p = f.pack
        if name == "pack_over_temp":
            p.forced_temp_c = _num(f.value)
            p.max_cell_temp_c = _num(f.value)
            p.min_cell_temp_c = min(p.min_cell_temp_c, p.max_cell_temp_c)
        elif name == "pack_temp_rise":
            p.temp_rise_c_per_s = _num(f.value) / 60.0
        elif name == "pack_fault":
            flag = str(f.value)
            if flag not in p.faults:
                p.faults.add(flag)
                f.undo["added"] = True
        elif name == "pack_insulation_low":
            f.undo.setdefault("insulation_kohm", p.insulation_kohm)
            p.insulation_kohm = _num(f.value)

    def _undo(self, f: ActiveFault) -> None:
        p, name = f.pack, f.spec.name
        if p is None:
            return
        if name == "pack_over_temp":
            p.forced_temp_c = None
            p.fast_cool = True
        elif name == "pack_temp_rise":
            p.temp_rise_c_per_s = 0.0
            p.fast_cool = True
        elif name == "pack_fault" and f.undo.get("added"):
            p.faults.discard(str(f.value))
        elif name == "pack_insulation_low" and "insulation_kohm" in f.undo:
            p.insulation_kohm = f.undo["insulation_kohm"]

    def _resolve_pack(self, target: Target) -> SimPack | None:
        m = self.model
        if target == "vehicle":
            v = m.vehicle
            if v is None:
                return None
            if v.pack is not None:
                return v.pack
            out = (v.visit.get("pack_out") or {}).get("serial")
            for p in (m.shuttle_pack, m.stacker_pack):  # on its way to the bay
                if p is not None and p.serial != out:
                    return p
            return None
        if target == "shuttle":
            return m.shuttle_pack
        if target == "stacker":
            return m.stacker_pack
        if isinstance(target, int):
            return m.rack.get(target)
        return None

    def _info(self, spec: FaultSpec) -> FaultInfo:
        f = self._active.get(spec.name)
        vs = spec.value
        return {
            "name": spec.name,
            "description": spec.description,
            "active": f is not None,
            "value": f.value if f is not None else None,
            "target": f.target if f is not None else None,
            "value_meaning": vs.meaning if vs else None,
            "unit": vs.unit if vs else None,
            "default_value": vs.default if vs else None,
            "choices": list(vs.choices) if vs and vs.choices else None,
            "target_meaning": spec.target_meaning or None,
            "default_target": spec.default_target,
            "kind": "physical" if spec.physical else "sensor",
            "set_at": f.set_at if f is not None else None,
            "pack_serial": f.pack.serial if f is not None and f.pack is not None else None,
        }


def _input_target(spec: FaultSpec, target: Target) -> str:
    from sim_hw.mechanics import CONTRACT  # mechanics imports this module

    inputs = [n for n, s in CONTRACT.signals.items() if s.direction == "in"]
    t = target.strip() if isinstance(target, str) else target
    if t not in inputs:
        raise FaultError(f"{spec.name}: target {target!r} is not an input signal of the PLC "
                         f"contract ({', '.join(inputs)})")
    assert isinstance(t, str)
    return t


def _num(v: Value) -> float:
    assert isinstance(v, float)
    return v


def _u16(v: float) -> int:
    return max(0, min(0xFFFF, round(v)))


__all__ = ["FAULT_NAMES", "OPCUA_FAULT_NAMES", "SPECS", "FaultError", "FaultRegistry",
           "FaultSpec", "ValueSpec"]
