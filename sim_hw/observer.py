"""An independent observer: physical safety invariants judged on the simulator's ground truth.

It runs inside the model, at every advance and at every command taken, and compares the
true state before and after: what moved (lift, shuttle, stacker, bolts, the car's guided
position, packs changing place, the car driving out) and under which conditions. It never
looks at the Modbus readings, so sensor faults (`lift_overtravel`, `shuttle_misplaced`,
`bolt_not_reported`, presence sensors) cannot fool it, and it knows nothing of what any
controller believes.

Each violation is recorded once per episode: once per invariant and command for motion
invariants (once per invariant while the condition lasts when no command caused it), once
per pack and isolation episode for `charging_isolated_pack`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sim_hw.mechanics import StationModel

log = logging.getLogger(__name__)

AT_MM = 0.5  # same tolerance as the mechanics' "at" checks
SHUTTLE_ZONE_MM = 500.0  # beyond this the shuttle is under the car (capped at half the rail)
LAST_COMMANDS = 5

INVARIANTS: dict[str, str] = {
    "shuttle_travel_car_not_lifted":
        "the shuttle moves in the zone under the car while the lift is not at swap height",
    "unlock_not_lifted_or_docked":
        "a bolt loosens while the car is not lifted to swap height or the shuttle not docked",
    "lift_lowered_partly_locked":
        "the lift moves down while some but not all bolts are tight, or while the shuttle "
        "is under the car",
    "motion_with_safety_open":
        "a mechanism moves while the e-stop chain, the safety PLC, a light curtain or a "
        "door is not OK",
    "charging_isolated_pack": "a pack draws charge current while it is isolated",
    "motion_with_controller_heartbeat_lost":
        "a mechanism moves while the controller heartbeat is stale",
}
MOTION_INVARIANTS = frozenset(INVARIANTS) - {"charging_isolated_pack"}


@dataclass(frozen=True)
class Snapshot:
    """The parts of the ground truth that move."""

    lift: float
    shuttle: float
    stacker: float
    token: int  # 0 = no vehicle
    offsets: tuple[float, float]  # guided position, without drift (not a motion)
    bolts: tuple[bool, ...]
    bay: int | None
    shuttle_pack: int | None
    stacker_pack: int | None
    rack: tuple[int | None, ...]
    departures: int


class Observer:
    def __init__(self, model: StationModel) -> None:
        self.model = model
        self.violations: list[dict[str, Any]] = []
        self._open: set[tuple[str, object]] = set()

    def clear(self) -> None:
        """Forget every violation so far (and start new episodes)."""
        self.violations.clear()
        self._open.clear()

    def snapshot(self) -> Snapshot:
        m = self.model
        v = m.vehicle
        return Snapshot(
            lift=m.lift_mm,
            shuttle=m.shuttle_mm,
            stacker=m.stacker_pos,
            token=v.token if v is not None else 0,
            offsets=(v.offset_x_mm, v.offset_y_mm) if v is not None else (0.0, 0.0),
            bolts=tuple(m.bolts.tight),
            bay=v.pack.serial if v is not None and v.pack is not None else None,
            shuttle_pack=m.shuttle_pack.serial if m.shuttle_pack else None,
            stacker_pack=m.stacker_pack.serial if m.stacker_pack else None,
            rack=tuple(p.serial if p else None for p in m.rack.values()),
            departures=len(m.history),
        )

    @staticmethod
    def moved(a: Snapshot, b: Snapshot) -> list[str]:
        """What moved from a to b; a car arriving (new token, bolts reset) is not motion."""
        out = []
        if abs(b.lift - a.lift) > 1e-9:
            out.append("lift")
        if abs(b.shuttle - a.shuttle) > 1e-9:
            out.append("shuttle")
        if abs(b.stacker - a.stacker) > 1e-9 or (a.stacker_pack, a.rack) != (
                b.stacker_pack, b.rack):
            out.append("stacker")
        if b.departures > a.departures:
            out.append("vehicle")  # driven out
        same_car = a.token == b.token and a.token != 0
        if same_car and a.offsets != b.offsets:
            out.append("vehicle")
        if same_car and a.bolts != b.bolts:
            out.append("bolts")
        if (same_car and a.bay != b.bay) or a.shuttle_pack != b.shuttle_pack:
            out.append("pack")
        return sorted(set(out))

    def check(self, before: Snapshot, seq: int) -> None:
        """Judge the step from `before` to now; `seq` is the command whose motion it was."""
        m = self.model
        after = self.snapshot()
        moved = self.moved(before, after)
        st = m.config.station
        swap_h = st.swap_height_mm
        zone = min(SHUTTLE_ZONE_MM, 0.5 * st.shuttle_car_mm)
        found: dict[tuple[str, object], str] = {}

        def lifted(s: Snapshot) -> bool:
            return s.token != 0 and abs(s.lift - swap_h) <= AT_MM

        if "shuttle" in moved and max(before.shuttle, after.shuttle) > zone and not (
                abs(before.lift - swap_h) <= AT_MM and abs(after.lift - swap_h) <= AT_MM):
            found["shuttle_travel_car_not_lifted", seq] = (
                f"shuttle moved {before.shuttle:.0f} -> {after.shuttle:.0f} mm (under the car "
                f"beyond {zone:.0f} mm) with the lift at {after.lift:.0f} mm, swap height "
                f"{swap_h:.0f} mm")

        loosened = [i + 1 for i, (x, y) in enumerate(zip(before.bolts, after.bolts, strict=True))
                    if x and not y] if before.token == after.token else []
        docked = after.shuttle >= st.shuttle_car_mm - AT_MM
        if loosened and not (lifted(after) and docked):
            found["unlock_not_lifted_or_docked", seq] = (
                f"bolt {', '.join(map(str, loosened))} loosened with the lift at "
                f"{after.lift:.0f} mm (swap height {swap_h:.0f}) and the shuttle at "
                f"{after.shuttle:.0f} mm (docked at {st.shuttle_car_mm:.0f})")

        if after.lift < before.lift - 1e-9:
            n = len(after.bolts)
            partly = [sum(s.bolts) for s in (before, after) if 0 < sum(s.bolts) < n]
            under = max(before.shuttle, after.shuttle) > zone
            if partly or under:
                why = f"{partly[-1]} of {n} bolts tight" if partly else \
                    f"the shuttle under the car at {max(before.shuttle, after.shuttle):.0f} mm"
                found["lift_lowered_partly_locked", seq] = (
                    f"lift lowered {before.lift:.0f} -> {after.lift:.0f} mm with {why}")

        if moved:
            opened = [name for name, ok in (
                ("e-stop chain", m.estop_ok), ("safety PLC", m.safety_plc_ok),
                ("light curtain", m.light_curtain_clear), ("doors", m.doors_closed)) if not ok]
            if opened:
                found["motion_with_safety_open", seq] = (
                    f"{', '.join(moved)} moved while {', '.join(opened)} not OK")
            if m.heartbeat_stale(m.real):
                hb = m.heartbeat_changed_real
                age = "never written" if hb is None else f"unchanged for {m.real - hb:.2f} s"
                found["motion_with_controller_heartbeat_lost", seq] = (
                    f"{', '.join(moved)} moved while the controller heartbeat was stale "
                    f"({age}, timeout {m.config.ctrl_heartbeat_timeout_s:g} s)")

        for pack, _in_rack in m._all_packs():
            if pack.state == "isolated" and pack.current_a > 0:
                found["charging_isolated_pack", pack.serial] = (
                    f"pack {pack.serial} draws {pack.current_a:.1f} A while isolated")

        self._record(found, seq, moved)

    def _record(self, found: dict[tuple[str, object], str], seq: int, moved: list[str]) -> None:
        # re-arm the episodes that ended: a pack no longer charging while isolated, or an
        # invariant broken with no command behind it that holds no more
        for key in list(self._open):
            inv, subject = key
            if key not in found and (inv not in MOTION_INVARIANTS or subject == 0):
                self._open.discard(key)
        m = self.model
        for key, text in found.items():
            if key in self._open:
                continue
            self._open.add(key)
            inv, _ = key
            v = {
                "t": round(m.now, 3),
                "invariant": inv,
                "text": text,
                "seq": seq or None,
                "moved": moved,
                "commands": [_command(r) for r in m.command_log[-LAST_COMMANDS:]],
            }
            self.violations.append(v)
            log.warning("safety invariant %s violated at t=%.2f s: %s", inv, m.now, text)
            m._emit("violation", f"{inv}: {text}", violation=v)


def _command(rec: Any) -> dict[str, Any]:
    return {
        "seq": rec.seq,
        "name": rec.name,
        "param1": rec.param1,
        "taken_sim": round(rec.taken_sim, 3),
        "ended_sim": None if rec.ended_sim is None else round(rec.ended_sim, 3),
        "status": rec.status,
        "error_code": rec.error_code,
        "reason": rec.reason,
    }


__all__ = ["INVARIANTS", "Observer", "Snapshot"]
