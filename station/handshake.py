"""One PLC command's handshake, judged the same way wherever it was issued from (a swap's
step, a maintenance command): the PLC must echo its cmd_seq within the handshake timeout,
an error ends it, and a done counts only once the read-back shows its result, within the
sensor grace; the command's own timeout bounds the whole. Pure logic, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from station.image import CmdStatus


@dataclass(frozen=True)
class Verdict:
    done: bool = False
    code: str | None = None  # a failure: plc_no_answer | plc_error | <name>_failed |
    # sensor_disagrees | step_timeout
    reason: str | None = None
    done_seen_at: float | None = None  # when the PLC's done was first seen (sensor grace)

    @property
    def failed(self) -> bool:
        return self.code is not None


def judge_command(plc: Mapping[str, Any], now: float, *, name: str, command: str, seq: int,
                  started_at: float, done_seen_at: float | None, handshake_timeout_s: float,
                  sensor_grace_s: float, timeout_s: float, shown: Callable[[], bool],
                  fault: Callable[[], str | None] = lambda: None) -> Verdict:
    """Where the command `command` (seq `seq`, issued at `started_at`) stands now. `name`
    prefixes the reasons (a step's name); `shown`: the read-back shows its result; `fault`:
    a hard failure seen once the PLC says done."""
    elapsed = now - started_at
    ack = plc.get("cmd_ack_seq")
    status = plc.get("cmd_status")
    if ack != seq:
        if elapsed > handshake_timeout_s:
            return Verdict(code="plc_no_answer",
                           reason=f"{name}: PLC did not take {command} (seq {seq}) within "
                           f"{handshake_timeout_s} s")
    elif status == CmdStatus.ERROR:
        err = plc.get("cmd_error_code", "unknown")
        return Verdict(code="plc_error", reason=f"{name}: PLC error {err} on {command}")
    elif status == CmdStatus.DONE:
        why = fault()
        if why:
            return Verdict(code=f"{name}_failed", reason=f"{name}: {why}")
        if shown():
            return Verdict(done=True, done_seen_at=done_seen_at)
        done_seen_at = done_seen_at if done_seen_at is not None else now
        if now - done_seen_at > sensor_grace_s:
            return Verdict(code="sensor_disagrees",
                           reason=f"{name}: PLC reported done but the sensors disagree",
                           done_seen_at=done_seen_at)
    if elapsed > timeout_s:
        return Verdict(code="step_timeout", reason=f"{name}: timed out after {timeout_s:g} s",
                       done_seen_at=done_seen_at)
    return Verdict(done_seen_at=done_seen_at)


__all__ = ["Verdict", "judge_command"]
