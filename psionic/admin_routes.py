"""Management and arbiter routes, under ``/api`` (documented in docs/psionic.md).

- ``GET /api/status``; ``POST /api/models/{id}/warm``; ``POST /api/models/{id}/unload``
- ``POST /api/swap``: make one chat model the loaded one (others unloaded)
- ``POST|GET|DELETE /api/swap/lock``: the reservation lock (423 while someone else holds it)
- ``GET|POST|DELETE /api/schedule``: the declared-automation registry

Warm, unload and swap all change what occupies the device, so all three honour the lock:
with the lock held they need its token in ``X-Swap-Token``.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from psionic.arbiter import BadToken, LockHeld, LockState
from psionic.errors import ApiError, invalid
from psionic.registry import ModelKind
from psionic.runtime import Runtime, ServedModel
from psionic.worker import JobFailed, QueueFull

TOKEN_HEADER = "X-Swap-Token"


def _locked(state: LockState) -> ApiError:
    return ApiError(
        423,
        f"The swap lock is held by {state.holder!r} until {state.expires_at:.0f}.",
        type_="locked",
        code="swap_locked",
    )


def _check_lock(runtime: Runtime, request: web.Request) -> None:
    try:
        runtime.lock.check(request.headers.get(TOKEN_HEADER))
    except LockHeld as exc:
        raise _locked(exc.state) from exc


def _served(runtime: Runtime, model_id: str) -> ServedModel:
    served = runtime.models.get(model_id)
    if served is None:
        raise ApiError(404, f"No model {model_id!r}.", code="model_not_found")
    return served


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except json.JSONDecodeError as exc:
        raise ApiError(400, "The body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "The body must be a JSON object.")
    return body


async def _run(served: ServedModel, unload: bool) -> None:
    worker = served.worker
    try:
        handle = worker.submit_unload() if unload else worker.submit(lambda m, c: iter(()))
    except QueueFull as exc:
        raise ApiError(
            429,
            "The model's queue is full.",
            type_="rate_limit_error",
            headers={"Retry-After": "1"},
        ) from exc
    try:
        await handle.result()
    except JobFailed as exc:
        raise ApiError(
            503, f"Loading {served.spec.id!r} failed; see status.last_error.", type_="server_error"
        ) from exc


def add_routes(app: web.Application, key: web.AppKey[Runtime]) -> None:
    async def status(request: web.Request) -> web.Response:
        return web.json_response(request.app[key].status())

    async def warm(request: web.Request) -> web.Response:
        runtime = request.app[key]
        served = _served(runtime, request.match_info["model"])
        _check_lock(runtime, request)
        await _run(served, unload=False)
        return web.json_response({"model": served.status()})

    async def unload(request: web.Request) -> web.Response:
        runtime = request.app[key]
        served = _served(runtime, request.match_info["model"])
        _check_lock(runtime, request)
        await _run(served, unload=True)
        return web.json_response({"model": served.status()})

    async def swap(request: web.Request) -> web.Response:
        runtime = request.app[key]
        body = await _body(request)
        target = body.get("model")
        if not isinstance(target, str):
            raise invalid("model", "'model' is required.")
        served = _served(runtime, target)
        if served.spec.kind is not ModelKind.CHAT:
            raise invalid("model", "Only chat models are swapped.")
        _check_lock(runtime, request)  # one read of the lock state
        previous = [
            m.spec.id
            for m in runtime.of_kind(ModelKind.CHAT)
            if m is not served and m.worker.state != "cold"
        ]
        error: str | None = None
        async with runtime.swap_mutex:
            try:
                for other in runtime.of_kind(ModelKind.CHAT):
                    if other is not served:
                        await _run(other, unload=True)
                await _run(served, unload=False)
            except ApiError as exc:
                error = exc.message
        event = "swap_failed" if error else "swap_complete"
        runtime.last_swap = {
            "event": event,
            "model": target,
            "previous": previous,
            "error": error,
            "at": runtime.clock(),
        }
        # The webhook goes out after the swap, outside the swap mutex.
        delivered = await runtime.webhook.send(event, model=target, previous=previous, error=error)
        status_code = 200 if error is None else 503
        return web.json_response(
            {**runtime.last_swap, "webhook_delivered": delivered, "model_status": served.status()},
            status=status_code,
        )

    async def lock_get(request: web.Request) -> web.Response:
        state = request.app[key].lock.current()
        return web.json_response({"locked": state is not None, **(state.public() if state else {})})

    async def lock_post(request: web.Request) -> web.Response:
        runtime = request.app[key]
        body = await _body(request)
        holder = body.get("holder")
        ttl = body.get("ttl_s", 300)
        if not isinstance(holder, str) or not holder:
            raise invalid("holder", "'holder' is required.")
        if isinstance(ttl, bool) or not isinstance(ttl, int | float):
            raise invalid("ttl_s", "'ttl_s' must be a number of seconds.")
        try:
            state = runtime.lock.acquire(holder, float(ttl), request.headers.get(TOKEN_HEADER))
        except LockHeld as exc:
            raise _locked(exc.state) from exc
        except ValueError as exc:
            raise invalid("ttl_s", str(exc)) from exc
        return web.json_response(
            {"locked": True, "token": state.token, **state.public()}, status=201
        )

    async def lock_delete(request: web.Request) -> web.Response:
        runtime = request.app[key]
        force = request.query.get("force", "").lower() in ("1", "true", "yes")
        try:
            released = runtime.lock.release(request.headers.get(TOKEN_HEADER), force=force)
        except BadToken as exc:
            raise ApiError(
                403, "Wrong or missing swap token; use ?force=true to override.", code="bad_token"
            ) from exc
        return web.json_response({"released": released, "forced": force and released})

    async def schedule_get(request: web.Request) -> web.Response:
        return web.json_response({"entries": request.app[key].schedule.list()})

    async def schedule_post(request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            entry = request.app[key].schedule.add(body)
        except ValueError as exc:
            raise invalid(None, str(exc)) from exc
        return web.json_response({"entry": entry.__dict__}, status=201)

    async def schedule_delete(request: web.Request) -> web.Response:
        entry_id = request.match_info.get("entry") or request.query.get("id")
        if not entry_id:
            raise invalid("id", "Give the entry id: DELETE /api/schedule/{id} or ?id=.")
        if not request.app[key].schedule.remove(entry_id):
            raise ApiError(404, f"No schedule entry {entry_id!r}.", code="not_found")
        return web.json_response({"removed": entry_id})

    r = app.router
    r.add_get("/api/status", status)
    r.add_post("/api/models/{model}/warm", warm)
    r.add_post("/api/models/{model}/unload", unload)
    r.add_post("/api/swap", swap)
    r.add_get("/api/swap/lock", lock_get)
    r.add_post("/api/swap/lock", lock_post)
    r.add_delete("/api/swap/lock", lock_delete)
    r.add_get("/api/schedule", schedule_get)
    r.add_post("/api/schedule", schedule_post)
    r.add_delete("/api/schedule", schedule_delete)
    r.add_delete("/api/schedule/{entry}", schedule_delete)
