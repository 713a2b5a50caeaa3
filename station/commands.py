"""One entry for commands, whoever sends them: a local operator (swapctl), the cloud, a
test bench, or the daemon itself at start-up.

A typed request goes through `CommandEntry.submit`: it is checked against PackML and the
interlocks by the core, and the request and its result (refusals included) are journaled
in the same transaction as what the command decided. The same request id again gets the
same result, from the journal, and nothing is done twice (a retried cloud command, a
client that timed out and asked again). Transports (the local API, the cloud link) only
parse and answer; they never decide.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from station.core import CommandRefused as CoreRefused
from station.core import Decision, StationCore
from station.events import CommandAccepted, CommandReceived, CommandRefused
from station.journal import Journal
from station.packml import Cmd

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
COMMAND_WORDS: tuple[str, ...] = tuple(c.value for c in Cmd if c is not Cmd.SC)
# Commands that are not PackML's: the word, and who may send it.
PACK_RELEASE = "pack_release"  # args: slot (1..n, or "bay"), reason (text, journaled)
LOCAL_ONLY = frozenset({PACK_RELEASE})  # a decision for someone at the station, not the cloud
ALL_COMMANDS: tuple[str, ...] = (*COMMAND_WORDS, PACK_RELEASE)
MAX_REASON_CHARS = 200


class Origin(StrEnum):
    LOCAL = "local"  # a local operator, through the Unix socket
    CLOUD = "cloud"
    BENCH = "bench"
    STARTUP = "start-up"  # the daemon's own reset at start-up


@dataclass(frozen=True)
class CommandRequest:
    command: str  # a PackML command word: reset, start, stop, hold, unhold, abort, ...
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

    def as_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "command": self.command,
                "accepted": self.accepted, "reason": self.reason, "state": self.state,
                "repeated": self.repeated}


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
                                 self.core.state.label)
        prior = self.journal.command_result(req.request_id)
        if prior is not None:
            return CommandResult(req.request_id, prior["command"], bool(prior["accepted"]),
                                 prior["reason"], prior["state"], repeated=True)
        now = self.clock()
        command = str(req.command)[:32]
        received = CommandReceived(t=now, request_id=req.request_id, command=command,
                                   origin=f"{req.origin.value}: {req.sender}",
                                   args=dict(req.args))
        origin = received.origin
        refusal = self._malformed(req)
        decision = Decision()
        if refusal is None:
            try:
                if req.command == PACK_RELEASE:
                    slot, why = self._release_args(req.args)
                    decision = self.core.release_slot(slot, why, origin, now)
                else:
                    decision = self.core.command(Cmd(req.command), now, req.sender)
            except CoreRefused as exc:
                refusal = str(exc)
        state = self.core.state.label
        verdict = (CommandAccepted(t=now, request_id=req.request_id, command=command,
                                   origin=origin, state=state)
                   if refusal is None else
                   CommandRefused(t=now, request_id=req.request_id, command=command,
                                  origin=origin, reason=refusal))
        decision.events = [received, *decision.events, verdict]
        await self.apply(decision)
        return CommandResult(req.request_id, command, refusal is None, refusal, state)

    @staticmethod
    def _release_args(args: Mapping[str, Any]) -> tuple[int, str]:
        slot = args["slot"]
        return (0 if slot == "bay" else int(slot)), str(args["reason"])

    @staticmethod
    def _malformed(req: CommandRequest) -> str | None:
        if req.command not in ALL_COMMANDS:
            return f"unknown command {str(req.command)[:32]!r}; expected one of: " + \
                ", ".join(ALL_COMMANDS)
        if req.command in LOCAL_ONLY and req.origin != Origin.LOCAL:
            return f"{req.command} is for an operator at the station (swapctl), not " \
                f"{req.origin.value}"
        if req.command == PACK_RELEASE:
            args = dict(req.args)
            if set(args) != {"slot", "reason"}:
                return "pack_release takes exactly: slot, reason"
            slot, why = args["slot"], args["reason"]
            if not (slot == "bay" or (isinstance(slot, int) and not isinstance(slot, bool)
                                      and 1 <= slot <= 255)):
                return "pack_release: slot must be a rack slot number 1-255 or \"bay\""
            if not isinstance(why, str) or not why.strip() or len(why) > MAX_REASON_CHARS:
                return f"pack_release: reason must be text of 1-{MAX_REASON_CHARS} characters"
            return None
        if req.args:
            return f"{req.command} takes no arguments"
        return None
