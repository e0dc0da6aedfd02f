"""Dispatch: accepted jobs wait in a bounded queue and start at most `max_inflight` at once.

The limit is read for every job, so a changed setting counts from the next job; a lowered
one lets running jobs finish. Each started job is a task of the dispatcher's TaskGroup.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class Dispatch:
    def __init__(
        self,
        work: Callable[[str], Awaitable[None]],
        max_inflight: Callable[[], int],
        queue_size: int,
    ) -> None:
        self._work = work
        self._max_inflight = max_inflight
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize=queue_size)
        self._running: set[str] = set()
        self._capacity = asyncio.Condition()
        self.changed: Callable[[], None] = lambda: None
        """Called when the queue's depth changed (the board shows it)."""

    def depth(self) -> int:
        return self._queue.qsize()

    def full(self) -> bool:
        return self._queue.full()

    def enqueue(self, request_id: str) -> None:
        """Queue an accepted job (the caller checked `full()` first)."""
        self._queue.put_nowait(request_id)
        self.changed()

    async def put(self, request_id: str) -> None:
        """Queue a job, waiting for room (jobs resumed after a restart)."""
        await self._queue.put(request_id)
        self.changed()

    async def capacity_changed(self) -> None:
        async with self._capacity:
            self._capacity.notify_all()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            while True:
                request_id = await self._queue.get()
                self.changed()
                async with self._capacity:
                    await self._capacity.wait_for(lambda: len(self._running) < self._max_inflight())
                    self._running.add(request_id)
                tg.create_task(self._one(request_id), name=f"job {request_id[:12]}")

    async def _one(self, request_id: str) -> None:
        try:
            await self._work(request_id)
        finally:
            async with self._capacity:
                self._running.discard(request_id)
                self._capacity.notify_all()
