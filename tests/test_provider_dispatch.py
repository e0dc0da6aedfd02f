"""Jobs start at most provider_max_inflight at once, and a changed limit counts at once."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from autopilotd.config import Config
from autopilotd.paths import Paths
from autopilotd.provider.service import Provider


class HeldJobs(Provider):
    """A provider whose jobs run until the test releases them."""

    def __init__(self, rt: Any) -> None:
        super().__init__(rt)
        self.started: list[str] = []
        self.release: dict[str, asyncio.Event] = {}

    async def work(self, request_id: str) -> None:
        self.started.append(request_id)
        await self.release.setdefault(request_id, asyncio.Event()).wait()


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_dispatch_follows_max_inflight_as_it_changes(tmp_path: Path) -> None:
    config = Config(paths=Paths.for_home(tmp_path), provider_max_inflight=1)
    rt: Any = SimpleNamespace(config=config, store=None)
    p = HeldJobs(rt)

    async def limit(n: int) -> None:
        rt.config = dataclasses.replace(config, provider_max_inflight=n)
        await p.capacity_changed()
        await _settle()

    def release(*ids: str) -> None:
        for rid in ids:
            p.release.setdefault(rid, asyncio.Event()).set()

    async with asyncio.TaskGroup() as tg:
        dispatcher = tg.create_task(p.dispatch(tg))
        for rid in "abcde":
            p._queue.put_nowait(rid)
        await _settle()
        assert p.started == ["a"]
        await limit(3)  # raised: queued jobs start at once
        assert p.started == ["a", "b", "c"]
        await limit(1)  # lowered: running jobs finish, no new one starts until below it
        release("a", "b")
        await _settle()
        assert p.started == ["a", "b", "c"]
        release("c")
        await _settle()
        assert p.started == ["a", "b", "c", "d"]
        release("d", "e")
        await _settle()
        assert p.started == ["a", "b", "c", "d", "e"]
        dispatcher.cancel()
