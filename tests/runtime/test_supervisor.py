"""A crashing service is visible as failed; the daemon keeps serving; stop is bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from support import DaemonFactory

from autopilotd.runtime.context import Runtime


class Crashes:
    name = "crashy"

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def run(self, ready: Callable[[], None]) -> None:
        ready()
        await asyncio.sleep(0.05)
        raise ValueError("disk on fire: internal detail")


class Steady:
    name = "steady"

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def run(self, ready: Callable[[], None]) -> None:
        ready()
        await asyncio.Event().wait()


async def test_a_crash_is_a_visible_failed_state(daemon_factory: DaemonFactory) -> None:
    d = await daemon_factory(services=[Crashes, Steady])
    status = await d.call("status")
    for _ in range(100):
        crashy = next(s for s in status["services"] if s["name"] == "crashy")
        if crashy["state"] == "failed":
            break
        status = await d.call("status.wait", {"after_seq": status["seq"], "timeout_s": 5})
    assert crashy["state"] == "failed"
    assert "ValueError" in crashy["last_error"] and "error id" in crashy["last_error"]
    assert "disk on fire" not in crashy["last_error"]
    assert crashy["next_step"]
    steady = next(s for s in status["services"] if s["name"] == "steady")
    assert steady["state"] == "running"
    assert status["daemon"]["state"] == "ready"
    assert await d.stop() == 0


async def test_stop_cancels_services(daemon_factory: DaemonFactory) -> None:
    d = await daemon_factory(services=[Steady], stop_timeout_s=5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await d.stop() == 0
    assert loop.time() - started < 5
    assert not d.paths.manifest_file.exists()
