"""One PLC command's handshake, judged the same way wherever it was issued from (a swap's
step, a maintenance command). Pure logic, no I/O. The rules are the contract's
(docs/plc-interface.md, "Command handshake"):

- the PLC echoes the command's cmd_seq within `sequence.handshake_timeout_s`;
- an echo falling back to 0 with cmd_status idle, after a non-zero echo, is a PLC restart:
  the command is lost;
- done and error are levels held until the next command: done (or error), then another
  status or an older echo, is a broken handshake;
- error stopped waits `sequence.stop_cause_grace_s` for its cause (the caller's interlocks
  choose hold or abort when it comes); none within the grace fails the command;
- done counts only once the read-back shows the command's result, within
  `sequence.sensor_grace_s`; a hard fault (a bolt outside its window) fails it at once,
  in the first scan that shows done;
- the command's own timeout bounds the whole.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from station.image import CmdStatus

if TYPE_CHECKING:
    from station.config import SequenceSection


@dataclass(frozen=True)
class Verdict:
    done: bool = False
    # a failure: plc_no_answer | plc_restarted | plc_done_lost | plc_error | plc_stopped |
    # {name}_failed | sensor_disagrees | step_timeout
    code: str | None = None
    reason: str | None = None  # without the step's name: the caller prefixes it

    @property
    def failed(self) -> bool:
        return self.code is not None


WAITING = Verdict()


@dataclass
class Handshake:
    """What one command's handshake has seen so far; `judge` once a scan."""

    command: str  # contract name
    seq: int
    started_at: float  # monotonic: issued
    last_ack: object = None  # the PLC's echo when last judged (at issue: the one before)
    done: bool = False  # done seen for this seq
    done_seen_at: float | None = None  # done seen while the read-back did not agree yet
    stopped_at: float | None = None  # error stopped first seen
    error_seen: object = None  # the error code seen for this seq (a level, like done)

    def judge(self, plc: Mapping[str, Any], now: float, *, name: str,
              seq_cfg: SequenceSection, timeout_s: float, shown: Callable[[], bool],
              fault: Callable[[], str | None] = lambda: None,
              off: Callable[[], list[str]] = lambda: []) -> Verdict:
        """Where the command stands now. `name` names the command's result for a fault code
        ({name}_failed); `shown`: the read-back shows its result; `fault`: a hard failure
        judged once the PLC says done; `off`: what the read-back shows that is not the
        result (for the reason)."""
        ack, status = plc.get("cmd_ack_seq"), plc.get("cmd_status")
        seq, command = self.seq, self.command
        prev_ack, self.last_ack = self.last_ack, ack
        if ack == seq and status == CmdStatus.DONE:
            self.done = True
        elapsed = now - self.started_at
        if ack == 0 and status == CmdStatus.IDLE and prev_ack not in (None, 0):
            # a PLC that has run a command never reports ack 0 again until it restarts
            return Verdict(code="plc_restarted", reason=(
                f"PLC restarted: cmd_ack_seq 0, cmd_status idle; {command} (seq {seq}) lost"))
        if self.error_seen is not None and ack == seq and status != CmdStatus.ERROR:
            return Verdict(code="plc_done_lost", reason=(
                f"PLC reported {command} (seq {seq}) error {self.error_seen}, then cmd_status "
                f"{status}: error must be held until the next command"))
        if self.done and (ack != seq or status != CmdStatus.DONE):
            now_is = f"cmd_status {status}" if ack == seq else \
                f"cmd_ack_seq {ack} (an older command), cmd_status {status}"
            return Verdict(code="plc_done_lost", reason=(
                f"PLC reported {command} (seq {seq}) done, then {now_is}: done must be held "
                "until the next command"))
        if ack != seq:
            if elapsed > seq_cfg.handshake_timeout_s:
                return Verdict(code="plc_no_answer", reason=(
                    f"PLC did not take {command} (seq {seq}) within "
                    f"{seq_cfg.handshake_timeout_s:g} s (cmd_ack_seq {ack}, cmd_status "
                    f"{status})"))
        elif status == CmdStatus.ERROR:
            err = plc.get("cmd_error_code", "unknown")
            self.error_seen = err
            if err != "stopped":
                return Verdict(code="plc_error", reason=f"PLC error {err} on {command}")
            # Its cause (a safety input, a stop) may come a scan later: the caller's
            # interlocks choose hold or abort when it does; none within the grace fails.
            if self.stopped_at is None:
                self.stopped_at = now
            if now - self.stopped_at > seq_cfg.stop_cause_grace_s:
                return Verdict(code="plc_stopped", reason=(
                    f"PLC stopped {command} (error stopped) and no cause was seen within "
                    f"{seq_cfg.stop_cause_grace_s * 1000:g} ms"))
            return WAITING
        elif status == CmdStatus.DONE:
            why = fault()
            if why:
                return Verdict(code=f"{name}_failed", reason=why)
            if shown():
                return Verdict(done=True)
            if self.done_seen_at is None:
                self.done_seen_at = now
            if now - self.done_seen_at > seq_cfg.sensor_grace_s:
                what = "; ".join(off()) or "see the command's inputs"
                return Verdict(code="sensor_disagrees", reason=(
                    f"PLC reported done but the sensors disagree "
                    f"{seq_cfg.sensor_grace_s * 1000:g} ms later: {what}"))
        if elapsed > timeout_s:
            return Verdict(code="step_timeout", reason=f"timed out after {timeout_s:g} s")
        return WAITING


__all__ = ["WAITING", "Handshake", "Verdict"]
