"""Timed motions: a command is a list of phases played out over its configured duration.

A phase is either a ramp (share > 0: `step(p)` is called with progress 0..1, repeatedly)
or an instant event (share 0: `step(1.0)` is called once when reached). Ramps capture
their start value when they begin, so a motion stopped half-way and commanded again
continues from where the mechanism stands instead of jumping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Phase:
    share: float  # part of the command's duration; 0 = instant event
    step: Callable[[float], None]


def ramp(
    share: float, get: Callable[[], float], put: Callable[[float], None], target: float
) -> Phase:
    """A linear move from the value found when the phase begins to `target`."""
    start: list[float] = []

    def step(p: float) -> None:
        if not start:
            start.append(get())
        put(start[0] + (target - start[0]) * p)

    return Phase(share, step)


def event(action: Callable[[], None]) -> Phase:
    return Phase(0.0, lambda _p: action())


def one_by_one(share: float, items: Callable[[], list[int]], act: Callable[[int], None]) -> Phase:
    """Act on each item in turn, evenly spread over the phase (bolts, one gun run each).

    `items` is evaluated when the phase begins: the bolts still to do at that moment.
    """
    todo: list[list[int]] = []
    done = [0]

    def step(p: float) -> None:
        if not todo:
            todo.append(items())
        n = len(todo[0])
        due = n if p >= 1.0 else int(p * n + 1e-9)
        while done[0] < due:
            act(todo[0][done[0]])
            done[0] += 1

    return Phase(share, step)


@dataclass
class Motion:
    """One running command's phases from `start` (sim seconds) for `duration`."""

    start: float
    duration: float
    phases: list[Phase]
    index: int = 0
    _total: float = field(init=False)

    def __post_init__(self) -> None:
        self._total = sum(p.share for p in self.phases) or 1.0

    @property
    def end(self) -> float:
        return self.start + self.duration

    def advance(self, now: float) -> bool:
        """Play the phases up to `now`; True when the motion has finished."""
        if now >= self.end or self.duration <= 0:
            f = 1.0
        else:
            f = max(0.0, (now - self.start) / self.duration)
        begin = sum(p.share for p in self.phases[: self.index]) / self._total
        while self.index < len(self.phases):
            phase = self.phases[self.index]
            width = phase.share / self._total
            if f < 1.0 and f + 1e-12 < begin + width:
                if width > 0 and f > begin:
                    phase.step((f - begin) / width)
                return False
            phase.step(1.0)
            self.index += 1
            begin += width
        return True


def wait(share: float) -> Phase:
    """Time spent without a change visible in the registers (a pack lowered, a car driving)."""
    return Phase(share, lambda _p: None)


def together(share: float, *phases: Phase) -> Phase:
    """Several ramps that run side by side (the x and y centring guides)."""

    def step(p: float) -> None:
        for ph in phases:
            ph.step(p)

    return Phase(share, step)
