"""Following a thread: `thread.events` with `timeout_s` waits for the thread's next events and
returns them as soon as they are written, whichever write it is; with nothing new it returns
none at the timeout."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from support import DaemonFactory, InProcessDaemon
from support.chat import chat_daemon

from autopilotd.app import Adapters
from autopilotd.client import RpcError
from autopilotd.errors import InvalidParams

from .test_threads import GatedEngine

STILL_WAITING_S = 0.3  # how long a long poll must be seen waiting before the write it waits for


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    (tmp_path / "ws").mkdir()
    return tmp_path / "ws"


def poll(d: InProcessDaemon, thread_id: str, after: int) -> asyncio.Task[Any]:
    params = {"thread_id": thread_id, "after_seq": after, "timeout_s": 20}
    return asyncio.get_running_loop().create_task(d.call("thread.events", params))


async def still_waiting(task: asyncio.Task[Any]) -> None:
    await asyncio.sleep(STILL_WAITING_S)
    assert not task.done(), task.result()


async def test_a_long_poll_returns_each_write_as_it_commits(
    daemon_factory: DaemonFactory, ws: Path
) -> None:
    engine = GatedEngine()
    d = await chat_daemon(daemon_factory, adapters=Adapters(engine=engine))
    thread = await d.call("thread.start", {"workspace": str(ws)})
    last = (await d.call("thread.read", {"thread_id": thread["id"]}))["last_seq"]

    waiting = poll(d, thread["id"], last)
    await still_waiting(waiting)
    turn = await d.call("turn.start", {"thread_id": thread["id"], "input": "hi"})
    got = await asyncio.wait_for(waiting, 10)
    assert got["events"][0]["type"] == "turn.started" and got["events"][0]["seq"] > last
    await asyncio.wait_for(engine.started.wait(), 10)  # "partial " streamed; the gate holds it
    last = (await d.call("thread.read", {"thread_id": thread["id"]}))["last_seq"]

    waiting = poll(d, thread["id"], last)
    await still_waiting(waiting)
    engine.gate.set()
    got = await asyncio.wait_for(waiting, 10)
    first = got["events"][0]
    assert (first["type"], first["body"]) == (
        "item.delta",
        {"field": "text", "delta": "and the rest, for 'hi'"},
    )
    ended = await d.call("turn.wait", {"turn_id": turn["id"]})
    assert ended["status"] == "completed"
    last = (await d.call("thread.read", {"thread_id": thread["id"]}))["last_seq"]

    waiting = poll(d, thread["id"], last)
    await still_waiting(waiting)
    await d.call("thread.archive", {"thread_id": thread["id"]})
    got = await asyncio.wait_for(waiting, 10)
    assert [e["type"] for e in got["events"]] == ["thread.archived"]
    assert got["last_seq"] == got["events"][0]["seq"]


async def test_a_long_poll_with_nothing_new_returns_nothing_at_its_timeout(
    daemon_factory: DaemonFactory, ws: Path
) -> None:
    d = await chat_daemon(daemon_factory)
    thread = await d.call("thread.start", {"workspace": str(ws)})
    other = await d.call("thread.start", {"workspace": str(ws)})
    last = (await d.call("thread.read", {"thread_id": thread["id"]}))["last_seq"]
    params = {"thread_id": thread["id"], "after_seq": last, "timeout_s": 0.5}
    t0 = time.monotonic()
    waiting = asyncio.get_running_loop().create_task(d.call("thread.events", params))
    await d.call("thread.archive", {"thread_id": other["id"]})  # another thread's event
    got = await waiting
    assert time.monotonic() - t0 >= 0.5
    assert got == {"thread_id": thread["id"], "events": [], "last_seq": last}
    got = await d.call("thread.events", {**params, "timeout_s": 0})  # the default: no wait
    assert got["events"] == []

    with pytest.raises(RpcError) as caught:
        await d.call("thread.events", {**params, "timeout_s": -1})
    assert caught.value.rpc_code == InvalidParams.code and "negative" in caught.value.message
    with pytest.raises(RpcError) as caught:
        await d.call("thread.events", {"thread_id": "thr-nope", "timeout_s": 1})
    assert "no chat thread" in caught.value.message
