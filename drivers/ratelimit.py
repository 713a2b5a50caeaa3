"""A warning log limited to one line per event per interval, with a count of the rest:
a babbling CAN node or a dead PLC polled at 50 Hz must not flood journald.

`RateLimiter` is the decision alone (one key at most once per interval, the rest counted),
shared with the logging set-up, which limits the libraries' records the same way."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any


class RateLimiter:
    """allow(key) -> None while the key is held back, else how many times it was held back
    since it was last allowed. A key is allowed at most once per `interval_s`."""

    def __init__(self, interval_s: float = 1.0, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 4096) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._max_keys = max_keys
        self._last: dict[Hashable, float] = {}
        self._suppressed: dict[Hashable, int] = {}

    def allow(self, key: Hashable) -> int | None:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        if last is None and len(self._last) >= self._max_keys:
            self._forget(now)
        self._last[key] = now
        return self._suppressed.pop(key, 0)

    def _forget(self, now: float) -> None:
        """Many distinct keys: drop those whose interval is over (their held-back counts
        are lost; nothing is held back for long)."""
        for key in [k for k, t in self._last.items() if now - t >= self.interval_s]:
            del self._last[key]
            self._suppressed.pop(key, None)


class RateLimitedWarnings:
    def __init__(self, log: Any, interval_s: float = 1.0) -> None:
        self._log = log
        self._limiter = RateLimiter(interval_s)

    def warning(self, event: str, **fields: Any) -> None:
        suppressed = self._limiter.allow(event)
        if suppressed is not None:
            self._log.warning(event, suppressed=suppressed, **fields)
