"""The swap arbiter: lock with TTL (injected clock, no sleeping), 423, force release,
signed webhook after swaps, and the schedule registry."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from support.psionic import CHAT, FakeEngine, serve_models

from psionic.arbiter import (
    SIGNATURE_HEADER,
    BadToken,
    LockHeld,
    ScheduleRegistry,
    SwapLock,
    sign,
)
from psionic.registry import ModelKind, ModelSpec


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_lock_holder_token_ttl_and_expiry() -> None:
    clock = Clock()
    lock = SwapLock(clock)
    state = lock.acquire("nightly-job", ttl_s=60)
    assert state.expires_at == 1_060.0
    with pytest.raises(LockHeld) as held:
        lock.acquire("someone-else", ttl_s=60)
    assert held.value.state.holder == "nightly-job"
    with pytest.raises(LockHeld):
        lock.check(None)
    with pytest.raises(LockHeld):
        lock.check("wrong")
    lock.check(state.token)  # the holder passes
    clock.now += 59.9
    assert lock.current() is not None
    clock.now += 0.1
    assert lock.current() is None  # expired exactly at the TTL
    lock.check(None)
    assert lock.acquire("someone-else", ttl_s=10).holder == "someone-else"


def test_lock_extend_release_and_force() -> None:
    clock = Clock()
    lock = SwapLock(clock)
    state = lock.acquire("a", ttl_s=10)
    clock.now += 5
    extended = lock.acquire("a", ttl_s=10, token=state.token)
    assert extended.token == state.token and extended.expires_at == clock.now + 10
    with pytest.raises(BadToken):
        lock.release("wrong")
    assert lock.release(None, force=True) is True
    assert lock.current() is None
    assert lock.release(None) is False
    with pytest.raises(ValueError):
        lock.acquire("a", ttl_s=0)


def test_signature_is_hmac_sha256_of_body() -> None:
    body = b'{"event": "swap_complete"}'
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert sign(body, "s3cret") == f"sha256={expected}"


def test_schedule_registry() -> None:
    clock = Clock()
    registry = ScheduleRegistry(clock)
    entry = registry.add({"owner": "ops", "action": "swap", "model": "m", "when": "0 3 * * *"})
    assert registry.list()[0]["id"] == entry.id
    with pytest.raises(ValueError):
        registry.add({"owner": "ops"})
    with pytest.raises(ValueError):
        registry.add({"owner": "ops", "action": "swap", "when": "now", "command": "rm"})
    assert registry.remove(entry.id) and registry.list() == []


OTHER = ModelSpec("other-chat", ModelKind.CHAT, CHAT.path)


@pytest.fixture
async def hook() -> Any:
    received: list[tuple[bytes, dict[str, str]]] = []

    async def handler(request: web.Request) -> web.Response:
        received.append((await request.read(), dict(request.headers)))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", handler)
    server = TestServer(app)
    await server.start_server()
    yield str(server.make_url("/hook")), received
    await server.close()


async def test_lock_api_blocks_swaps_until_released_or_expired(hook: Any) -> None:
    url, received = hook
    clock = Clock()
    models = {CHAT: FakeEngine(), OTHER: FakeEngine()}
    async with serve_models(models, clock=clock, webhook_url=url, webhook_secret="s3cret") as (
        client,
        runtime,
    ):
        taken = await client.post("/api/swap/lock", json={"holder": "trainer", "ttl_s": 120})
        assert taken.status == 201
        token = (await taken.json())["token"]
        shown = await (await client.get("/api/swap/lock")).json()
        assert shown == {
            "locked": True,
            "holder": "trainer",
            "acquired_at": 1000.0,
            "expires_at": 1120.0,
        }
        status = await (await client.get("/api/status")).json()
        assert status["swap_lock"]["holder"] == "trainer"
        assert token not in json.dumps(status)
        assert "token" not in status["swap_lock"]

        assert (await client.post("/api/swap/lock", json={"holder": "x"})).status == 423
        refused = await client.post("/api/swap", json={"model": OTHER.id})
        assert refused.status == 423
        assert (await client.post(f"/api/models/{CHAT.id}/unload")).status == 423
        assert received == []  # a refused swap sends nothing

        done = await client.post(
            "/api/swap", json={"model": OTHER.id}, headers={"X-Swap-Token": token}
        )
        assert done.status == 200
        result = await done.json()
        assert result["event"] == "swap_complete" and result["webhook_delivered"] is True
        body, headers = received[-1]
        assert headers[SIGNATURE_HEADER] == sign(body, "s3cret")
        assert json.loads(body)["model"] == OTHER.id
        assert runtime.models[OTHER.id].worker.state == "warm"
        assert runtime.models[CHAT.id].worker.state == "cold"

        wrong = await client.delete("/api/swap/lock", headers={"X-Swap-Token": "nope"})
        assert wrong.status == 403
        clock.now += 121  # the TTL lapses: no sleeping needed
        assert (await client.post("/api/swap", json={"model": CHAT.id})).status == 200
        assert json.loads(received[-1][0])["previous"] == [OTHER.id]

        await client.post("/api/swap/lock", json={"holder": "stuck", "ttl_s": 3600})
        forced = await client.delete("/api/swap/lock?force=true")
        assert (await forced.json()) == {"released": True, "forced": True}
        assert (await (await client.get("/api/swap/lock")).json()) == {"locked": False}


async def test_failed_swap_posts_swap_failed(hook: Any) -> None:
    url, received = hook
    async with serve_models({CHAT: FakeEngine(), OTHER: FakeEngine()}, webhook_url=url) as (
        client,
        runtime,
    ):

        def explode(spec: Any, precision: Any) -> Any:
            raise RuntimeError("out of memory")

        runtime.loader = explode
        response = await client.post("/api/swap", json={"model": OTHER.id})
        assert response.status == 503
        payload = json.loads(received[-1][0])
        assert payload["event"] == "swap_failed" and payload["error"]
        assert SIGNATURE_HEADER not in received[-1][1]  # no secret configured, no signature
        status = await (await client.get("/api/status")).json()
        assert status["last_swap"]["event"] == "swap_failed"


async def test_schedule_api_and_management_endpoints() -> None:
    async with serve_models({CHAT: FakeEngine()}) as (client, _runtime):
        created = await client.post(
            "/api/schedule",
            json={"owner": "ops", "action": "swap", "model": CHAT.id, "when": "0 3 * * *"},
        )
        assert created.status == 201
        entry = (await created.json())["entry"]
        listed = await (await client.get("/api/schedule")).json()
        assert [e["id"] for e in listed["entries"]] == [entry["id"]]
        status = await (await client.get("/api/status")).json()
        assert status["schedule"][0]["owner"] == "ops"
        assert (await client.post("/api/schedule", json={"owner": "x"})).status == 400
        removed = await client.delete(f"/api/schedule?id={entry['id']}")
        assert (await removed.json()) == {"removed": entry["id"]}
        assert (await client.delete("/api/schedule/missing")).status == 404

        warm = await (await client.post(f"/api/models/{CHAT.id}/warm")).json()
        assert warm["model"]["state"] == "warm"
        cold = await (await client.post(f"/api/models/{CHAT.id}/unload")).json()
        assert cold["model"]["state"] == "cold"
        assert (await client.post("/api/models/nope/warm")).status == 404
