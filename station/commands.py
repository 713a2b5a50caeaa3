"""One entry for commands, whoever sends them: a local operator (swapctl), the cloud, a
test bench, or the daemon itself at start-up.

A typed request goes through `CommandEntry.submit`: its word is known, its origin may send
it, its arguments are within bounds, and the core checks it against PackML, the interlocks
and its own rules. The request and its result (refusals included) are journaled in the same
transaction as what the command decided. The same request id again gets the same result,
from the journal (`repeated`), and nothing is done twice (a retried cloud command, a client
that timed out and asked again). Transports (the local API, the cloud link) only parse and
answer; they never decide.

Who may send what:
- the cloud (`Origin.CLOUD`) only the network's commands (`CLOUD_COMMANDS`): reserve_pack,
  cancel_reservation, set_authorisations, set_power_cap, slot_maintenance, request_stop,
  request_hold, snapshot. It may stop or hold the station, never start motion: reset,
  clear, unhold, start, abort, suspend, unsuspend and pack_release (and the bare stop and
  hold words) are for a local operator at the station, code "not_permitted".
- a local operator (`Origin.LOCAL`) everything, the network's commands included: a bench or
  a station without a cloud still reserves packs, sets a cap, locks slots. Maintenance mode
  (unit_mode, recover, maintenance_command) is a local operator's or a bench's, never the
  cloud's.
- a bench and the daemon itself everything but pack_release, which needs someone at the
  station who has checked the pack.

A result's `code`: ok, unknown_command, not_permitted, bad_args (station/network.py says
which argument and why), refused (PackML, the interlocks or the core said no; the reason
says why), nothing_to_do (recover with the machine home).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from station import network
from station.core import CommandRefused as CoreRefused
from station.core import Decision, NothingToDo, StationCore
from station.events import CommandAccepted, CommandReceived, CommandRefused
from station.journal import Journal
from station.network import ArgsError
from station.packml import Cmd

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
COMMAND_WORDS: tuple[str, ...] = tuple(c.value for c in Cmd if c is not Cmd.SC)
# Commands that are not PackML's: the word, and who may send it.
PACK_RELEASE = "pack_release"  # args: slot (1..n, or "bay"), reason (text, journaled)
LOCAL_ONLY = frozenset({PACK_RELEASE})  # a decision for someone at the station, not the cloud
RESERVE_PACK = "reserve_pack"  # vin, family, min_soc_pct, expires_at -> reservation
CANCEL_RESERVATION = "cancel_reservation"  # reservation_id
SET_AUTHORISATIONS = "set_authorisations"  # version, valid_from, valid_until, entries
SET_POWER_CAP = "set_power_cap"  # cap_kw (or null), schedule?
SLOT_MAINTENANCE = "slot_maintenance"  # slot, action (lock | release), reason
REQUEST_STOP = "request_stop"  # reason?
REQUEST_HOLD = "request_hold"  # reason?
SNAPSHOT = "snapshot"  # no args: the link publishes status, state and rack now
# Maintenance mode (station/maintenance.py): a local operator's (or a bench's), never the cloud's
UNIT_MODE = "unit_mode"  # mode: maintenance | produce
RECOVER = "recover"  # no args: run the recovery plan's next step
MAINTENANCE_COMMAND = "maintenance_command"  # command (contract name), param (0..65535)
MAINTENANCE_COMMANDS: tuple[str, ...] = (UNIT_MODE, RECOVER, MAINTENANCE_COMMAND)
NETWORK_COMMANDS: tuple[str, ...] = (
    RESERVE_PACK, CANCEL_RESERVATION, SET_AUTHORISATIONS, SET_POWER_CAP, SLOT_MAINTENANCE,
    REQUEST_STOP, REQUEST_HOLD, SNAPSHOT)
CLOUD_COMMANDS = frozenset(NETWORK_COMMANDS)  # all the cloud may send
ALL_COMMANDS: tuple[str, ...] = (*COMMAND_WORDS, PACK_RELEASE, *NETWORK_COMMANDS,
                                 *MAINTENANCE_COMMANDS)
MAX_REASON_CHARS = network.MAX_REASON_CHARS

OK, UNKNOWN_COMMAND, NOT_PERMITTED, BAD_ARGS, REFUSED, NOTHING_TO_DO = (
    "ok", "unknown_command", "not_permitted", "bad_args", "refused", "nothing_to_do")


class Origin(StrEnum):
    LOCAL = "local"  # a local operator, through the Unix socket
    CLOUD = "cloud"
    BENCH = "bench"
    STARTUP = "start-up"  # the daemon's own reset at start-up


@dataclass(frozen=True)
class CommandRequest:
    command: str  # a PackML command word (reset, start, ...), pack_release or a network one
    origin: Origin
    sender: str  # who, in words for the journal ("swapctl uid 1001 pid 4242")
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CommandResult:
    request_id: str
    command: str
    accepted: bool
    reason: str | None  # why it was refused
    state: str | None  # PackML state right after it (None for an old repeated result)
    repeated: bool = False  # the same request id was answered before: nothing was done again
    code: str = OK  # ok | unknown_command | not_permitted | bad_args | refused
    result: dict[str, Any] | None = None  # what it gave (reserve_pack: id, slot, serial)

    def as_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "command": self.command,
                "accepted": self.accepted, "code": self.code, "reason": self.reason,
                "state": self.state, "repeated": self.repeated, "result": self.result}


class Refusal(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def permitted(command: str, origin: Origin) -> str | None:
    """None if this origin may send this command, else why not."""
    if origin == Origin.CLOUD and command not in CLOUD_COMMANDS:
        return (f"{command} is for a local operator at the station: the cloud may stop or "
                "hold the station (request_stop, request_hold), never start motion or lift "
                "what a stop holds" + ("; release a slot with slot_maintenance"
                                       if command == PACK_RELEASE else ""))
    if command in LOCAL_ONLY and origin not in (Origin.LOCAL, Origin.CLOUD):
        return f"{command} is for an operator at the station (swapctl), not {origin.value}"
    return None


class CommandEntry:
    def __init__(self, core: StationCore, journal: Journal,
                 apply: Callable[[Decision], Awaitable[None]],
                 clock: Callable[[], float]) -> None:
        self.core, self.journal, self.apply, self.clock = core, journal, apply, clock

    async def submit(self, req: CommandRequest) -> CommandResult:
        if not isinstance(req.request_id, str) or not REQUEST_ID.fullmatch(req.request_id):
            # Not journaled under this id: it could not be looked up again.
            return CommandResult(str(req.request_id)[:64], str(req.command)[:32], False,
                                 "request id must be 1-64 characters of A-Z a-z 0-9 . _ : -",
                                 self.core.state.label, code=BAD_ARGS)
        prior = self.journal.command_result(req.request_id)
        if prior is not None:
            accepted = bool(prior["accepted"])
            return CommandResult(req.request_id, prior["command"], accepted,
                                 prior["reason"], prior["state"], repeated=True,
                                 code=prior["code"] or (OK if accepted else REFUSED),
                                 result=None if prior["result"] is None
                                 else json.loads(prior["result"]))
        now = self.clock()
        command = str(req.command)[:32]
        received = CommandReceived(t=now, request_id=req.request_id, command=command,
                                   origin=f"{req.origin.value}: {req.sender}",
                                   args=_journaled_args(req))
        origin = received.origin
        decision = Decision()
        refusal: Refusal | None = None
        try:
            decision = self._decide(req, origin, now)
        except Refusal as exc:
            refusal = exc
        except ArgsError as exc:
            refusal = Refusal(BAD_ARGS, str(exc))
        except NothingToDo as exc:
            refusal = Refusal(NOTHING_TO_DO, str(exc))
        except CoreRefused as exc:
            refusal = Refusal(REFUSED, str(exc))
        state = self.core.state.label
        verdict = (CommandAccepted(t=now, request_id=req.request_id, command=command,
                                   origin=origin, state=state, result=decision.result)
                   if refusal is None else
                   CommandRefused(t=now, request_id=req.request_id, command=command,
                                  origin=origin, reason=refusal.reason, code=refusal.code))
        decision.events = [received, *decision.events, verdict]
        await self.apply(decision)
        if refusal is not None:
            return CommandResult(req.request_id, command, False, refusal.reason, state,
                                 code=refusal.code)
        return CommandResult(req.request_id, command, True, None, state,
                             result=decision.result)

    def _decide(self, req: CommandRequest, origin: str, now: float) -> Decision:
        """What the command does; raises Refusal, ArgsError (bad_args) or the core's
        CommandRefused (refused)."""
        word, args, core = req.command, req.args, self.core
        if word not in ALL_COMMANDS:
            raise Refusal(UNKNOWN_COMMAND, f"unknown command {str(word)[:32]!r}; expected "
                          "one of: " + ", ".join(ALL_COMMANDS))
        why_not = permitted(word, req.origin)
        if why_not is not None:
            raise Refusal(NOT_PERMITTED, why_not)
        if not isinstance(args, Mapping):
            raise ArgsError(f"{word}: the arguments must be an object")
        if word == PACK_RELEASE:
            slot, why = self._release_args(args)
            return core.release_slot(slot, why, origin, now)
        if word == RESERVE_PACK:
            return core.reserve_pack(network.parse_reservation(args), origin, now)
        if word == CANCEL_RESERVATION:
            return core.cancel_reservation(network.parse_reservation_id(args), origin, now)
        if word == SET_AUTHORISATIONS:
            return core.set_authorisations(network.parse_authorisations(args), origin, now)
        if word == SET_POWER_CAP:
            cap = network.parse_power_cap(args, core.cfg.charging.station_power_cap_kw)
            return core.set_power_cap(cap, origin, now)
        if word == SLOT_MAINTENANCE:
            slot, action, why = network.parse_maintenance(args)
            return core.slot_maintenance(slot, action, why, origin, now)
        if word == REQUEST_STOP:
            return core.request_stop(network.parse_optional_reason(args, word), origin, now)
        if word == REQUEST_HOLD:
            return core.request_hold(network.parse_optional_reason(args, word), origin, now)
        if word == UNIT_MODE:
            if set(args) != {"mode"} or not isinstance(args["mode"], str):
                raise ArgsError("unit_mode takes exactly: mode (maintenance or produce)")
            return core.set_unit_mode(args["mode"], origin, now)
        if word == RECOVER:
            if args:
                raise ArgsError("recover takes no arguments")
            return core.recover_next(origin, now)
        if word == MAINTENANCE_COMMAND:
            return core.maintenance_command(*self._maintenance_args(args), origin, now)
        if word == SNAPSHOT:
            network.parse_no_args(args, word)
            return Decision()  # accepted: the link publishes status, state and rack now
        if args:
            raise ArgsError(f"{word} takes no arguments")
        return core.command(Cmd(word), now, req.sender)

    @staticmethod
    def _maintenance_args(args: Mapping[str, Any]) -> tuple[str, int]:
        if not set(args) <= {"command", "param"} or "command" not in args:
            raise ArgsError("maintenance_command takes: command, param (optional, default 0)")
        name, param = args["command"], args.get("param", 0)
        if not isinstance(name, str) or not 1 <= len(name) <= 16:
            raise ArgsError("maintenance_command: command must be a PLC contract command name")
        if isinstance(param, bool) or not isinstance(param, int) or not 0 <= param <= 0xFFFF:
            raise ArgsError("maintenance_command: param must be an integer 0-65535")
        return name, param

    @staticmethod
    def _release_args(args: Mapping[str, Any]) -> tuple[int, str]:
        if set(args) != {"slot", "reason"}:
            raise ArgsError("pack_release takes exactly: slot, reason")
        slot, why = args["slot"], args["reason"]
        if not (slot == "bay" or (isinstance(slot, int) and not isinstance(slot, bool)
                                  and 1 <= slot <= 255)):
            raise ArgsError("pack_release: slot must be a rack slot number 1-255 or \"bay\"")
        if not isinstance(why, str) or not why.strip() or len(why) > MAX_REASON_CHARS:
            raise ArgsError(f"pack_release: reason must be text of 1-{MAX_REASON_CHARS} "
                            "characters")
        return (0 if slot == "bay" else slot), why


def _journaled_args(req: CommandRequest) -> dict[str, Any]:
    """The arguments as journaled (and published): an authorisation list by its header and
    size, not its (up to 5,000) entries."""
    args = dict(req.args) if isinstance(req.args, Mapping) else {"args": str(req.args)[:200]}
    if req.command == SET_AUTHORISATIONS and isinstance(args.get("entries"), list):
        args["entries_count"] = len(args.pop("entries"))
    return args
