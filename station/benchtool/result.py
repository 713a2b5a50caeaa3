"""What one scenario run produced: the reports (JUnit, HTML) read only these types.

Times are station seconds since the scenario started: simulated seconds on the simulator
(real seconds x speed), real seconds on a bench, so a plot of a sim run and of a bench
run of the same scenario share their scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Verdict = Literal["passed", "failed", "not_run", "error"]
MarkerKind = Literal["fault", "fault_clear", "command", "cloud", "action", "alarm", "event"]


@dataclass
class Sample:
    """The station seen at one instant (swapd's status; the PLC inputs it read)."""

    t: float
    state: str  # PackML state label, e.g. "Execute"
    step: str | None  # swap step name, e.g. "LIFT", or None
    lift_height_mm: float | None = None
    shuttle_position_mm: float | None = None
    # pack location ("bay", "slot:3") -> {"soc_pct": float|None, "temp_c": float|None}
    packs: dict[str, dict[str, float | None]] = field(default_factory=dict)


@dataclass
class Marker:
    """Something that happened at an instant: a fault injected or cleared, a command sent,
    an action of the scenario, an alarm or a notable journal event."""

    t: float
    kind: MarkerKind
    label: str


@dataclass
class Check:
    """One expectation of the scenario, judged. `detail` says what was expected and what
    was seen (on failure: what differed)."""

    name: str
    passed: bool
    detail: str
    skipped: bool = False  # not checkable on this target (e.g. ground truth on a bench)


@dataclass
class ScenarioResult:
    name: str
    file: str
    description: str
    target: str  # "sim" or "bench"
    verdict: Verdict
    reason: str = ""  # why failed / not run / error, one line
    duration_s: float = 0.0  # real seconds the run took
    speed: float = 1.0
    checks: list[Check] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    log_tail: str = ""  # the end of swapd's log (failures and errors)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed and not c.skipped]
