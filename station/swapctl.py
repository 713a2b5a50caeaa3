"""swapctl: the operator's command line to the running swapd, over its local socket.

    swapctl [--socket PATH] status [--json]
    swapctl [--socket PATH] reset|clear|start|stop|hold|unhold|suspend|unsuspend|abort

Exit codes: 0 done; 1 the daemon refused the command (the reason is on stderr);
2 the daemon cannot be reached (not running, no socket, permission denied, no answer)
or the command line is wrong. See docs/operator.md.
"""

from __future__ import annotations

import argparse
import asyncio
import grp
import json
import os
import sys
from pathlib import Path
from typing import Any

from station.local_api import COMMANDS, DEFAULT_SOCKET_PATH, LocalApiError, default_socket_path
from station.local_api import request as api_request

EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE = 0, 1, 2

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
# "slot_maintenance" is `swapctl slot lock|release`)
assert (*HELP, "pack_release", "slot_maintenance") == COMMANDS

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
        epilog="exit codes: 0 done, 1 refused by the daemon (reason on stderr), "
               "2 daemon not reachable or bad usage",
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
    return p


def _request(args: argparse.Namespace) -> tuple[str, dict[str, object]] | str:
    """(the command word, the request) for the arguments, or a usage error."""
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


def format_status(st: dict[str, Any]) -> str:
    """The status object, one field a line, for people."""
    rows: list[tuple[str, str]] = []
    for key, label in _LABELS:
        if key == "packml_state":
            rows.append((label, f"{st.get('packml_state')} ({st.get('packml_state_number')})"))
        elif key in st:
            rows.append((label, _value(st[key])))
    known = {k for k, _ in _LABELS} | {"packml_state_number"}
    rows += [(k, _value(v)) for k, v in st.items() if k not in known]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label + ':':<{width + 1}} {text}" for label, text in rows)


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
    st = resp.get("status")
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
