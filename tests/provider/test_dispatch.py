"""Jobs start at most provider_max_inflight at once, and a changed limit counts at once."""

from __future__ import annotations

import asyncio

from autopilotd.provider.dispatch import Dispatch


class HeldJobs:
    """Jobs that run until the test releases them."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.release: dict[str, asyncio.Event] = {}

    async def work(self, request_id: str) -> None:
        self.started.append(request_id)
        await self.release.setdefault(request_id, asyncio.Event()).wait()


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_dispatch_follows_max_inflight_as_it_changes() -> None:
    held = HeldJobs()
    inflight = 1
    p = Dispatch(held.work, lambda: inflight, queue_size=8)

    async def limit(n: int) -> None:
        nonlocal inflight
        inflight = n
        await p.capacity_changed()
        await _settle()

    def release(*ids: str) -> None:
        for rid in ids:
            held.release.setdefault(rid, asyncio.Event()).set()

    async with asyncio.TaskGroup() as tg:
        dispatcher = tg.create_task(p.run())
        for rid in "abcde":
            p.enqueue(rid)
        await _settle()
        assert held.started == ["a"]
        await limit(3)  # raised: queued jobs start at once
        assert held.started == ["a", "b", "c"]
        await limit(1)  # lowered: running jobs finish, no new one starts until below it
        release("a", "b")
        await _settle()
        assert held.started == ["a", "b", "c"]
        release("c")
        await _settle()
        assert held.started == ["a", "b", "c", "d"]
        release("d", "e")
        await _settle()
        assert held.started == ["a", "b", "c", "d", "e"]
        dispatcher.cancel()
