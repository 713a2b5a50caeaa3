"""A scripted PLC for unit tests of the core: pure logic, no I/O.

It reacts to the core's outputs the way the contract says a PLC does (echo the sequence
number, report done or error, move the sensors) so each test can change one behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from drivers.bms.adapter import BmsAdapter
from drivers.bms.protocol import PackProtocol
from station.config import StationConfig
from station.core import Decision, StationCore
from station.events import Event
from station.image import BAY, Location, PackData, PackReport, PackState, ProcessImage
from station.packml import Cmd, State

TIMEOUTS = BmsAdapter(PackProtocol()).timeouts()  # the pack protocol's own freshness limits
CELLS = {"nmc": 108, "lfp": 120, "sodium_ion": 112}
CUTOFF = {"nmc": 4.2, "lfp": 3.65, "sodium_ion": 3.95}


def new_image() -> ProcessImage:
    return ProcessImage(pack_timeouts=TIMEOUTS)


def pack(loc: Location, serial: int, family: int = 20, chem: str = "nmc", soc: float = 95.0,
         t: float = 0.0, **kw: Any) -> PackReport:
    fields: dict[str, Any] = dict(
        serial=serial, family=family, chemistry=chem, soc_pct=soc, soh_pct=95.0,
        rated_energy_kwh=75.0, rated_capacity_ah=187.5, voltage_v=400.0, current_a=0.0,
        min_cell_temp_c=24,
        max_cell_temp_c=26, insulation_kohm=5000, state=PackState.IDLE, first_seen=t,
        cell_count=CELLS[chem], max_charge_voltage_v=round(CELLS[chem] * CUTOFF[chem], 1),
        max_charge_current_a=250.0)
    fields.update(kw)
    rep = PackReport(location=loc, **fields)
    rep.last_seen = {k: t for k in PackData}
    return rep


@dataclass
class ScriptedPlc:
    """behaviour[command name] in: done (default), error, busy, silent, no_sensor."""

    behaviour: dict[str, str] = field(default_factory=dict)
    image: ProcessImage = field(default_factory=new_image)
    bolt_torque: float = 120.0
    unlock_torque: float = 90.0
    check_pack_ok: bool = True
    last_seq: int = 0
    freeze: bool = False  # the PLC stops answering: inputs go stale
    freeze_heartbeat: bool = False  # the PLC answers but its program is stuck
    silent: set[Location] = field(default_factory=set)  # packs that stopped talking
    wake_pack: bool = True  # the installed pack talks after LOCK (False: check step waits)
    identity_burst: bool = True  # the woken pack sends its identity at once (False: only
    # when asked or on its 1 s period; the scripted bus answers a request at the next tick)
    refused: int = 0  # commands refused because another was still running
    next_vehicle: bool = False  # the next car is on the platform the moment one leaves
    vin: str | None = None  # the car's VIN, heard on CAN every tick while it is there

    def __post_init__(self) -> None:
        self.image.plc = {
            "plc_heartbeat": 0, "cmd_ack_seq": 0, "cmd_status": "idle", "cmd_error_code": "none",
            "estop_ok": True, "safety_plc_ok": True, "light_curtain_clear": True,
            "doors_closed": True, "smoke_clear": True, "vehicle_present": True,
            "vehicle_ready": True, "vehicle_token": 7, "position_offset_x": 40.0,
            "position_offset_y": -30.0, "lift_height": 0, "shuttle_position": 0,
            "shuttle_pack_present": False, "vehicle_pack_present": True, "stacker_slot": 0,
            "stacker_pack_present": False, "bolts_tight": 10, "bolt_count": 10,
            "rack_slot_count": 4, "bolt_torque": [0.0] * 12, "bolt_angle": [0.0] * 12,
            "rack_slot_occupied": [True, True, True, False] + [False] * 26,
            # the set-points a PLC working to the default configuration publishes
            "setpoint_swap_height": 500.0, "setpoint_height_tolerance": 5.0,
            "setpoint_position_tolerance": 5.0, "setpoint_shuttle_car_position": 3000.0,
            "setpoint_unlock_torque": [80.0, 100.0], "setpoint_unlock_angle": [680.0, 760.0],
            "setpoint_lock_torque": [110.0, 130.0], "setpoint_lock_angle": [80.0, 100.0],
        }
        self.image.plc_read_at = 0.0
        self.image.packs = {
            Location.rack(1): pack(Location.rack(1), 1001, 20, "nmc", 90.0),
            Location.rack(2): pack(Location.rack(2), 1002, 20, "lfp", 97.0),
            Location.rack(3): pack(Location.rack(3), 1003, 25, "sodium_ion", 99.0),
            BAY: pack(BAY, 2001, 20, "nmc", 12.0),
        }
        self.asked: list[Any] = []  # pack requests the core made
        self._installed: PackReport | None = None  # its identity not heard yet
        self._next_pack: PackReport | None = None  # the next car's pack, talking once asked

    def tick(self, outputs: dict[str, Any] | None, now: float,
             requests: list[Any] | None = None) -> None:
        p = self.image.plc
        if self.freeze:
            return
        if not self.freeze_heartbeat:
            p["plc_heartbeat"] = (p["plc_heartbeat"] + 1) % 65536
        self.image.plc_read_at = now
        asked = {r.location for r in requests or () if PackData.IDENTITY in r.kinds}
        self.asked.extend(requests or ())
        if self.vin is not None and p["vehicle_present"]:
            self.image.vehicle_vin, self.image.vehicle_vin_at = self.vin, now
        if self._next_pack is not None and (BAY in asked or None in asked):
            self._next_pack.first_seen = now
            self.image.packs[BAY], self._next_pack = self._next_pack, None
            self.silent.discard(BAY)
        if self._installed is not None and (BAY in asked or None in asked):
            # the installed pack answers the request: its own identity replaces the old one
            self.image.packs[BAY], self._installed = self._installed, None
        for loc, rep in self.image.packs.items():
            if loc in self.silent:
                continue
            for kind in rep.last_seen:
                # identity is slow (1 s): heard at once only when asked or in a burst
                if kind != PackData.IDENTITY or self.identity_burst or loc in asked \
                        or None in asked:
                    rep.last_seen[kind] = now
        if outputs is not None and outputs.get("stop_request") != "none" and \
                p["cmd_status"] == "busy":
            p["cmd_status"], p["cmd_error_code"] = "error", "stopped"  # a stop ends it
        if outputs is None or outputs["cmd_seq"] == self.last_seq:
            return
        self.last_seq = outputs["cmd_seq"]
        name = str(outputs["cmd_code"])
        if p["cmd_status"] == "busy":  # the contract: one command at a time
            self.refused += 1
            p["cmd_ack_seq"] = self.last_seq
            p["cmd_status"], p["cmd_error_code"] = "error", "refused"
            return
        how = self.behaviour.get(name, "done")
        if how == "silent":
            return
        p["cmd_ack_seq"] = self.last_seq
        if how == "busy":
            p["cmd_status"] = "busy"
            return
        if how == "error":
            p["cmd_status"], p["cmd_error_code"] = "error", "mechanism_fault"
            return
        p["cmd_status"] = "done"
        if how != "no_sensor":
            self._move(name, outputs["cmd_param1"], now)

    def manual_home(self) -> None:
        """A technician's homing with the hand pendant, outside the controller: a pack left
        on the shuttle goes back into the car's empty bay (else into the first free slot),
        the bay's pack is bolted, the shuttle goes home and the car is lowered."""
        p = self.image.plc
        if p["shuttle_pack_present"]:
            if p["vehicle_present"] and not p["vehicle_pack_present"]:
                p["vehicle_pack_present"] = True
            else:
                p["rack_slot_occupied"][p["rack_slot_occupied"].index(False)] = True
            p["shuttle_pack_present"] = False
        if p["stacker_pack_present"]:
            p["rack_slot_occupied"][p["rack_slot_occupied"].index(False)] = True
            p["stacker_pack_present"], p["stacker_slot"] = False, 0
        if p["vehicle_present"] and p["vehicle_pack_present"]:
            p["bolts_tight"] = p["bolt_count"]
        p["shuttle_position"], p["lift_height"] = 0, 0

    def wake(self, now: float) -> None:
        """The car wakes its electronics: the installed pack talks at the bay address."""
        rep = self.fetched
        rep.location, rep.first_seen = BAY, now
        self.image.packs[BAY] = rep

    def _move(self, name: str, slot: int, now: float) -> None:
        p, packs = self.image.plc, self.image.packs
        if name == "POSITION":
            p["position_offset_x"] = p["position_offset_y"] = 0.5
        elif name == "LIFT":
            p["lift_height"] = 500
        elif name == "UNLOCK":
            p["bolts_tight"], p["shuttle_position"] = 0, 3000
            p["bolt_torque"] = [self.unlock_torque] * 10 + [0.0, 0.0]
            p["bolt_angle"] = [720.0] * 10 + [0.0, 0.0]
        elif name == "REMOVE":
            p["vehicle_pack_present"], p["shuttle_pack_present"] = False, True
            p["shuttle_position"] = 0
            self.removed = packs.pop(BAY)
        elif name == "STORE":
            p["rack_slot_occupied"][slot - 1] = True
            p["shuttle_pack_present"] = False
            self.removed.location = Location.rack(slot)
            packs[Location.rack(slot)] = self.removed
        elif name == "FETCH":
            p["rack_slot_occupied"][slot - 1] = False
            p["shuttle_pack_present"] = True
            self.fetched = packs.pop(Location.rack(slot))
        elif name == "INSTALL":
            p["vehicle_pack_present"], p["shuttle_pack_present"] = True, False
            p["shuttle_position"] = 3000
        elif name == "LOCK":
            p["bolts_tight"], p["shuttle_position"] = 10, 0
            p["bolt_torque"] = [self.bolt_torque] * 10 + [0.0, 0.0]
            p["bolt_angle"] = [90.0] * 10 + [0.0, 0.0]
            rep = self.fetched
            rep.location, rep.first_seen = BAY, now
            if not self.check_pack_ok:
                rep.faults = frozenset({"internal"})  # not an emergency: the check catches it
            if self.wake_pack and self.identity_burst:
                packs[BAY] = rep
            elif self.wake_pack:
                # Status and cells come from the new pack at once, but the bay's identity is
                # still the one heard from the pack that left, until the new one sends its own.
                stale = PackReport(**{**rep.__dict__, "serial": self.removed.serial,
                                      "family": self.removed.family,
                                      "chemistry": self.removed.chemistry})
                stale.last_seen = {**rep.last_seen,
                                   PackData.IDENTITY: self.removed.last_seen[PackData.IDENTITY]}
                packs[BAY], self._installed = stale, rep
        elif name == "LOWER":
            p["lift_height"] = 0
        elif name == "RELEASE" and self.next_vehicle:
            # the next car drives on as this one leaves: the platform never reads empty, the
            # bay still holds what the last car's pack said, the new pack is not heard yet
            p["vehicle_token"] += 1
            self.silent.add(BAY)
            self._next_pack = pack(BAY, 2002, 20, "lfp", 8.0, t=now)
        elif name == "RELEASE":
            p["vehicle_present"], p["vehicle_token"] = False, 0


@dataclass
class Run:
    core: StationCore
    plc: ScriptedPlc
    now: float = 0.0
    events: list[Event] = field(default_factory=list)
    wall0: float | None = None  # UTC epoch seconds at now = 0 (None: no wall time)

    def step(self, dt: float = 0.05, n: int = 1) -> None:
        for _ in range(n):
            self.now += dt
            if self.wall0 is not None:
                self.plc.image.wall_time = self.wall0 + self.now
            d = self.core.update(self.plc.image, self.now)
            self._take(d)

    def _take(self, d: Decision) -> None:
        self.events.extend(d.events)
        self.plc.tick(d.outputs if d.outputs is not None else self.core.outputs, self.now,
                      d.pack_requests)

    def cmd(self, c: Cmd) -> None:
        self._take(self.core.command(c, self.now))

    def until(self, pred: Any, limit: int = 2000) -> None:
        for _ in range(limit):
            if pred():
                return
            self.step()
        raise AssertionError(f"condition not reached; state {self.core.state.label}, "
                             f"reason {self.core.reason}")

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [e.data for e in self.events if e.kind == kind]


def make_run(cfg: StationConfig | None = None, prepare: Any = None,
             wall0: float | None = None, core_kw: dict[str, Any] | None = None,
             **plc_kw: Any) -> Run:
    """A core reset to Idle in front of a scripted PLC; prepare(plc) runs before the reset.
    `wall0`: the wall time (UTC epoch seconds) at now = 0, advancing with it; `core_kw`:
    more arguments for StationCore (the network state a restart hands over)."""
    cfg = cfg or StationConfig()
    run = Run(StationCore(cfg, **(core_kw or {})), ScriptedPlc(**plc_kw), wall0=wall0)
    if prepare:
        prepare(run.plc)
    run.step()
    run.cmd(Cmd.RESET)
    run.step(n=2)
    assert run.core.state in (State.IDLE, State.STARTING, State.EXECUTE), run.core.reason
    return run
