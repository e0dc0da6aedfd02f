"""The daemon's view of the local runtime: supervised psionic, status, blockers, commands."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from aiohttp import web
from support import DaemonFactory

from autopilotd.adapters.psionic_http import PsionicClient
from autopilotd.ports.inference import InferenceError


async def _fake_psionic(models: list[dict[str, Any]]) -> tuple[web.AppRunner, str, list[str]]:
    """A stand-in HTTP server speaking psionic's wire format (for this fast test only)."""
    calls: list[str] = []

    async def status(request: web.Request) -> web.Response:
        ready = any(m["state"] == "warm" for m in models)
        return web.json_response(
            {"device": "cpu", "ready": ready, "models": models, "last_error": None}
        )

    async def warm(request: web.Request) -> web.Response:
        calls.append(f"warm {request.match_info['id']}")
        return web.json_response({"model": {}})

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        calls.append("chat")
        if body.get("max_tokens", 0) > 4096:
            return web.json_response({"error": {"message": "max_tokens too large"}}, status=400)
        return web.json_response(
            {
                "model": "smollm2",
                "choices": [
                    {"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1},
            }
        )

    app = web.Application()
    app.router.add_get("/api/status", status)
    app.router.add_post("/api/models/{id}/warm", warm)
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}", calls


async def test_runtime_url_mode_reports_models(daemon_factory: DaemonFactory) -> None:
    runner, url, calls = await _fake_psionic(
        [{"id": "smollm2", "kind": "chat", "state": "warm", "precision": "bf16", "queue_depth": 0}]
    )
    try:
        d = await daemon_factory(runtime_mode="url", runtime_url=url)
        met = await d.call("wait.until", {"condition": "runtime-ready", "timeout_s": 10})
        assert met["met"]
        status = await d.call("runtime.status")
        assert (
            status["state"] == "ready" and status["device"] == "cpu" and status["dtype"] == "bf16"
        )
        assert status["models"] == [{"id": "smollm2", "kind": "chat", "warm": True}]
        assert await d.call("runtime.warm", {"model": "smollm2"}) == {
            "model": "smollm2",
            "warm": True,
        }
        assert calls == ["warm smollm2"]
    finally:
        await runner.cleanup()


async def test_runtime_without_models_is_not_ready(daemon_factory: DaemonFactory) -> None:
    runner, url, _ = await _fake_psionic([])
    try:
        d = await daemon_factory(runtime_mode="url", runtime_url=url)
        for _ in range(50):
            status = await d.call("runtime.status")
            if status["state"] != "starting":
                break
            await asyncio.sleep(0.1)
        assert status["state"] == "degraded" and "no models" in status["reason"]
    finally:
        await runner.cleanup()


async def test_unreachable_runtime_is_visible(daemon_factory: DaemonFactory) -> None:
    d = await daemon_factory(runtime_mode="url", runtime_url="http://127.0.0.1:9")
    status = await d.call("runtime.status")
    assert status["state"] in ("starting", "degraded")
    met = await d.call("wait.until", {"condition": "runtime-ready", "timeout_s": 1})
    assert not met["met"]


async def test_client_maps_errors(tmp_path: Path) -> None:
    runner, url, _ = await _fake_psionic([])
    client = PsionicClient(url)
    try:
        done = await client.chat(
            [{"role": "user", "content": "x"}],
            model="smollm2",
            max_tokens=5,
            temperature=0,
            top_p=1,
        )
        assert done.text == "hi" and done.completion_tokens == 1
        try:
            await client.chat([], model="smollm2", max_tokens=10_000, temperature=0, top_p=1)
        except InferenceError as exc:
            assert "max_tokens" in exc.reason and not exc.retryable
        else:
            raise AssertionError("an OpenAI-style error must raise")
    finally:
        await client.close()
        await runner.cleanup()
    dead = PsionicClient("http://127.0.0.1:9")
    try:
        await dead.status()
    except InferenceError as exc:
        assert exc.retryable and "not reachable" in exc.reason
    finally:
        await dead.close()
    json.dumps({})
