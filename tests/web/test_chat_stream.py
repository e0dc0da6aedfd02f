"""A chat thread over server-sent events (GET /chat/<thread>/stream): every frame is one event
of the thread's log with its seq as the id; a reconnect with Last-Event-ID (or ?after=) gets
exactly what it missed, then the thread live; refusals before the stream starts; keepalives;
the stream ends with the session."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import DaemonFactory, InProcessDaemon
from support.chat import ScriptedEngine, all_events, chat_daemon, run_turn

from autopilotd.app import Adapters
from autopilotd.web import chat_stream

from .conftest import WebClient


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "notes.txt").write_text("hello\n")
    return tmp_path / "ws"


@dataclass
class Frame:
    id: int
    event: str
    data: dict[str, Any]


async def next_frame(content: aiohttp.StreamReader) -> Frame:
    """The next event frame (comments and the `retry:` line skipped)."""
    fields: dict[str, str] = {}
    while True:
        raw = await asyncio.wait_for(content.readline(), 10)
        assert raw, "the stream ended"
        line = raw.decode().rstrip("\n")
        if line == "":
            if "id" in fields:
                return Frame(int(fields["id"]), fields["event"], json.loads(fields["data"]))
            fields.clear()
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            assert name not in fields, f"{name} twice in one frame"
            fields[name] = value


async def frames_until(content: aiohttp.StreamReader, last_seq: int) -> list[Frame]:
    """Frames up to and including the one with id `last_seq`."""
    frames = [await next_frame(content)]
    while frames[-1].id < last_seq:
        frames.append(await next_frame(content))
    return frames


def stream(web: WebClient, thread_id: str, query: str = "", **headers: str) -> Any:
    url = f"{web.base}/chat/{thread_id}/stream{query}"
    return web.session.get(url, headers=web.headers(**headers))


def is_delta(frame: Frame, text: str) -> bool:
    return frame.event == "item.delta" and frame.data["body"] == {"field": "text", "delta": text}


async def written(d: InProcessDaemon, thread_id: str, after: int, delta: str) -> int:
    """The seq of the `item.delta` adding `delta` after `after`, once it is written."""
    while True:
        page = await d.call(
            "thread.events", {"thread_id": thread_id, "after_seq": after, "timeout_s": 10}
        )
        assert page["events"], f"no {delta!r} in 10 s"
        for e in page["events"]:
            if is_delta(Frame(e["seq"], e["type"], e), delta):
                return int(e["seq"])
        after = page["events"][-1]["seq"]


def text_of(frames: list[Frame]) -> str:
    return "".join(f.data["body"]["delta"] for f in frames if f.event == "item.delta")


async def test_a_reconnect_mid_message_with_last_event_id_misses_nothing_and_repeats_nothing(
    daemon_factory: DaemonFactory, ws: Path, web_login: Any
) -> None:
    engine = ScriptedEngine()
    d = await chat_daemon(daemon_factory, adapters=Adapters(engine=engine))
    web = await web_login(d)
    thread = await d.call("thread.start", {"workspace": str(ws)})
    received: list[Frame] = []

    async with stream(web, thread["id"]) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
        received.append(await next_frame(r.content))
        assert received[-1].event == "thread.started"
        turn = await d.call("turn.start", {"thread_id": thread["id"], "input": "hello"})
        for piece in ("one ", "two "):
            await engine.pieces.put(piece)
            while not is_delta(received[-1], piece):
                received.append(await next_frame(r.content))
    # gone in the middle of the agent's message, which goes on meanwhile
    last = received[-1].id
    for piece in ("three ", "four "):
        await engine.pieces.put(piece)
    missed = await written(d, thread["id"], last, "four ")

    async with stream(web, thread["id"], **{"Last-Event-ID": str(last)}) as r:
        assert r.status == 200
        received += await frames_until(r.content, missed)  # replayed; then live:
        await engine.pieces.put("five")
        await engine.pieces.put(None)
        while received[-1].event != "turn.completed":
            received.append(await next_frame(r.content))

    events = await all_events(d, thread["id"])
    assert [f.id for f in received] == [e["seq"] for e in events]  # no gap, no duplicate
    assert [(f.event, f.data) for f in received] == [(e["type"], e) for e in events]
    assert text_of(received) == "one two three four five"
    ended = await d.call("turn.wait", {"turn_id": turn["id"]})
    assert ended["items"][-1]["body"] == {"text": "one two three four five"}


async def test_a_stream_starts_after_the_header_else_after_the_query_else_at_the_beginning(
    daemon_factory: DaemonFactory, ws: Path, web_login: Any
) -> None:
    d = await chat_daemon(daemon_factory)
    web = await web_login(d)
    thread = await d.call("thread.start", {"workspace": str(ws)})
    await run_turn(d, thread["id"], "/ls\nhello")
    events = await all_events(d, thread["id"])
    seqs = [e["seq"] for e in events]
    assert len(seqs) > 6
    cases: list[tuple[str, dict[str, str], int]] = [
        ("", {}, 0),
        (f"?after={seqs[2]}", {}, 3),
        ("?after=0", {"Last-Event-ID": str(seqs[4])}, 5),  # the header wins
        (f"?after={seqs[-1]}", {}, len(seqs)),  # nothing yet: waits for what comes
    ]
    for query, headers, start in cases[:-1]:
        async with stream(web, thread["id"], query, **headers) as r:
            assert r.status == 200, (query, headers)
            got = await frames_until(r.content, seqs[-1])
            assert [f.id for f in got] == seqs[start:], (query, headers)
    query, headers, _ = cases[-1]
    async with stream(web, thread["id"], query) as r:
        await run_turn(d, thread["id"], "again")
        later = await all_events(d, thread["id"])
        got = await frames_until(r.content, later[-1]["seq"])
        assert [f.data for f in got] == later[len(seqs) :]


async def test_refusals_come_before_the_stream_with_the_reason(
    daemon_factory: DaemonFactory, ws: Path, web_login: Any
) -> None:
    d = await chat_daemon(daemon_factory)
    web = await web_login(d)
    thread = await d.call("thread.start", {"workspace": str(ws)})
    for bad in ("abc", "-1", "1.5", "", "3x", "1" * 19):
        async with stream(web, thread["id"], **{"Last-Event-ID": bad}) as r:
            assert (r.status, r.content_type) == (400, "text/plain"), bad
            assert "Last-Event-ID header must be an event's sequence number" in await r.text()
    async with stream(web, thread["id"], "?after=x") as r:
        assert r.status == 400 and "?after= must be" in await r.text()
    async with stream(web, "thr-nope") as r:
        assert (r.status, r.content_type) == (404, "text/plain")
        assert "no chat thread 'thr-nope'" in await r.text()
    async with stream(web, "thr-" + "x" * 100) as r:
        assert r.status == 400
    async with aiohttp.ClientSession() as anonymous:  # no session cookie
        for path in ("/events/stream", f"/chat/{thread['id']}/stream"):
            async with anonymous.get(web.base + path, headers=web.headers()) as r:
                assert r.status == 401, path
                assert "autopilotctl web" in (await r.json())["error"]


async def test_a_quiet_stream_sends_keepalives_and_ends_with_the_session(
    daemon_factory: DaemonFactory, ws: Path, web_login: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr(chat_stream, "KEEPALIVE_S", 0.2)
    monkeypatch.setattr(chat_stream, "WAIT_S", 0.1)
    d = await chat_daemon(daemon_factory)
    web = await web_login(d)
    thread = await d.call("thread.start", {"workspace": str(ws)})
    async with stream(web, thread["id"]) as r:
        assert (await next_frame(r.content)).event == "thread.started"
        line = b""
        while line != b": keepalive\n":
            line = await asyncio.wait_for(r.content.readline(), 10)
        async with web.session.post(
            web.base + "/logout", headers=web.headers(**{"X-CSRF-Token": web.csrf})
        ) as out:
            assert out.status == 204
        while await asyncio.wait_for(r.content.readline(), 10):
            pass  # keepalives, until the stream ends
        assert r.content.at_eof()
