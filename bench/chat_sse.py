"""Autopilot Chat over SSE: event committed → received by each of 10 subscribers, and the replay
of 1,000 events after a reconnect.

    .venv/bin/python bench/chat_sse.py [--subscribers 10] [--events 300] [--interval-ms 20]
        [--replays 20]

A daemon process (this script with `--serve HOME`) runs as `autopilotd run` does, with one
change: its chat engine is a bench engine whose turn streams `--events` deltas into an agent
message, one every `--interval-ms` (0: back to back), each an `item.delta` written and
committed (fsynced: `synchronous=FULL`) in its own transaction, and notes the time right after
each write returned. This process logs in to the web UI as a browser does, opens
`--subscribers` streams (GET /chat/<thread>/stream) on one thread, starts the turn, and notes
when each frame arrives on each stream. Per delta and subscriber:

- committed → received: from the engine's time after the write returned to the frame's
  arrival (both processes read time.time() on one machine);
- written → received: from the event's `at`, taken inside the transaction before its commit
  (so it includes the commit and its fsync).

Replay: a second thread with over 1,000 events; `--replays` times, a stream opened with
`Last-Event-ID: 0`, timed from the request to the 1000th frame received. Client and daemon
share the machine's CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from chat_daemon import daemon_process, serve
from figures import TABLE_HEADER, table_row

from autopilotd.client import RpcClient
from autopilotd.ports.engine import EngineStatus, TurnContext
from autopilotd.store.chat_records import ItemKind

REPLAYED = 1000
COMMITS = "commits.json"  # in the daemon's home: the engine's commit times, by delta


# -- the daemon --------------------------------------------------------------------------------


class PacedEngine:
    """A turn's input is "N INTERVAL_MS": N deltas "00000 ", "00001 " … into one agent message,
    one every INTERVAL_MS; the time each write returned goes to HOME/commits.json."""

    name = "bench"

    def __init__(self, home: Path) -> None:
        self._home = home

    def status(self) -> EngineStatus:
        return EngineStatus(self.name, True, True, None, "the SSE bench's paced engine")

    async def run_turn(self, ctx: TurnContext, text: str) -> None:
        count, interval_ms = (int(x) for x in text.split())
        item = await ctx.start_item(ItemKind.AGENT_MESSAGE, {"text": ""})
        committed: list[float] = []
        start = time.monotonic()
        for i in range(count):
            await ctx.append(item, "text", f"{i:05d} ")
            committed.append(time.time())
            if interval_ms:
                await asyncio.sleep(
                    max(0.0, start + (i + 1) * interval_ms / 1000 - time.monotonic())
                )
        await ctx.complete(item)
        (self._home / COMMITS).write_text(json.dumps(committed))


# -- the clients -------------------------------------------------------------------------------


async def frames(content: aiohttp.StreamReader) -> AsyncIterator[tuple[dict[str, str], float]]:
    """Each event frame as it arrives: (its fields, the time its last line was read)."""
    fields: dict[str, str] = {}
    while raw := await content.readline():
        line = raw.decode().rstrip("\n")
        if line == "" and "id" in fields:
            yield fields, time.time()
            fields = {}
        elif line and not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


async def subscribe(
    http: aiohttp.ClientSession, url: str, connected: asyncio.Event, count: list[int], total: int
) -> list[tuple[int, float, float]]:
    """Follow the stream until the turn completes: (delta number, its `at`, when received)."""
    got: list[tuple[int, float, float]] = []
    async with http.get(url) as r:
        assert r.status == 200, await r.text()
        async for fields, received in frames(r.content):
            if fields["event"] == "thread.started":
                count[0] += 1
                if count[0] == total:
                    connected.set()
            elif fields["event"] == "item.delta":
                event = json.loads(fields["data"])
                got.append((int(event["body"]["delta"]), event["at"], received))
            elif fields["event"] == "turn.completed":
                return got
    raise AssertionError("the stream ended before the turn completed")


async def live(
    rpc: RpcClient, http: aiohttp.ClientSession, base: str, home: Path, ws: Path, args: Any
) -> None:
    thread = await rpc.call("thread.start", {"workspace": str(ws), "title": "live"})
    url = f"{base}/chat/{thread['id']}/stream"
    connected, count = asyncio.Event(), [0]
    async with asyncio.TaskGroup() as tg:
        subscribers = [
            tg.create_task(subscribe(http, url, connected, count, args.subscribers))
            for _ in range(args.subscribers)
        ]
        await asyncio.wait_for(connected.wait(), 30)
        t0 = time.monotonic()
        turn = await rpc.call(
            "turn.start",
            {"thread_id": thread["id"], "input": f"{args.events} {args.interval_ms}"},
        )
        while turn["status"] == "running":
            turn = await rpc.call("turn.wait", {"turn_id": turn["id"]})
        wall = time.monotonic() - t0
    committed = json.loads((home / COMMITS).read_text())
    from_commit, from_at = [], []
    for task in subscribers:
        got = task.result()
        assert [n for n, _, _ in got] == list(range(args.events)), "a gap or a duplicate"
        for n, at, received in got:
            from_commit.append(received - committed[n])
            from_at.append(received - at)
    pace = f"one every {args.interval_ms} ms" if args.interval_ms else "back to back"
    print(
        f"\nlive: {args.subscribers} subscriber(s) on one thread, {args.events} deltas {pace} "
        f"({args.events / wall:.0f} events/s written, turn {wall:.2f} s)"
    )
    print(TABLE_HEADER)
    print(table_row("committed → received", from_commit))
    print(table_row("written (at) → received", from_at))


async def replay(
    rpc: RpcClient, http: aiohttp.ClientSession, base: str, ws: Path, runs: int
) -> None:
    thread = await rpc.call("thread.start", {"workspace": str(ws), "title": "replay"})
    turn = await rpc.call("turn.start", {"thread_id": thread["id"], "input": f"{REPLAYED + 50} 0"})
    while turn["status"] == "running":
        turn = await rpc.call("turn.wait", {"turn_id": turn["id"]})
    url = f"{base}/chat/{thread['id']}/stream"
    took: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        n = 0
        async with (
            http.get(url, headers={"Last-Event-ID": "0"}) as r,
            contextlib.aclosing(frames(r.content)) as received,
        ):
            assert r.status == 200
            async for _ in received:
                n += 1
                if n == REPLAYED:
                    break
        took.append(time.perf_counter() - t0)
        assert n == REPLAYED
    print(f"\nreplay of {REPLAYED} events after a reconnect (Last-Event-ID: 0), {runs} runs")
    print(TABLE_HEADER)
    print(table_row("connect → 1000th event", took))
    print(f"{REPLAYED / statistics.median(took):,.0f} events/s at the median")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subscribers", type=int, default=10)
    ap.add_argument("--events", type=int, default=300, help="deltas streamed live")
    ap.add_argument("--interval-ms", type=int, default=20, help="between deltas (0: back to back)")
    ap.add_argument("--replays", type=int, default=20)
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        await serve(args.serve, PacedEngine(args.serve))
        return
    with tempfile.TemporaryDirectory(prefix="autopilotd-bench-chat-") as tmp:
        root = Path(tmp)
        home, ws = root / "home", root / "ws"
        ws.mkdir()
        async with daemon_process(__file__, home) as rpc:
            link = (await rpc.call("web.login_url"))["url"]
            base = link.split("/login", 1)[0]
            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(cookie_jar=jar) as http:
                async with http.get(link, allow_redirects=False) as r:
                    assert r.status == 303, r.status
                await live(rpc, http, base, home, ws, args)
                await replay(rpc, http, base, ws, args.replays)


if __name__ == "__main__":
    asyncio.run(main())
