"""Waiting for a condition in an integration test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0,
                     poll_s: float = 0.002) -> None:
    """Poll a condition; the timeout only bounds a failing test, it is not asserted."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(poll_s)
