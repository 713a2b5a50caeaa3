"""A scripted PLC for unit tests of the core: pure logic, no I/O.

It reacts to the core's outputs the way the contract says a PLC does (echo the sequence
number, report done or error, move the sensors) so each test can change one behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from drivers.bms.protocol import VEHICLE_PACK_SA, rack_sa
from station.config import StationConfig
from station.core import Decision, StationCore
from station.image import PackReport, ProcessImage
from station.packml import Cmd, State

NAMES = {1: "POSITION", 2: "LIFT", 3: "UNLOCK", 4: "REMOVE", 5: "STORE", 6: "FETCH",
         7: "INSTALL", 8: "LOCK", 9: "LOWER", 10: "RELEASE"}


def pack(sa: int, serial: int, family: int = 20, chem: str = "nmc", soc: float = 95.0,
         t: float = 0.0, **kw: Any) -> PackReport:
    rep = PackReport(source=sa, serial=serial, family=family, chemistry=chem, soc_pct=soc,
                     soh_pct=95.0, rated_energy_kwh=75.0, voltage_v=400.0, min_cell_temp_c=24,
                     max_cell_temp_c=26, insulation_kohm=5000, state="idle", first_seen=t,
                     **kw)
    rep.last_seen = {m: t for m in ("PackIdentity", "PackHealth", "PackStatus", "PackCells")}
    return rep


@dataclass
class ScriptedPlc:
    """behaviour[command name] in: done (default), error, busy, silent, no_sensor."""

    behaviour: dict[str, str] = field(default_factory=dict)
    image: ProcessImage = field(default_factory=ProcessImage)
    bolt_torque: float = 120.0
    unlock_torque: float = 90.0
    check_pack_ok: bool = True
    last_seq: int = 0
    freeze: bool = False  # the PLC stops answering: inputs go stale
    freeze_heartbeat: bool = False  # the PLC answers but its program is stuck
    silent: set[int] = field(default_factory=set)  # CAN sources that stopped talking
    wake_pack: bool = True  # the installed pack talks after LOCK (False: check step waits)

    def __post_init__(self) -> None:
        self.image.plc = {
            "plc_heartbeat": 0, "cmd_ack_seq": 0, "cmd_status": 0, "cmd_error_code": 0,
            "estop_ok": True, "safety_plc_ok": True, "light_curtain_clear": True,
            "doors_closed": True, "smoke_clear": True, "vehicle_present": True,
            "vehicle_ready": True, "vehicle_token": 7, "position_offset_x": 40.0,
            "position_offset_y": -30.0, "lift_height": 0, "shuttle_position": 0,
            "shuttle_pack_present": False, "vehicle_pack_present": True, "stacker_slot": 0,
            "stacker_pack_present": False, "bolts_tight": 10, "bolt_count": 10,
            "rack_slot_count": 4, "bolt_torque": [0.0] * 12, "bolt_angle": [0.0] * 12,
            "rack_slot_occupied": [True, True, True, False] + [False] * 26,
        }
        self.image.plc_read_at = 0.0
        self.image.packs = {
            rack_sa(1): pack(rack_sa(1), 1001, 20, "nmc", 90.0),
            rack_sa(2): pack(rack_sa(2), 1002, 20, "lfp", 97.0),
            rack_sa(3): pack(rack_sa(3), 1003, 25, "sodium_ion", 99.0),
            VEHICLE_PACK_SA: pack(VEHICLE_PACK_SA, 2001, 20, "nmc", 12.0),
        }

    def tick(self, outputs: dict[str, int] | None, now: float) -> None:
        p = self.image.plc
        if self.freeze:
            return
        if not self.freeze_heartbeat:
            p["plc_heartbeat"] = (p["plc_heartbeat"] + 1) % 65536
        self.image.plc_read_at = now
        for sa, rep in self.image.packs.items():
            if sa in self.silent:
                continue
            for m in rep.last_seen:
                rep.last_seen[m] = now
        if outputs is not None and outputs.get("stop_request") and p["cmd_status"] == 1:
            p["cmd_status"], p["cmd_error_code"] = 3, 6  # a stop request ends the command
        if outputs is None or outputs["cmd_seq"] == self.last_seq:
            return
        self.last_seq = outputs["cmd_seq"]
        name = NAMES.get(outputs["cmd_code"], "?")
        how = self.behaviour.get(name, "done")
        if how == "silent":
            return
        p["cmd_ack_seq"] = self.last_seq
        if how == "busy":
            p["cmd_status"] = 1
            return
        if how == "error":
            p["cmd_status"], p["cmd_error_code"] = 3, 3
            return
        p["cmd_status"] = 2
        if how != "no_sensor":
            self._move(name, outputs["cmd_param1"], now)

    def wake(self, now: float) -> None:
        """The car wakes its electronics: the installed pack talks at the bay address."""
        rep = self.fetched
        rep.source, rep.first_seen = VEHICLE_PACK_SA, now
        self.image.packs[VEHICLE_PACK_SA] = rep

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
            self.removed = packs.pop(VEHICLE_PACK_SA)
        elif name == "STORE":
            p["rack_slot_occupied"][slot - 1] = True
            p["shuttle_pack_present"] = False
            self.removed.source = rack_sa(slot)
            packs[rack_sa(slot)] = self.removed
        elif name == "FETCH":
            p["rack_slot_occupied"][slot - 1] = False
            p["shuttle_pack_present"] = True
            self.fetched = packs.pop(rack_sa(slot))
        elif name == "INSTALL":
            p["vehicle_pack_present"], p["shuttle_pack_present"] = True, False
            p["shuttle_position"] = 3000
        elif name == "LOCK":
            p["bolts_tight"], p["shuttle_position"] = 10, 0
            p["bolt_torque"] = [self.bolt_torque] * 10 + [0.0, 0.0]
            p["bolt_angle"] = [90.0] * 10 + [0.0, 0.0]
            rep = self.fetched
            rep.source, rep.first_seen = VEHICLE_PACK_SA, now
            if not self.check_pack_ok:
                rep.faults = frozenset({"internal"})  # not an emergency: the check catches it
            if self.wake_pack:
                packs[VEHICLE_PACK_SA] = rep
        elif name == "LOWER":
            p["lift_height"] = 0
        elif name == "RELEASE":
            p["vehicle_present"], p["vehicle_token"] = False, 0


@dataclass
class Run:
    core: StationCore
    plc: ScriptedPlc
    now: float = 0.0
    events: list = field(default_factory=list)

    def step(self, dt: float = 0.05, n: int = 1) -> None:
        for _ in range(n):
            self.now += dt
            d = self.core.update(self.plc.image, self.now)
            self._take(d)

    def _take(self, d: Decision) -> None:
        self.events.extend(d.events)
        self.plc.tick(d.outputs if d.outputs is not None else self.core.outputs, self.now)

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


def make_run(cfg: StationConfig | None = None, prepare: Any = None, **plc_kw: Any) -> Run:
    """A core reset to Idle in front of a scripted PLC; prepare(plc) runs before the reset."""
    cfg = cfg or StationConfig()
    run = Run(StationCore(cfg), ScriptedPlc(**plc_kw))
    if prepare:
        prepare(run.plc)
    run.step()
    run.cmd(Cmd.RESET)
    run.step(n=2)
    assert run.core.state in (State.IDLE, State.STARTING, State.EXECUTE), run.core.reason
    return run
