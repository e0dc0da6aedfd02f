"""The tenant API: OpenAI's fine-tuning API on a listener of its own, for tenants' keys, so
the official `openai` client works unchanged (docs/finetune.md).

    POST/GET /v1/files, GET/DELETE /v1/files/{id}, GET …/content   purpose fine-tune only
    POST/GET /v1/fine_tuning/jobs, GET /v1/fine_tuning/jobs/{id}
    POST /v1/fine_tuning/jobs/{id}/cancel, GET …/events, GET …/checkpoints
    POST /v1/fine_tuning/jobs/{id}/promote                    ours: {"step": n} or {}
    GET /v1/fine_tuning/jobs/{id}/adapter?step=               ours: the PEFT export, a tar
    GET /v1/models, POST /v1/chat/completions                 the bases and the tenant's own

Every call needs `Authorization: Bearer <the tenant's key>`. A tenant sees only its own files,
jobs and models: another tenant's are 404, as if they did not exist. A job sold over NIP-90
(finetune/nip90.py) has a fetch key of its own (`ftk-…`, in its result): it opens that job's
adapter route, once the job is paid, and nothing else. Every error is OpenAI's
shape, `{"error": {"message", "type", "param", "code"}}`; an internal one says only its
correlation id (the traceback goes to the daemon's log).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import BodyPartReader, web

from autopilotd.errors import AuthFailed, AutopilotError, Conflict, NotFound, NotReady, UserError
from autopilotd.finetune.objects import (
    checkpoint_object,
    event_object,
    file_object,
    model_object,
    promoted_object,
)
from autopilotd.finetune.service import FETCH_KEY_PREFIX, FinetuneService
from autopilotd.finetune.tenancy import QuotaExceeded
from autopilotd.store.finetune_records import FtJob, Tenant

logger = logging.getLogger(__name__)

SERVICE = web.AppKey("finetune", FinetuneService)
TENANT = web.RequestKey("finetune.tenant", Tenant)
FETCHED = web.RequestKey("finetune.fetched", FtJob)
ADAPTER = "adapter"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CHUNK = 64 << 10


def _status(exc: AutopilotError) -> tuple[int, str]:
    if isinstance(exc, AuthFailed):
        return 401, "invalid_request_error"
    if isinstance(exc, NotFound):
        return 404, "invalid_request_error"
    if isinstance(exc, QuotaExceeded):
        return 429, "insufficient_quota"
    if isinstance(exc, Conflict):
        return 409, "invalid_request_error"
    if isinstance(exc, NotReady):
        return 503, "server_error"
    return 400, "invalid_request_error"


def error_response(
    status: int,
    message: str,
    kind: str,
    code: str | None = None,
    param: str | None = None,
    **extra: Any,
) -> web.Response:
    body = {"message": message, "type": kind, "param": param, "code": code} | extra
    return web.json_response({"error": body}, status=status)


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The tenant's key, then the handler; every failure in OpenAI's error shape."""
    try:
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthFailed("You didn't provide an API key (Authorization: Bearer <key>)")
        key = key.strip()
        service = request.app[SERVICE]
        if key.startswith(FETCH_KEY_PREFIX) and request.match_info.route.name == ADAPTER:
            job = await service.authorize_fetch(request.match_info["id"], key)
            request[FETCHED] = job  # that one job's adapter, and nothing else
        else:
            request[TENANT] = await service.tenancy.authenticate(key)
        return await handler(request)
    except AutopilotError as exc:
        status, kind = _status(exc)
        data = dict(exc.data)
        code = data.pop("code", "invalid_api_key" if status == 401 else None)
        param = data.pop("param", None)
        return error_response(status, exc.message, kind, code, param, **data)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return error_response(exc.status, exc.reason, "invalid_request_error")
        raise
    except asyncio.CancelledError:
        raise
    except Exception:
        correlation = secrets.token_hex(6)
        logger.exception("tenant API %s %s (%s)", request.method, request.path, correlation)
        return error_response(500, f"internal error (correlation id {correlation})", "server_error")


def _tenant(request: web.Request) -> Tenant:
    return request[TENANT]


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise UserError("the body is not valid JSON", data={"code": "invalid_json"}) from None
    if not isinstance(body, dict):
        raise UserError("the body must be a JSON object", data={"code": "invalid_json"})
    return body


def _limit(request: web.Request, default: int = 20) -> int:
    raw = request.query.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise UserError("limit must be 1 to 100", data={"code": "invalid_limit", "param": "limit"})
    return int(raw)


def _page(items: list[dict[str, Any]], has_more: bool) -> web.Response:
    return web.json_response({"object": "list", "data": items, "has_more": has_more})


def _text(value: Any, name: str, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise UserError(f"{name} must be a string", data={"code": "invalid_type", "param": name})
    return value


# -- files -------------------------------------------------------------------------------


async def upload_file(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    cap = service.tenancy.file_max_bytes
    if not request.content_type.startswith("multipart/"):
        raise UserError("upload the file as multipart/form-data", data={"param": "file"})
    reader = await request.multipart()
    purpose: str | None = None
    filename = "file.jsonl"
    data: bytes | None = None
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "purpose":
            purpose = (await part.read(decode=True)).decode(errors="replace")[:64]
        elif part.name == "file":
            filename = (part.filename or filename)[:255]
            buf = bytearray()
            while chunk := await part.read_chunk(CHUNK):
                buf += chunk
                if len(buf) > cap:
                    raise UserError(
                        f"the file is above the limit of {cap} bytes",
                        data={"code": "file_too_large", "param": "file"},
                    )
            data = bytes(buf)
    if data is None:
        raise UserError("no file was uploaded (field 'file')", data={"param": "file"})
    if purpose is None:
        raise UserError("purpose is required", data={"param": "purpose"})
    found = await service.tenancy.upload(_tenant(request), filename, purpose, data)
    return web.json_response(file_object(found))


async def list_files(request: web.Request) -> web.Response:
    files = await request.app[SERVICE].records.files(_tenant(request).id)
    return _page([file_object(f) for f in files], False)


async def get_file(request: web.Request) -> web.Response:
    found = await request.app[SERVICE].tenancy.file(_tenant(request), request.match_info["id"])
    return web.json_response(file_object(found))


async def file_content(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    found = await service.tenancy.file(_tenant(request), request.match_info["id"])
    text = await service.records.file_content(found.id)
    return web.Response(text=text, content_type="application/jsonl")


async def delete_file(request: web.Request) -> web.Response:
    found = await request.app[SERVICE].tenancy.delete_file(
        _tenant(request), request.match_info["id"]
    )
    return web.json_response({"id": found.id, "object": "file", "deleted": True})


# -- jobs --------------------------------------------------------------------------------


async def create_job(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    body = await _json(request)
    hyper = body.get("hyperparameters") or {}
    method = body.get("method")
    if isinstance(method, dict):  # the newer spelling: method.supervised.hyperparameters
        inner = (method.get(str(method.get("type", "supervised"))) or {}).get("hyperparameters")
        hyper = {**(inner or {}), **hyper}
    if not isinstance(hyper, dict):
        raise UserError("hyperparameters must be an object", data={"param": "hyperparameters"})
    extra = body.get("psionic_hyperparameters") or {}
    if not isinstance(extra, dict):
        raise UserError(
            "psionic_hyperparameters must be an object",
            data={"param": "psionic_hyperparameters"},
        )
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise UserError("seed must be an integer", data={"param": "seed"})
    job = await service.create_job(
        _tenant(request),
        model=_text(body.get("model"), "model", required=True) or "",
        training_file=_text(body.get("training_file"), "training_file", required=True) or "",
        validation_file=_text(body.get("validation_file"), "validation_file"),
        holdout_file=_text(body.get("holdout_file"), "holdout_file"),
        hyperparameters={**hyper, **extra},
        suffix=_text(body.get("suffix"), "suffix"),
        seed=seed,
    )
    return web.json_response(await service.job_json(job))


async def list_jobs(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    limit = _limit(request)
    after = request.query.get("after")
    if after is not None:
        await service.tenancy.job(_tenant(request), after)
    jobs = await service.records.jobs(_tenant(request).id, limit=limit + 1, after=after)
    return _page([await service.job_json(j) for j in jobs[:limit]], len(jobs) > limit)


async def get_job(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    job = await service.tenancy.job(_tenant(request), request.match_info["id"])
    return web.json_response(await service.job_json(job))


async def cancel_job(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    job = await service.cancel(_tenant(request), request.match_info["id"])
    return web.json_response(await service.job_json(job))


def _after(request: web.Request, prefix: str) -> int | None:
    """The `after` cursor: an id such as ftevent-12 (the number after `prefix`)."""
    after = request.query.get("after")
    if after is None:
        return None
    number = after.removeprefix(prefix)
    if not number.isdigit():
        raise UserError(
            f"after must be an id from this list, not {after!r}", data={"param": "after"}
        )
    return int(number)


async def job_events(request: web.Request) -> web.Response:
    """Newest first, as OpenAI lists them; `after` an event id: the ones older than it."""
    service = request.app[SERVICE]
    job = await service.tenancy.job(_tenant(request), request.match_info["id"])
    limit = _limit(request)
    events = await service.records.events_newest_first(
        job.id, before=_after(request, "ftevent-"), limit=limit + 1
    )
    return _page([event_object(e) for e in events[:limit]], len(events) > limit)


async def job_checkpoints(request: web.Request) -> web.Response:
    """Newest first; `after` a checkpoint id: the ones of earlier steps."""
    service = request.app[SERVICE]
    job = await service.tenancy.job(_tenant(request), request.match_info["id"])
    verdicts = {v.step: v for v in await service.promotion.verdicts(job)}
    before = _after(request, f"ftckpt-{job.id.removeprefix('ftjob-')}-")
    checkpoints = [
        c
        for c in reversed(await service.records.checkpoints(job.id))
        if before is None or c.step < before
    ]
    limit = _limit(request, 10)
    shown = [checkpoint_object(job, c, verdicts.get(c.step)) for c in checkpoints[:limit]]
    return _page(shown, len(checkpoints) > limit)


async def job_adapter(request: web.Request) -> web.Response:
    """The job's adapter (`step`, default the chosen checkpoint) as an uncompressed tar of its
    PEFT export; for the owning tenant's key, or the job's own fetch key (a NIP-90 job)."""
    service = request.app[SERVICE]
    raw = request.query.get("step")
    if raw is not None and not raw.isdigit():
        raise UserError("step must be a whole number", data={"param": "step"})
    job = request.get(FETCHED)
    if job is None:
        job = await service.tenancy.job(_tenant(request), request.match_info["id"])
    step, archive = await service.adapter_archive(job, None if raw is None else int(raw))
    return web.Response(
        body=archive,
        content_type="application/x-tar",
        headers={
            "Content-Disposition": f'attachment; filename="{job.id}-step-{step}.tar"',
            "X-Adapter-Step": str(step),
        },
    )


async def promote_job(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    body = await _json(request) if request.can_read_body else {}
    step = body.get("step")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
        raise UserError("step must be an integer", data={"param": "step"})
    job_id = request.match_info["id"]
    await service.promote(_tenant(request), job_id, step)
    job = await service.tenancy.job(_tenant(request), job_id)
    return web.json_response(await service.job_json(job))


# -- models and chat ---------------------------------------------------------------------


async def list_models(request: web.Request) -> web.Response:
    bases, own = await request.app[SERVICE].serving.models(_tenant(request))
    data = [model_object(b, "psionic") for b in bases] + [promoted_object(m) for m in own]
    return web.json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    bases, own = await request.app[SERVICE].serving.models(_tenant(request))
    wanted = request.match_info["id"]
    if wanted in bases:
        return web.json_response(model_object(wanted, "psionic"))
    for m in own:
        if m.id == wanted:
            return web.json_response(promoted_object(m))
    raise NotFound(f"The model {wanted!r} does not exist", data={"code": "model_not_found"})


async def chat_completions(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    body = await _json(request)
    if not body.get("stream"):
        return web.json_response(await service.serving.chat(_tenant(request), body))
    chunks = await service.serving.stream_chat(_tenant(request), body)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    try:
        async for chunk in chunks:
            await response.write(chunk)
    except AutopilotError as exc:  # after the first event: the stream ends with an error event
        error = {"message": exc.message, "type": "server_error", "param": None, "code": None}
        await response.write(f"data: {json.dumps({'error': error})}\n\n".encode())
    finally:
        await chunks.aclose()
    await response.write_eof()
    return response


def build_api(service: FinetuneService) -> web.Application:
    app = web.Application(middlewares=[openai_errors], client_max_size=4 << 20)
    app[SERVICE] = service
    r = app.router
    r.add_post("/v1/files", upload_file)
    r.add_get("/v1/files", list_files)
    r.add_get("/v1/files/{id}", get_file)
    r.add_get("/v1/files/{id}/content", file_content)
    r.add_delete("/v1/files/{id}", delete_file)
    r.add_post("/v1/fine_tuning/jobs", create_job)
    r.add_get("/v1/fine_tuning/jobs", list_jobs)
    r.add_get("/v1/fine_tuning/jobs/{id}", get_job)
    r.add_post("/v1/fine_tuning/jobs/{id}/cancel", cancel_job)
    r.add_get("/v1/fine_tuning/jobs/{id}/events", job_events)
    r.add_get("/v1/fine_tuning/jobs/{id}/checkpoints", job_checkpoints)
    r.add_post("/v1/fine_tuning/jobs/{id}/promote", promote_job)
    r.add_get("/v1/fine_tuning/jobs/{id}/adapter", job_adapter, name=ADAPTER)
    r.add_get("/v1/models", list_models)
    r.add_get("/v1/models/{id:.+}", get_model)
    r.add_post("/v1/chat/completions", chat_completions)
    return app


class TenantApi:
    """Serves the tenant API on `host:port` (0: a free port) until cancelled; the service's
    snapshot section shows the address once it is bound."""

    name = "finetune_api"

    def __init__(self, service: FinetuneService, host: str, port: int) -> None:
        self._service = service
        self._host = host
        self._port = port

    async def run(self, ready: Callable[[], None]) -> None:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        sock.listen(128)
        sock.setblocking(False)
        runner = web.AppRunner(
            build_api(self._service), handle_signals=False, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
            host = f"[{self._host}]" if ":" in self._host else self._host
            url = f"http://{host}:{sock.getsockname()[1]}/v1"
            self._service.api_listening(url)
            logger.info("fine-tuning tenant API listening on %s", url)
            ready()
            await asyncio.Event().wait()
        finally:
            self._service.api_listening(None)
            await asyncio.shield(runner.cleanup())
            sock.close()
