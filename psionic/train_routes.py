"""Training over HTTP: ``/api/train/validate`` and ``/api/train/jobs`` (psionic/train_jobs.py).

- ``POST /api/train/validate``: a JSONL dataset checked with the base model's tokenizer
- ``POST /api/train/jobs``: create a job (202), or the existing one for its id (200)
- ``GET /api/train/jobs``, ``GET /api/train/jobs/{id}``: jobs as read from their directories
- ``GET /api/train/jobs/{id}/events?after=SEQ``: the trainer's progress lines after SEQ
- ``POST /api/train/jobs/{id}/cancel``: SIGTERM to the trainer, or cancel a queued job
- ``GET /api/train/jobs/{id}/exports/{step}``: the job's PEFT export at that step, as a tar
"""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

from psionic.checkpoints import step_name
from psionic.errors import ApiError, invalid
from psionic.finetune_data import validate_jsonl
from psionic.openai_routes import _check_fields, _json_body, _submit
from psionic.registry import ModelKind, default_models
from psionic.runtime import Runtime, ServedModel
from psionic.train_jobs import JobError, JobView, TrainJobs
from psionic.worker import JobFailed

TRAIN_JOBS = web.AppKey("train_jobs", TrainJobs)
DEFAULT_MAX_SEQ_LEN = 512


def base_model(runtime: Runtime, name: Any, param: str = "base_model") -> ServedModel:
    """A served chat model that is not itself an adapter: what can be trained on."""
    if not isinstance(name, str) or not name:
        raise invalid(param, f"'{param}' is required.")
    served = runtime.models.get(name)
    if served is None or served.spec.kind is not ModelKind.CHAT or served.parent is not None:
        raise ApiError(
            404,
            f"The base model {name!r} is not a chat model served here.",
            param=param,
            code="model_not_found",
        )
    return served


def trainer_base(served: ServedModel) -> str:
    """What job.json names as the base: a packaged model's id, which ``psionic train``
    finds itself, or else the path the served model was loaded from."""
    for spec in default_models():
        if spec.id == served.spec.id and spec.path == served.spec.path:
            return spec.id
    return str(served.spec.path)


def _not_found(job_id: str) -> ApiError:
    return ApiError(404, f"No training job {job_id!r}.", param="id", code="job_not_found")


def _job(jobs: TrainJobs, job_id: str) -> JobView:
    view = jobs.get(job_id)
    if view is None:
        raise _not_found(job_id)
    return view


def export_archive(export: Path) -> bytes:
    """An export directory's files as an uncompressed tar, by their names alone (what the
    daemon hands a buyer: adapter_model.safetensors, adapter_config.json,
    psionic_adapter.json)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for path in sorted(export.iterdir()):
            if path.is_file():
                tar.add(path, arcname=path.name, recursive=False)
    return out.getvalue()


def add_routes(app: web.Application, key: web.AppKey[Runtime], jobs: TrainJobs) -> None:
    app[TRAIN_JOBS] = jobs

    async def validate(request: web.Request) -> web.Response:
        body = await _json_body(request)
        _check_fields(body, {"base_model", "jsonl", "max_seq_len"})
        served = base_model(request.app[key], body.get("base_model"))
        text = body.get("jsonl")
        if not isinstance(text, str):
            raise invalid("jsonl", "'jsonl' must be the dataset as JSONL text.")
        max_seq_len = body.get("max_seq_len", DEFAULT_MAX_SEQ_LEN)
        if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 1:
            raise invalid("max_seq_len", "'max_seq_len' must be a positive integer.")

        def job(engine: Any, cancelled: Any) -> Iterator[dict[str, Any]]:
            # On the model's worker: its tokenizer, and no tokenising on the event loop.
            yield validate_jsonl(text, engine.tokenizer, max_seq_len).to_json()

        handle = _submit(served, job)
        try:
            results = await handle.result()
        except JobFailed as exc:
            raise ApiError(503, "Validation could not run.", type_="server_error") from exc
        finally:
            handle.cancel()
        return web.json_response(results[0])

    async def create(request: web.Request) -> web.Response:
        body = await _json_body(request)
        _check_fields(
            body, {"id", "base_model", "train", "validation", "holdout", "hyperparameters"}
        )
        existing = jobs.get(body["id"]) if isinstance(body.get("id"), str) else None
        if existing is None:
            served = base_model(request.app[key], body.get("base_model"))
            body = {**body, "base_model": trainer_base(served)}
        try:
            view, new = jobs.create(body)
        except JobError as exc:
            raise invalid(exc.param, str(exc)) from exc
        return web.json_response(view.wire(), status=202 if new else 200)

    async def list_jobs(request: web.Request) -> web.Response:
        return web.json_response({"jobs": [v.wire() for v in jobs.jobs()]})

    async def get_job(request: web.Request) -> web.Response:
        return web.json_response(_job(jobs, request.match_info["id"]).wire())

    async def events(request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        raw = request.query.get("after", "0")
        try:
            after = int(raw)
        except ValueError as exc:
            raise invalid("after", "'after' must be an integer seq.") from exc
        found = jobs.events(job_id, after)
        if found is None:
            raise _not_found(job_id)
        lines, last = found
        return web.json_response({"events": lines, "last_seq": last})

    async def cancel(request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        view = jobs.cancel(job_id)
        if view is None:
            raise _not_found(job_id)
        return web.json_response(view.wire())

    async def export(request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        job_dir = jobs.job_dir(job_id)
        if job_dir is None:
            raise _not_found(job_id)
        try:
            step = int(request.match_info["step"])
        except ValueError as exc:
            raise invalid("step", "'step' must be an integer.") from exc
        path = job_dir / "exports" / step_name(step)
        if step < 0 or not path.is_dir():
            raise ApiError(
                404, f"Job {job_id!r} has no export at step {step}.", param="step", code="not_found"
            )
        body = await asyncio.to_thread(export_archive, path)
        return web.Response(body=body, content_type="application/x-tar")

    r = app.router
    r.add_post("/api/train/validate", validate)
    r.add_post("/api/train/jobs", create)
    r.add_get("/api/train/jobs", list_jobs)
    r.add_get("/api/train/jobs/{id}", get_job)
    r.add_get("/api/train/jobs/{id}/events", events)
    r.add_post("/api/train/jobs/{id}/cancel", cancel)
    r.add_get("/api/train/jobs/{id}/exports/{step}", export)
