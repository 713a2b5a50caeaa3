"""docs/interlocks.md, generated from the interlock table and the step rows (a test keeps
the file in step): `python -m station.interlock_doc`."""

from __future__ import annotations

from pathlib import Path

from station.interlocks import INTERLOCKS, R
from station.sequence import CHECK_SOC_TOLERANCE_PCT, SEQUENCE

DOC = Path("docs/interlocks.md")


def table_markdown() -> str:
    """docs/interlocks.md, generated from INTERLOCKS (a test keeps the file in step)."""
    lines = [
        "# Interlocks",
        "",
        "Generated from `station/interlocks.py` and the step rows of `station/sequence.py` by "
        "`python -m station.interlock_doc`; "
        "a test fails when this file and the table differ.",
        "",
        "The controller is supervision, not the safety barrier: the safety PLC and its relays "
        "are. Each interlock is evaluated on every change of the process image and on every "
        "scan tick (at least every 50 ms), before any command is written. Reactions:",
        "",
        "- **abort**: category-1 stop requested from the PLC (`stop_request` = 1); the swap "
        "ends as aborted; PackML Aborting -> Aborted, which stays until an operator clears it "
        "(`swapctl clear`, refused while the condition holds), then resets (`swapctl reset`, "
        "refused while the machine is away from home: see below).",
        "- **hold**: category-2 stop (`stop_request` = 2); PackML Holding -> Held; the swap "
        "resumes at the interrupted step (its command sent again with a new sequence number) "
        "only when an operator unholds (`swapctl unhold`, refused while the condition holds). "
        "No hold resumes by itself.",
        "- **inhibit**: at rest (Idle, Stopped, Aborted, ...) no swap starts and no reset, "
        "clear or unhold is accepted while the condition holds.",
        "",
        "Clear, reset, unhold and start come only from an operator at the station "
        "(`swapctl`): the network may stop or hold the station (`request_stop`, "
        "`request_hold`), never lift a stop or a hold (docs/security.md).",
        "",
        "An interlock with steps applies in motion only while the swap is in one of them. "
        "*Motion* means Starting, Execute, Completing, Holding, Unholding, Suspending, "
        "Unsuspending. *Held* is a Held or Suspended swap (also the state a restart mid-swap "
        "lands in). Fault names are the simulator's (`swap-sim fault set NAME`).",
        "",
        "| id | hazard | in motion | held | steps | at rest | simulator faults |",
        "|---|---|---|---|---|---|---|",
    ]
    for il in INTERLOCKS:
        steps = "all" if il.steps is None else ", ".join(
            s.name for s in SEQUENCE if s.name in il.steps)
        rest = il.at_rest.value if il.at_rest else "-"
        faults = ", ".join(f"`{f}`" for f in il.faults) or "- (unit tests)"
        held = (il.paused or (R.INHIBIT if il.in_motion == R.HOLD else il.in_motion)).value
        lines.append(f"| `{il.id}` | {il.hazard} | {il.in_motion.value} | {held} | {steps} | "
                     f"{rest} | {faults} |")
    lines += [
        "",
        "## Pack events (any pack, any state)",
        "",
        "A pack event is a BMS emergency flag (over_temp, over_voltage, under_voltage, "
        "insulation, thermal_alarm), a cell temperature at or above its chemistry's "
        "`alarm_temp_c`, a temperature rising faster than `pack_safety.max_temp_rise_c_per_min`,"
        " or insulation below `pack_safety.min_insulation_kohm`. On every pack event the "
        "controller isolates the pack (PackControl `isolate`: contactors open, no charging), "
        "locks its rack slot out of pack selection and raises an alarm (journal `alarm` event, "
        "error log line). If the pack is the car's or one the swap moves, "
        "`pack_event_near_swap` aborts the swap as well. A pack on the shuttle or the "
        "stacker is unplugged and silent on CAN: its events are seen once it is in a slot "
        "or in the car. Only locations the PLC shows full count: a flag from an empty slot, "
        "or one the station does not have, is dropped. The pack is isolated once and one "
        "alarm is raised per pack and kind; a lockout is journaled, survives a restart, and "
        "is lifted only by someone who has checked the pack: an operator at the station "
        "(`swapctl pack release SLOT --reason ...`) or the network's signed "
        "`slot_maintenance` command with action `release` (docs/security.md). Either is "
        "refused while the event is still seen, journals its reason and sender, and sends "
        "`clear_isolation`.",
        "",
        "## Distrusted packs (pack bus cross-checks)",
        "",
        "A pack whose identity or ratings conflict with the ones its location was bound to, "
        "or whose SOC, readings or charge current are implausible (docs/security.md), is "
        "distrusted: one "
        "alarm naming both sides; a rack slot is locked out as above (and told to stop "
        "charging at once); at the vehicle bay no swap starts for that car. If the running "
        "swap depends on the pack (the bay, or the fetch slot until its pack is on the "
        "shuttle) the swap is aborted, reason `pack not trusted: ...`, fault code the "
        "alarm's kind (`identity_conflict`, `ratings_conflict`, `soc_implausible`, "
        "`readings_implausible`, `overcurrent`).",
        "",
        "## Swap-step failures",
        "",
        "Also aborts, with the step and the reason journaled: a step over its timeout "
        "(`step_timeout`); the PLC not echoing a command's sequence number within "
        "`sequence.handshake_timeout_s` (`plc_no_answer`); the PLC restarting during a "
        "command, its echo back to 0 (`plc_restarted`); a done that turns back into idle, "
        "or an echo back to an older number (`plc_done_lost`); the PLC reporting an error "
        "(`plc_error`), except error stopped, whose cause is waited for "
        "`sequence.stop_cause_grace_s` (a hold interlock then holds, an abort interlock "
        "aborts with its own id; none: `plc_stopped`); the PLC reporting done while the "
        "sensors still disagree `sequence.sensor_grace_s` later (`sensor_disagrees`, naming "
        "each input, its value and what was expected); a bolt outside its torque/angle "
        "window, or not reported, in the scan that shows done, after "
        "UNLOCK or LOCK (`unlock_failed`, `lock_failed`; simulator faults `bolt_torque_fail`, "
        "`bolt_not_reported`); the installed pack failing the post-swap BMS check "
        "(`check_failed`: its serial, family and chemistry must be the fetched pack's, its "
        "SOC at most " f"{CHECK_SOC_TOLERANCE_PCT:g}" " % below the SOC it was fetched with "
        "and at least `check.min_soc_pct`, no fault flag, insulation at least "
        "`check.min_insulation_kohm`; the reason names what differs).",
        "",
        "## The controller's heartbeat",
        "",
        "The controller increments `ctrl_heartbeat` every 100 ms. The PLC must stop all "
        "motion when it has not changed for the contract's `ctrl_heartbeat_timeout_ms` "
        "(1 s), so a dead or hung "
        "controller stops the machine; see docs/plc-interface.md.",
        "",
        "## Home: where a reset or a start may come from",
        "",
        "An abort or a stop mid-swap leaves the machine where it stood: a car lifted with "
        "its bolts loose, a pack on the shuttle. Nothing is made ready or started from there "
        "(`station/home.py`, judged on the PLC's read-back alone). The machine is *home* "
        "when the lift is down (`lift_height` within `sequence.height_tolerance_mm`), the "
        "shuttle is home (`shuttle_position` within `sequence.shuttle_home_tolerance_mm`) "
        "and empty, the stacker carries no pack, and a car on the platform with a pack in "
        "its bay has every bolt tight. With no car (or an empty bay) the bolts are not "
        "judged: they read what the last car left, or 0 of 0.",
        "",
        "- `reset` and `start` are refused away from home, with a reason naming everything "
        "that is off, e.g. `reset refused: machine away from home: car lifted at 500 mm, 0 "
        "of 10 bolts tight, pack on the shuttle`; so are the automatic reset after a "
        "completed swap, the reset at start-up (`[operation] reset_on_start`; the daemon "
        "stays Stopped and its `reason` says why) and the automatic start in Idle.",
        "- At rest (Idle, Stopped, Aborted, Complete) the same words are the status's "
        "`start_inhibited` (journaled as an `inhibit` event) until the read-back shows the "
        "machine home again: Idle never holds a car back without a reason.",
        "- `clear` is accepted away from home: it only acknowledges the abort (Aborted -> "
        "Stopped) and moves nothing. `unhold` of a held swap is accepted too: the swap goes "
        "on with its own steps from where it stopped.",
        "- The way back home: in maintenance mode `swapd` computes a recovery plan from the "
        "read-back and the journal and runs it one PLC command at a time, each stopped at once "
        "(category 1) by any interlock above that would stop a swap and is not about a "
        "step's row (`swapctl mode maintenance`, `swapctl recover --next`; "
        "docs/operator.md, \"Back to service after an abort\"), or a technician brings it "
        "home with the hand pendant, outside the controller (the simulator's `manual_home`); "
        "then `swapctl mode produce` and `reset`.",
        "",
    ]
    return "\n".join(lines)



def steps_markdown() -> str:
    """What each step's row tells the interlocks (station/sequence.py)."""
    def yn(v: bool | None) -> str:
        return "-" if v is None else ("pack" if v else "empty")

    lines = [
        "## What each step requires",
        "",
        "From the step rows of `station/sequence.py`: the interlocks above judge the machine "
        "by these. Presence columns say what the sensors must read throughout the step "
        "(`-`: it changes in the step); *car* is where the lift must hold it; *talking* are "
        "the packs that must be heard on CAN (`pack_silent`); the timeout is the default of "
        "`[sequence.timeouts]` (real seconds, divided by `sequence.speed_factor`, never "
        "below 1 s).",
        "",
        "| step | PLC command | bay | shuttle | store slot | fetch slot | car | car may move "
        "| shuttle home | talking | timeout s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in SEQUENCE:
        p = s.presence
        talk = ", ".join(sorted(t.value for t in s.talkers)) or "-"
        lines.append(
            f"| {s.name} | {s.command or '- (controller)'} | {yn(p.bay)} | {yn(p.shuttle)} | "
            f"{yn(p.store_slot)} | {yn(p.fetch_slot)} | {s.car.value if s.car else 'moves'} | "
            f"{'no' if s.car_positioned else 'yes'} | {'yes' if s.shuttle_home else 'no'} | "
            f"{talk} | {s.timeout_s:g} |")
    return "\n".join(lines) + "\n"


def document() -> str:
    return table_markdown() + "\n" + steps_markdown()


if __name__ == "__main__":
    DOC.write_text(document())
