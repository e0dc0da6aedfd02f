"""Worker plumbing with a fake engine: disconnect cancels, a full queue is a 429."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from support.psionic import CHAT, FakeEngine, serve_models

BODY = {"model": CHAT.id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_client_disconnect_cancels_streaming_generation() -> None:
    engine = FakeEngine()
    async with serve_models({CHAT: engine}) as (client, runtime):
        response = await client.post("/v1/chat/completions", json={**BODY, "stream": True})
        assert response.status == 200
        await response.content.readline()  # the first event is on the wire
        response.close()  # the client goes away mid-stream
        await _until(lambda: engine.stopped_early)
        await _until(lambda: runtime.models[CHAT.id].worker.queue_depth == 0)


async def test_client_disconnect_cancels_non_streaming_generation() -> None:
    engine = FakeEngine()
    async with serve_models({CHAT: engine}) as (client, _runtime), asyncio.TaskGroup() as tg:
        request = tg.create_task(client.post("/v1/chat/completions", json=BODY))
        await _until(lambda: engine.started == 1)
        request.cancel()  # closes the connection
        await _until(lambda: engine.stopped_early)


async def test_full_queue_answers_429_with_retry_after() -> None:
    gate = threading.Event()
    engine = FakeEngine(gate)
    body = {**BODY, "max_tokens": 1}
    async with (
        serve_models({CHAT: engine}, max_queue=1) as (client, runtime),
        asyncio.TaskGroup() as tg,
    ):
        first = tg.create_task(client.post("/v1/chat/completions", json=body))
        await _until(lambda: engine.started == 1)  # running, so the queue is empty again
        second = tg.create_task(client.post("/v1/chat/completions", json=body))
        await _until(lambda: runtime.models[CHAT.id].worker.queue_depth == 2)
        third = await client.post("/v1/chat/completions", json=body)
        assert third.status == 429
        assert third.headers["Retry-After"] == "1"
        assert (await third.json())["error"]["code"] == "queue_full"
        status = await (await client.get("/api/status")).json()
        assert status["models"][0]["queue_depth"] == 2
        gate.set()
        assert (await first).status == 200
        assert (await second).status == 200


async def test_load_failure_is_reported_in_status() -> None:
    class Broken:
        pass

    async with serve_models({CHAT: Broken()}) as (client, runtime):

        def explode(spec: Any, precision: Any) -> Any:
            raise RuntimeError("weights are corrupt")

        runtime.loader = explode
        warm = await client.post(f"/api/models/{CHAT.id}/warm")
        assert warm.status == 503
        status = await (await client.get("/api/status")).json()
        row = status["models"][0]
        assert row["state"] == "error"
        assert "weights are corrupt" in row["last_error"]
        assert status["last_error"] == row["last_error"]
        assert status["ready"] is False
