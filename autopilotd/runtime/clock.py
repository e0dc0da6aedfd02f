"""Time as a port: wall-clock `now()` and `sleep_until()`, real or driven by a test.

Deadlines (a job's payment deadline, a buy request's expiry, a payment retry) are timers that
sleep until a moment on this clock, so a test moves time forward instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """UNIX seconds."""
        ...

    async def sleep_until(self, when: float) -> None:
        """Return once `now() >= when` (at once if it already is)."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, when: float) -> None:
        delay = when - time.time()
        while delay > 0:
            await asyncio.sleep(delay)
            delay = when - time.time()


class ManualClock:
    """A clock that moves only when told to (`advance`), for fast tests of deadlines."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._moved = asyncio.Event()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    async def sleep_until(self, when: float) -> None:
        while self._now < when:
            await self._moved.wait()
