"""Simulated time: wall time since start, multiplied by the speed factor."""

from __future__ import annotations

import time
from collections.abc import Callable


class SimClock:
    def __init__(self, speed: float, real_clock: Callable[[], float] = time.monotonic) -> None:
        self.speed = speed
        self.real_clock = real_clock
        self.t0 = real_clock()

    def restart(self) -> None:
        self.t0 = self.real_clock()

    def now(self) -> tuple[float, float]:
        """(sim seconds since start, monotonic real seconds)."""
        real = self.real_clock()
        return (real - self.t0) * self.speed, real

    def sim(self) -> float:
        return self.now()[0]
