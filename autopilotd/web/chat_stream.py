"""One chat thread's event log over server-sent events: `GET /chat/<thread_id>/stream`.

Each event of the thread (store/chat.py) is one frame, its `id` the event's sequence number:

    id: 42
    event: item.delta
    data: {"seq": 42, "thread_id": "thr-…", "type": "item.delta", "body": {…}, …}

The stream starts after the `Last-Event-ID` header's sequence number when there is one (an
EventSource sends the last id it received when it reconnects), else after `?after=N`, else at
the thread's beginning. It replays what came since, a page at a time, then follows the thread
live; both are `thread.events` (its long poll when there is nothing new), so what a client
receives over any number of reconnects is the log itself: in order, no gap, no duplicate.
A comment line after KEEPALIVE_S of silence keeps proxies and browsers from dropping the
connection; the stream ends when the session does or the daemon stops.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from autopilotd.errors import InvalidParams, NotFound, UserError
from autopilotd.guard import SECURITY_HEADERS
from autopilotd.runtime.context import Runtime

PAGE = 1000  # events per `thread.events` call (its most)
WAIT_S = 1.0  # one long poll; between two, the session and the daemon's stop are looked at
KEEPALIVE_S = 15.0
SEQ_RE = re.compile(r"[0-9]{1,18}")  # below 2**63, SQLite's largest integer

Call = Callable[[str, dict[str, Any]], Awaitable[Any]]


def frame(event: dict[str, Any]) -> bytes:
    """One event as its SSE frame (JSON puts the data on one line)."""
    return f"id: {event['seq']}\nevent: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def resume_point(last_event_id: str | None, after: str | None) -> int:
    """The sequence number the stream continues after: the header's, else `?after=`, else 0."""
    for name, value in (("the Last-Event-ID header", last_event_id), ("?after=", after)):
        if value is not None:
            if not SEQ_RE.fullmatch(value):
                raise InvalidParams(f"{name} must be an event's sequence number (0, 1, 2 …)")
            return int(value)
    return 0


def refused(status: int, reason: str) -> web.Response:
    return web.Response(text=reason + "\n", status=status, content_type="text/plain")


async def thread_stream(
    request: web.Request,
    rt: Runtime,
    call: Call,
    thread_id: str,
    still_allowed: Callable[[], bool],
) -> web.StreamResponse:
    """Stream `thread_id`'s events (module docstring); `call` runs a registry command as the
    page's session."""
    try:
        after = resume_point(request.headers.get("Last-Event-ID"), request.query.get("after"))
        page = await call(
            "thread.events", {"thread_id": thread_id, "after_seq": after, "limit": PAGE}
        )
    except UserError as exc:  # an unknown thread; a bad id or sequence number
        return refused(404 if isinstance(exc, NotFound) else 400, exc.message)
    resp = web.StreamResponse(
        headers={
            **SECURITY_HEADERS,
            "Content-Type": "text/event-stream",
            "X-Accel-Buffering": "no",
        }
    )
    await resp.prepare(request)
    said = time.monotonic()  # when the client last got something from us
    try:
        await resp.write(b"retry: 2000\n\n")
        while True:
            if page["events"]:
                await resp.write(b"".join(frame(e) for e in page["events"]))
                after = page["events"][-1]["seq"]
                said = time.monotonic()
            elif time.monotonic() - said >= KEEPALIVE_S:
                await resp.write(b": keepalive\n\n")
                said = time.monotonic()
            if not still_allowed() or rt.stop_requested.is_set():
                break
            page = await call(
                "thread.events",
                {"thread_id": thread_id, "after_seq": after, "limit": PAGE, "timeout_s": WAIT_S},
            )
    except ConnectionError:
        pass  # the page went away; it comes back with Last-Event-ID
    return resp
