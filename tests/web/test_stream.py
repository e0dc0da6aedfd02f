"""The live signal: server-sent events on snapshot change and on new domain events."""

from __future__ import annotations

import asyncio
from typing import Any

from support import DaemonFactory

from autopilotd.registry import Registry
from autopilotd.runtime.context import Runtime


def _bump(reg: Registry, rt: Runtime) -> None:
    @reg.command("test.bump", access="control")
    async def bump() -> dict[str, Any]:
        """Publish a new snapshot (seq + 1) with nothing else changed."""
        return {"seq": rt.state.update(lambda s: s).seq}


async def _next_event(lines: Any) -> tuple[str, str]:
    event = data = ""
    while True:
        raw = await asyncio.wait_for(lines.readline(), 10)
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            data = line[len("data: ") :]
        elif line == "" and event:
            return event, data


async def test_stream_signals_snapshot_and_activity(
    daemon_factory: DaemonFactory, web_login: Any
) -> None:
    d = await daemon_factory(registrars=[_bump])
    status = await d.call("status")
    while any(s["state"] == "starting" for s in status["services"]):  # then the seq stands still
        status = await d.call("status.wait", {"after_seq": status["seq"], "timeout_s": 5})
    web = await web_login(d)
    async with web.session.get(web.base + "/events/stream", headers=web.headers()) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
        assert await _next_event(r.content) == (
            "hello",
            f'{{"seq": {(await d.call("status"))["seq"]}}}',
        )
        bumped = await d.call("test.bump")
        name, data = await _next_event(r.content)
        while name == "tick":
            name, data = await _next_event(r.content)
        assert name == "snapshot" and data == f'{{"seq": {bumped["seq"]}}}'
        await d.call("logs.mark", {"message": "hello"})
        name, _ = await _next_event(r.content)
        while name == "tick":
            name, _ = await _next_event(r.content)
        assert name == "activity"
