"""The trainer port over HTTP against a stand-in that answers as psionic's training and adapter
routes do (docs/ft-spec: part 2): the paths, the bodies, and errors in OpenAI's shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from autopilotd.adapters.psionic_train_http import PsionicTrainer
from autopilotd.ports.finetune import AdapterSource, TrainerError, TrainSpec

JOB = {
    "id": "ftjob-1",
    "status": "running",
    "step": 3,
    "total_steps": 10,
    "error": None,
    "base_eval": {"loss": 2.5, "pass_rate": None, "n": 4},
    "checkpoints": [
        {"step": 2, "digest": "ab" * 32, "train_loss": 1.9, "eval": None},
        {"step": 3, "digest": None, "train_loss": None, "eval": {"loss": 2.0, "n": 4}},
    ],
    "created_at": 1.0,
}


@pytest.fixture
async def psionic() -> AsyncIterator[tuple[str, list[tuple[str, str, Any]]]]:
    seen: list[tuple[str, str, Any]] = []

    async def record(request: web.Request) -> Any:
        body = await request.json() if request.can_read_body else None
        seen.append((request.method, request.path_qs, body))
        return body

    async def validate(request: web.Request) -> web.Response:
        await record(request)
        receipt = {"lines": 2, "accepted": 1, "tokens": 12, "assistant_tokens": 3}
        receipt["rejected"] = [{"line": 2, "reason": "900 tokens, above max_seq_len 512"}]
        return web.json_response(receipt | {"examples": [{"tokens": [1, 2]}]})

    async def job(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response(JOB, status=202 if request.method == "POST" else 200)

    async def events(request: web.Request) -> web.Response:
        await record(request)
        lines = [{"seq": 8, "ts": 1.0, "type": "step", "step": 3, "loss": 1.5}]
        return web.json_response({"events": lines, "last_seq": 8})

    async def adapter(request: web.Request) -> web.Response:
        body = await record(request)
        if body and body.get("expect_digest") == "bad":
            error = {"message": "digest mismatch", "type": "invalid_request_error"}
            return web.json_response({"error": error | {"code": "digest_mismatch"}}, status=400)
        made = {"id": request.match_info["id"], "base": "base", "revision": "r2"}
        return web.json_response(made | {"previous": "r1"})

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await record(request)
        if body["model"] == "nope":
            error = {"message": "The model 'nope' does not exist", "code": "model_not_found"}
            return web.json_response({"error": error}, status=404)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": []}\n\n')
        await response.write(b"data: [DONE]\n\n")
        return response

    async def missing(request: web.Request) -> web.Response:
        await record(request)
        error = {"message": "No training job 'x'.", "code": "job_not_found"}
        return web.json_response({"error": error}, status=404)

    async def models(request: web.Request) -> web.Response:
        data = [
            {"id": "base", "kind": "chat"},
            {"id": "emb", "kind": "embeddings"},
            {"id": "ft:base:acme:x", "kind": "chat", "parent": "base"},
        ]
        return web.json_response({"object": "list", "data": data})

    async def export(request: web.Request) -> web.Response:
        await record(request)
        step = request.match_info["step"]
        if step == "9":
            error = {"message": "No checkpoint at step 9.", "code": "checkpoint_not_found"}
            return web.json_response({"error": error}, status=404)
        if step == "7":
            return web.json_response({"not": "a tar"})
        return web.Response(body=b"TAR" + step.encode(), content_type="application/x-tar")

    app = web.Application()
    app.router.add_get("/api/train/jobs/ftjob-1/exports/{step}", export)
    app.router.add_post("/api/train/validate", validate)
    app.router.add_post("/api/train/jobs", job)
    app.router.add_get("/api/train/jobs/ftjob-1", job)
    app.router.add_post("/api/train/jobs/ftjob-1/cancel", job)
    app.router.add_get("/api/train/jobs/ftjob-1/events", events)
    app.router.add_get("/api/train/jobs/x/events", missing)
    app.router.add_put("/api/adapters/{id}", adapter)
    app.router.add_post("/api/adapters/{id}/rollback", adapter)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    server = TestServer(app)
    await server.start_server()
    yield str(server.make_url("/")), seen
    await server.close()


async def test_the_adapter_speaks_psionics_training_api(
    psionic: tuple[str, list[tuple[str, str, Any]]],
) -> None:
    url, seen = psionic
    trainer = PsionicTrainer(lambda: url)
    try:
        receipt = await trainer.validate("base", "{}\n{}\n", 512)
        assert receipt.accepted == 1 and receipt.rejected[0].line == 2 and receipt.tokens == 12
        spec = TrainSpec("ftjob-1", "base", "t", None, "h", {"n_epochs": 2})
        job = await trainer.create_job(spec)
        assert job.status == "running" and job.base_eval is not None
        assert job.checkpoints[1].eval is not None and job.checkpoints[1].eval.loss == 2.0
        assert seen[-1][2] == {
            "id": "ftjob-1",
            "base_model": "base",
            "train": "t",
            "validation": None,
            "holdout": "h",
            "hyperparameters": {"n_epochs": 2},
        }
        events = await trainer.events("ftjob-1", 7)
        assert seen[-1][1] == "/api/train/jobs/ftjob-1/events?after=7"
        assert events[0].seq == 8 and events[0].type == "step" and events[0].data["loss"] == 1.5
        assert (await trainer.cancel("ftjob-1")).id == "ftjob-1"
        made = await trainer.put_adapter("ft:base:acme:x", "ftjob-1", 2, "ab" * 32)
        assert made.revision == "r2" and made.previous == "r1"
        assert seen[-1][:2] == ("PUT", "/api/adapters/ft:base:acme:x")
        assert seen[-1][2] == {"job": "ftjob-1", "step": 2, "expect_digest": "ab" * 32}
        await trainer.put_adapter(
            "ft:base:acme:x", "ftjob-1", 4, "cd" * 32, AdapterSource("ftjob-1", 2, "ab" * 32)
        )
        assert seen[-1][2] == {
            "job": "ftjob-1",
            "step": 4,
            "expect_digest": "cd" * 32,
            "previous": {"job": "ftjob-1", "step": 2, "expect_digest": "ab" * 32},
        }
        with pytest.raises(TrainerError) as caught:
            await trainer.put_adapter("m", "ftjob-1", 2, "bad")
        assert caught.value.status == 400 and caught.value.code == "digest_mismatch"
        assert not caught.value.unreachable
        assert (await trainer.rollback_adapter("m")).revision == "r2"
        with pytest.raises(TrainerError) as caught:
            await trainer.events("x", 0)
        assert caught.value.status == 404 and "No training job" in caught.value.message
        assert await trainer.base_models() == ["base"]
        streamed = b"".join([c async for c in trainer.stream_chat({"model": "m", "stream": True})])
        assert streamed == b'data: {"choices": []}\n\ndata: [DONE]\n\n'
        with pytest.raises(TrainerError) as caught:
            async for _ in trainer.stream_chat({"model": "nope", "stream": True}):
                pass
        assert caught.value.status == 404 and caught.value.code == "model_not_found"
    finally:
        await trainer.close()


async def test_no_runtime_or_no_answer_is_unreachable() -> None:
    trainer = PsionicTrainer(lambda: None)
    with pytest.raises(TrainerError, match="not running") as caught:
        await trainer.base_models()
    assert caught.value.unreachable
    closed = PsionicTrainer(lambda: "http://127.0.0.1:9")
    try:
        with pytest.raises(TrainerError, match="not reachable") as caught:
            await closed.get_job("x")
        assert caught.value.unreachable
    finally:
        await closed.close()


async def test_an_export_comes_as_psionics_tar(
    psionic: tuple[str, list[tuple[str, str, Any]]],
) -> None:
    url, seen = psionic
    trainer = PsionicTrainer(lambda: url)
    try:
        assert await trainer.adapter_archive("ftjob-1", 4) == b"TAR4"
        assert seen[-1][:2] == ("GET", "/api/train/jobs/ftjob-1/exports/4")
        with pytest.raises(TrainerError) as caught:
            await trainer.adapter_archive("ftjob-1", 9)
        assert caught.value.status == 404 and caught.value.code == "checkpoint_not_found"
        with pytest.raises(TrainerError, match="not application/x-tar"):
            await trainer.adapter_archive("ftjob-1", 7)
    finally:
        await trainer.close()
