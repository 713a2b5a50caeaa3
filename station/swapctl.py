"""swapctl: the operator's command line to the running swapd, over its local socket.

    swapctl [--socket PATH] status [--json]
    swapctl [--socket PATH] reset|clear|start|stop|hold|unhold|suspend|unsuspend|abort
    swapctl [--socket PATH] mode maintenance|produce
    swapctl [--socket PATH] recover --plan | --next [--wait S]
    swapctl [--socket PATH] run COMMAND [PARAM] [--wait S]

Exit codes: 0 done; 1 the daemon refused the command (the reason is on stderr), or the
maintenance command it ran failed; 2 the daemon cannot be reached (not running, no socket,
permission denied, no answer) or the command line is wrong; 3 `recover --next` with the
machine home: nothing left to run. See docs/operator.md.
"""

from __future__ import annotations

import argparse
import asyncio
import grp
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from station.local_api import COMMANDS, DEFAULT_SOCKET_PATH, LocalApiError, default_socket_path
from station.local_api import request as api_request

EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_HOME = 0, 1, 2, 3
POLL_S = 0.1  # how often a waiting recover --next / run asks for the status

HELP = {
    "status": "show the station's PackML state, step, swap, interlocks and reason",
    "reset": "Stopped or Complete -> Resetting -> Idle (refused while interlocks are active)",
    "clear": "Aborted -> Clearing -> Stopped (refused while interlocks are active)",
    "start": "Idle -> Starting -> Execute",
    "stop": "category-2 stop: controlled stop of the machine, the swap ends -> Stopped",
    "hold": "category-2 stop of a running swap, kept to be resumed: Execute -> Held",
    "unhold": "resume a held swap: Held -> Unholding -> Execute",
    "suspend": "Execute -> Suspending -> Suspended (waiting on something outside)",
    "unsuspend": "Suspended -> Unsuspending -> Execute",
    "abort": "category-1 stop: the swap ends as aborted -> Aborted (needs clear, then reset)",
}
# every word the socket takes has a sub-command here ("pack_release" is `swapctl pack release`,
# "slot_maintenance" is `swapctl slot lock|release`, "unit_mode" `swapctl mode`, "recover"
# and "recovery_plan" `swapctl recover --next|--plan`, "maintenance_command" `swapctl run`,
# "events" `swapctl events`)
assert (*HELP, "pack_release", "slot_maintenance", "unit_mode", "recover",
        "maintenance_command", "recovery_plan", "events") == COMMANDS

_LABELS = (
    ("packml_state", "state"),
    ("step", "step"),
    ("swap_id", "swap"),
    ("active_interlocks", "interlocks"),
    ("reason", "reason"),
    ("start_inhibited", "start inhibited"),
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="swapctl",
        description="Command the running swapd (the battery-swap station controller).",
        epilog="exit codes: 0 done, 1 refused by the daemon (reason on stderr) or the "
               "maintenance command failed, 2 daemon not reachable or bad usage, "
               "3 recover --next: the machine is home, nothing left to recover",
    )
    p.add_argument("--socket", metavar="PATH",
                   help=f"the daemon's socket (default: ${{SWAPD_SOCKET}} or "
                        f"{DEFAULT_SOCKET_PATH})")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help="seconds to wait for the daemon's answer (default: 5)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for word, text in HELP.items():
        sp = sub.add_parser(word, help=text, description=text)
        sp.add_argument("--json", action="store_true",
                        help="print the daemon's status object as JSON")
    text = ("put a locked-out rack slot (or the vehicle bay's distrusted pack) back in "
            "service once its cause is gone; the reason is journaled")
    pack = sub.add_parser("pack", help="pack lockouts", description=text)
    psub = pack.add_subparsers(dest="pack_command", required=True, metavar="ACTION")
    rel = psub.add_parser("release", help=text, description=text)
    rel.add_argument("slot", help='rack slot number, or "bay"')
    rel.add_argument("--reason", required=True, help="why it is safe now (journaled)")
    rel.add_argument("--json", action="store_true",
                     help="print the daemon's status object as JSON")
    text = ("take a rack slot out of service for maintenance (nothing is stored in, taken "
            "from or charged in it, across restarts) or put it back; the reason is journaled")
    slot = sub.add_parser("slot", help="maintenance locks", description=text)
    ssub = slot.add_subparsers(dest="slot_command", required=True, metavar="ACTION")
    for action in ("lock", "release"):
        sp = ssub.add_parser(action, help=f"{action} a rack slot", description=text)
        sp.add_argument("slot", type=int, help="rack slot number")
        sp.add_argument("--reason", required=True, help="why (journaled)")
        sp.add_argument("--json", action="store_true",
                        help="print the daemon's status object as JSON")
    text = ("PackML unit mode: maintenance (no swap starts; recovery and single PLC commands "
            "may run) or produce (back to production); only while no swap runs")
    mode = sub.add_parser("mode", help=text, description=text)
    mode.add_argument("mode", choices=("maintenance", "produce"))
    mode.add_argument("--json", action="store_true",
                      help="print the daemon's status object as JSON")
    text = ("in maintenance mode: --plan shows the commands that bring the machine home with "
            "every pack accounted for; --next runs the first of them (computed afresh) and "
            f"waits for it. Exit {EXIT_HOME} when the machine is already home.")
    rec = sub.add_parser("recover", help="guided recovery after an abort", description=text)
    how = rec.add_mutually_exclusive_group(required=True)
    how.add_argument("--plan", action="store_true", help="print the recovery plan")
    how.add_argument("--next", action="store_true", help="run the plan's next step, wait")
    rec.add_argument("--wait", type=float, default=300.0, metavar="S",
                     help="seconds to wait for the step to end (default: 300)")
    rec.add_argument("--json", action="store_true", help="print the answer as JSON")
    text = ("in maintenance mode: run one PLC contract command (POSITION, LIFT, UNLOCK, "
            "REMOVE, STORE slot, FETCH slot, INSTALL, LOCK, LOWER, RELEASE, HOME, NOOP) under "
            "the interlocks, journaled, and wait for it")
    run = sub.add_parser("run", help="run one PLC command (maintenance mode)", description=text)
    run.add_argument("plc_command", metavar="COMMAND", help="contract command name, e.g. HOME")
    run.add_argument("param", nargs="?", type=int, default=0,
                     help="its parameter (STORE and FETCH: the rack slot); default 0")
    run.add_argument("--wait", type=float, default=300.0, metavar="S",
                     help="seconds to wait for the command to end (default: 300)")
    run.add_argument("--json", action="store_true", help="print the answer as JSON")
    text = ("the journal's events after an event id, oldest first, one JSON object a line "
            "(id, wall, t, kind, data): what a bench tool follows")
    ev = sub.add_parser("events", help="journal events after an id", description=text)
    ev.add_argument("--after", type=int, default=0, metavar="ID",
                    help="events after this id (default 0: from the first)")
    ev.add_argument("--limit", type=int, default=100, metavar="N",
                    help="at most this many (1-1000, default 100)")
    return p


def _request(args: argparse.Namespace) -> tuple[str, dict[str, object]] | str:
    """(the command word, the request) for the arguments, or a usage error."""
    if args.command == "mode":
        return "mode", {"cmd": "unit_mode", "mode": args.mode}
    if args.command == "recover":
        if args.plan:
            return "recover", {"cmd": "recovery_plan"}
        return "recover", {"cmd": "recover"}
    if args.command == "events":
        return "events", {"cmd": "events", "after": args.after, "limit": args.limit}
    if args.command == "run":
        return "run", {"cmd": "maintenance_command", "command": args.plc_command.upper(),
                       "param": args.param}
    if args.command == "slot":
        return "slot_maintenance", {"cmd": "slot_maintenance", "slot": args.slot,
                                    "action": args.slot_command, "reason": args.reason}
    if args.command != "pack":
        return args.command, {"cmd": args.command}
    slot: object = args.slot
    if slot != "bay":
        try:
            slot = int(args.slot)
        except ValueError:
            return f"pack release: slot must be a number or \"bay\", not {args.slot!r}"
    return "pack_release", {"cmd": "pack_release", "slot": slot, "reason": args.reason}


def _value(v: Any) -> str:
    if v is None or v == [] or v == {}:
        return "-"
    if isinstance(v, list):
        return ", ".join(str(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}: {x}" for k, x in v.items())
    return str(v)


def format_can(bus: dict[str, Any]) -> str:
    """One CAN bus's counters in a line: state, frames in (decoded, rejected), out, errors."""
    def total(v: Any) -> int:
        return sum(v.values()) if isinstance(v, dict) else int(v or 0)

    rejected = bus.get("rejected") or {}
    kinds = ", ".join(f"{k} {n}" for k, n in rejected.items())
    errors = total(bus.get("error_frames")) + total(bus.get("bus_errors")) \
        + total(bus.get("send_errors"))
    return (f"{bus.get('state')}; received {bus.get('received')}, decoded "
            f"{bus.get('decoded')}, rejected {total(rejected)}" + (f" ({kinds})" if kinds
                                                                   else "")
            + f", sent {bus.get('sent')}, errors {errors}")


def format_status(st: dict[str, Any]) -> str:
    """The status object, one field a line, for people."""
    rows: list[tuple[str, str]] = []
    for key, label in _LABELS:
        if key == "packml_state":
            rows.append((label, f"{st.get('packml_state')} ({st.get('packml_state_number')})"))
        elif key in st:
            rows.append((label, _value(st[key])))
    known = {k for k, _ in _LABELS} | {"packml_state_number", "can"}
    rows += [(k, _value(v)) for k, v in st.items() if k not in known]
    if isinstance(st.get("can"), dict):  # one line per CAN bus
        rows += [(f"can {name}", format_can(bus)) for name, bus in st["can"].items()
                 if isinstance(bus, dict)]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label + ':':<{width + 1}} {text}" for label, text in rows)


def format_plan(plan: dict[str, Any]) -> str:
    """The recovery plan, for a technician."""
    lines = [f"unit mode: {plan.get('unit_mode')}",
             f"off: {plan.get('off') or 'nothing: the machine is home'}"]
    ip = plan.get("interrupted_swap")
    if ip:
        lines.append(f"interrupted swap: {ip['swap_id']} ({ip['outcome']} in {ip['step']}), "
                     f"pack out {ip['pack_out']} -> slot {ip['store_slot']}, pack in "
                     f"{ip['pack_in']} from slot {ip['fetch_slot']}")
    for i, step in enumerate(plan.get("steps") or [], start=1):
        param = f" {step['param']}" if step["command"] in ("STORE", "FETCH") else ""
        lines.append(f"{i}. {step['command']}{param}: {step['why']}")
        for mv in step.get("moves") or []:
            who = f"pack {mv['serial']}" if mv["serial"] is not None else "pack (unknown)"
            lines.append(f"   moves {who}: {mv['from']} -> {mv['to']}")
        lines.append(f"   done when: {step['done_when']}")
    if plan.get("blocked"):
        lines.append(f"no plan brings it home: {plan['blocked']}")
    elif plan.get("home"):
        lines.append("the machine is home: nothing to recover")
    packs = plan.get("packs") or {}
    if packs:
        lines.append("packs: " + ", ".join(f"{where}: {serial if serial is not None else '?'}"
                                           for where, serial in packs.items()))
    return "\n".join(lines)


def _wait_for_command(path: Path, word: str, resp: dict[str, Any],
                      args: argparse.Namespace) -> int:
    """A maintenance command was accepted: wait until the status shows it ended."""
    result = resp.get("result") or {}
    seq = result.get("seq")
    print(f"{word}: {result.get('command')} {result.get('param', 0)} (seq {seq}): "
          f"{result.get('why', '')}", flush=True)
    end = time.monotonic() + args.wait
    while True:
        try:
            st = asyncio.run(api_request(path, {"cmd": "status"}, timeout=args.timeout)
                             ).get("status") or {}
        except (OSError, LocalApiError) as exc:
            print(f"swapctl: {describe_unreachable(exc, str(path), args.timeout)}",
                  file=sys.stderr)
            return EXIT_UNREACHABLE
        run = st.get("maintenance") or {}
        if run.get("seq") == seq and run.get("state") != "running":
            if args.json:
                print(json.dumps(run, indent=2))
            if run.get("state") == "done":
                print(f"{word}: {run['command']} done")
                return EXIT_OK
            print(f"swapctl: {word} failed: {run.get('reason')}", file=sys.stderr)
            return EXIT_REFUSED
        if time.monotonic() > end:
            print(f"swapctl: {word}: {result.get('command')} (seq {seq}) still running after "
                  f"{args.wait:g} s", file=sys.stderr)
            return EXIT_REFUSED
        time.sleep(POLL_S)


def describe_unreachable(exc: BaseException, path: str, timeout: float) -> str:
    """Why the daemon could not be asked, in words an operator can act on."""
    if isinstance(exc, TimeoutError):
        return f"swapd did not answer on {path} within {timeout:g} s"
    if isinstance(exc, FileNotFoundError):
        return (f"no daemon socket at {path}: is swapd running? "
                "(choose the socket with --socket or SWAPD_SOCKET)")
    if isinstance(exc, ConnectionRefusedError):
        return f"swapd is not running: nothing listens on {path}"
    if isinstance(exc, PermissionError):
        try:
            gid = os.stat(path).st_gid
            try:
                group = grp.getgrgid(gid).gr_name
            except KeyError:
                group = str(gid)
            who = f"root and members of group {group!r}"
        except OSError:
            who = "root and members of the socket's group"
        return f"permission denied on {path}: only {who} may command the station"
    if isinstance(exc, LocalApiError):
        return f"bad answer from swapd on {path}: {exc}"
    if isinstance(exc, OSError):
        return f"cannot reach swapd on {path}: {exc.strerror or exc}"
    return f"cannot reach swapd on {path}: {exc}"


def _refusal(word: str, error: str) -> str:
    return error if error.startswith(f"{word} refused") else f"{word} refused: {error}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    path = args.socket or default_socket_path()
    req = _request(args)
    if isinstance(req, str):
        print(f"swapctl: {req}", file=sys.stderr)
        return EXIT_UNREACHABLE
    word, payload = req
    try:
        resp = asyncio.run(api_request(Path(path), payload, timeout=args.timeout))
    except (OSError, LocalApiError) as exc:  # TimeoutError is an OSError
        print(f"swapctl: {describe_unreachable(exc, path, args.timeout)}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if payload["cmd"] == "events" and resp.get("ok"):
        for e in resp.get("events") or []:
            print(json.dumps(e, sort_keys=True))
        return EXIT_OK
    st = resp.get("status")
    if not resp.get("ok") and resp.get("code") == "nothing_to_do":
        print(f"machine is home: nothing left to recover ({resp.get('error')})")
        return EXIT_HOME
    if not resp.get("ok"):
        error = str(resp.get("error") or "no reason given")
        if isinstance(st, dict):  # the daemon refused: it says why and where it stands
            print(f"swapctl: {_refusal(word, error)}", file=sys.stderr)
        else:
            print(f"swapctl: {word} failed: {error}", file=sys.stderr)
        return EXIT_REFUSED
    if not isinstance(st, dict):
        print(f"swapctl: bad answer from swapd on {path}: no status", file=sys.stderr)
        return EXIT_UNREACHABLE
    if payload["cmd"] == "recovery_plan":
        plan = resp.get("plan") or {}
        print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
        return EXIT_OK
    if payload["cmd"] in ("recover", "maintenance_command"):
        return _wait_for_command(Path(path), word, resp, args)
    if args.json:
        print(json.dumps(st, indent=2))
    elif word == "status":
        print(format_status(st))
    else:
        reason = st.get("reason")
        print(f"{word} accepted: now {st.get('packml_state')}"
              + (f" ({reason})" if reason else ""))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
