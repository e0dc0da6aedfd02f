"""Named one-shot timers: each fires its action once, when the clock reaches its moment.

A service makes its `Timers` in its constructor and runs it (`run`) inside its own TaskGroup,
so every timer task has an owner and ends with the service. A timer set before `run` starts
waits for it. Setting a key again replaces its timer; `cancel` drops it. Nothing polls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from autopilotd.runtime.clock import Clock

logger = logging.getLogger(__name__)

Action = Callable[[], Awaitable[None]]


class Timers:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._waiting: dict[str, tuple[float, Action]] = {}

    def at(self, key: str, when: float, action: Action) -> None:
        """Run `action` once the clock reaches `when` (replacing `key`'s earlier timer)."""
        self.cancel(key)
        if self._tg is None:
            self._waiting[key] = (when, action)
        else:
            self._tasks[key] = self._tg.create_task(self._fire(key, when, action), name=key)

    def cancel(self, key: str) -> None:
        self._waiting.pop(key, None)
        task = self._tasks.pop(key, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def __contains__(self, key: object) -> bool:
        return key in self._tasks or key in self._waiting

    async def run(self) -> None:
        """Host the timers until cancelled."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                waiting, self._waiting = self._waiting, {}
                for key, (when, action) in waiting.items():
                    self.at(key, when, action)
                await asyncio.get_running_loop().create_future()
        finally:
            self._tg = None
            self._tasks.clear()

    async def _fire(self, key: str, when: float, action: Action) -> None:
        await self._clock.sleep_until(when)
        if self._tasks.get(key) is asyncio.current_task():
            del self._tasks[key]
        try:
            await action()
        except Exception:  # one timer's failure is logged; it must not end the service
            logger.exception("timer %s failed", key)
