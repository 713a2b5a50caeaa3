"""A warning log limited to one line per event per interval, with a count of the rest:
a babbling CAN node or a dead PLC polled at 50 Hz must not flood journald."""

from __future__ import annotations

import time
from typing import Any


class RateLimitedWarnings:
    def __init__(self, log: Any, interval_s: float = 1.0) -> None:
        self._log = log
        self._interval = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, event: str, **fields: Any) -> None:
        now = time.monotonic()
        last = self._last.get(event)
        if last is not None and now - last < self._interval:
            self._suppressed[event] = self._suppressed.get(event, 0) + 1
            return
        self._last[event] = now
        self._log.warning(event, suppressed=self._suppressed.pop(event, 0), **fields)
