"""Server-sent events that tell an open page when to re-render its panes.

The stream carries no data of its own, only "something changed" signals: `snapshot` when a
new snapshot is published (from `StateStore.wait_for_change`), `activity` when a domain event
is published, and a `tick` every few seconds so the page can show that it is live. The page
then asks for the panes it shows, which render the snapshot like every other request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from autopilotd.guard import SECURITY_HEADERS
from autopilotd.runtime.context import Runtime

WAIT_S = 1.0  # how long one wait for a snapshot lasts before events and ticks are checked
TICK_S = 5.0
MIN_GAP_S = 0.2  # at most five snapshot signals a second, however fast the snapshot changes


def frame(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def event_stream(
    request: web.Request, rt: Runtime, still_allowed: Callable[[], bool]
) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={
            **SECURITY_HEADERS,
            "Content-Type": "text/event-stream",
            "X-Accel-Buffering": "no",
        }
    )
    await resp.prepare(request)
    seq = rt.state.current.seq
    last_event = rt.events.last_id
    last_tick = last_signal = 0.0
    try:
        await resp.write(b"retry: 2000\n\n" + frame("hello", {"seq": seq}))
        while still_allowed() and not rt.stop_requested.is_set():
            snapshot = await rt.state.wait_for_change(seq, timeout=WAIT_S)
            if snapshot.seq != seq:
                gap = MIN_GAP_S - (time.monotonic() - last_signal)
                if gap > 0:
                    await asyncio.sleep(gap)  # coalesce bursts of snapshots into one signal
                seq = rt.state.current.seq
                last_signal = time.monotonic()
                await resp.write(frame("snapshot", {"seq": seq}))
            if rt.events.last_id != last_event:
                last_event = rt.events.last_id
                await resp.write(frame("activity", {"last_id": last_event}))
            if time.monotonic() - last_tick >= TICK_S:
                last_tick = time.monotonic()
                await resp.write(frame("tick", {"seq": seq, "at": time.time()}))
    except ConnectionError:
        pass  # the page went away
    return resp
