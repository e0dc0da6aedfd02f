"""Shared pieces of the relay tests: waiting on subscriptions and pools without guessed sleeps,
a rogue relay."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from autopilotd.ports.relays import IncomingEvent, RelayHealth, RelayPoolPort, RelaySubscription


async def take(sub: RelaySubscription, count: int, timeout: float = 10.0) -> list[IncomingEvent]:
    """The next `count` events of the subscription, failing after `timeout` seconds."""
    got: list[IncomingEvent] = []
    async with asyncio.timeout(timeout), contextlib.aclosing(sub.events()) as stream:
        async for item in stream:
            got.append(item)
            if len(got) == count:
                break
    return got


async def quiet(sub: RelaySubscription, seconds: float) -> list[IncomingEvent]:
    """Whatever the subscription gets within `seconds` (used to prove nothing more comes)."""
    got: list[IncomingEvent] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds), contextlib.aclosing(sub.events()) as stream:
            async for item in stream:
                got.append(item)
    return got


async def until(predicate: Callable[[], Any], timeout: float = 10.0, step: float = 0.02) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(step)


def rows(pool: RelayPoolPort) -> dict[str, RelayHealth]:
    return {row.url: row for row in pool.health()}


@contextlib.asynccontextmanager
async def rogue_relay(events: list[dict[str, Any]]) -> AsyncIterator[str]:
    """A websocket 'relay' on loopback that answers every REQ with `events`, whatever the
    filter says, then EOSE; and OK true to every EVENT. Yields its ws:// URL."""
    from aiohttp import WSMsgType, web

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            if frame[0] == "REQ":
                for event in events:
                    await ws.send_str(json.dumps(["EVENT", frame[1], event]))
                await ws.send_str(json.dumps(["EOSE", frame[1]]))
            elif frame[0] == "EVENT":
                await ws.send_str(json.dumps(["OK", frame[1]["id"], True, ""]))
        return ws

    async with serve_ws(handler) as url:
        yield url


@contextlib.asynccontextmanager
async def serve_ws(handler: Any) -> AsyncIterator[str]:
    """Serve the aiohttp websocket `handler` on a free loopback port; yields its ws:// URL."""
    from aiohttp import web

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"ws://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
