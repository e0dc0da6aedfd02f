"""The aiohttp application: OpenAI-compatible routes, management routes, the arbiter.

``create_app`` wires a ``Runtime`` into an app whose ``cleanup_ctx`` starts the model
worker threads (and warms the models when asked) and stops them on shutdown. ``serve``
binds, announces the URL, and runs until cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from psionic import adapters, admin_routes, openai_routes, responses_routes, train_routes
from psionic.errors import ApiError, Handler, error_middleware
from psionic.runtime import Runtime
from psionic.train_jobs import Command, TrainJobs, default_train_dir, trainer_command
from psionic.train_routes import TRAIN_JOBS
from psionic.worker import QueueFull

logger = logging.getLogger(__name__)

RUNTIME = web.AppKey("runtime", Runtime)
_OPEN_PATHS = frozenset({"/health"})


def _auth_middleware(api_key: str) -> Callable[[web.Request, Handler], object]:
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in _OPEN_PATHS:
            header = request.headers.get("Authorization", "")
            supplied = header.removeprefix("Bearer ").strip()
            if not hmac.compare_digest(supplied.encode(), api_key.encode()):
                raise ApiError(401, "Invalid API key.", code="invalid_api_key")
        return await handler(request)

    return auth


async def health(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    status = runtime.status()
    return web.json_response(
        {
            "status": "ok",
            "ready": status["ready"],
            "models": {m["id"]: m["state"] for m in status["models"]},
        }
    )


def create_app(
    runtime: Runtime, warm: bool = True, trainer: Command = trainer_command
) -> web.Application:
    """An app serving ``runtime``; ``warm`` loads every model in the background at start.
    ``trainer`` is the command that trains a job directory (tests pass a fake)."""
    middlewares: list[object] = [error_middleware]
    if runtime.config.api_key:
        middlewares.append(_auth_middleware(runtime.config.api_key))
    app = web.Application(middlewares=middlewares)  # type: ignore[arg-type]
    app[RUNTIME] = runtime

    async def workers(app: web.Application) -> AsyncIterator[None]:
        runtime.start()
        if warm:
            for model in runtime.models.values():
                with contextlib.suppress(QueueFull):
                    model.worker.submit(lambda m, cancelled: iter(()))
        yield
        await asyncio.to_thread(runtime.stop)

    config = runtime.config
    train_jobs = TrainJobs(
        config.train_dir or default_train_dir(), runtime.lock, trainer, cache_dir=config.cache_dir
    )
    app.cleanup_ctx.append(workers)
    app.router.add_get("/health", health)
    openai_routes.add_routes(app, RUNTIME)
    responses_routes.add_routes(app, RUNTIME)
    admin_routes.add_routes(app, RUNTIME)
    train_routes.add_routes(app, RUNTIME, train_jobs)
    adapters.add_routes(app, RUNTIME, train_jobs)
    return app


async def serve(
    app: web.Application, host: str, port: int, announce: Callable[[str], None]
) -> None:
    """Bind, announce the URL (after the bind succeeded), and serve until cancelled.

    The training scheduler (psionic/train_jobs.py) runs alongside; cancelling stops it
    first, and with it the running trainer, whose job resumes at the next start."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(app[TRAIN_JOBS].run(), name="psionic-train-jobs")
            site = web.TCPSite(runner, host, port)
            await site.start()
            sockets = runner.addresses
            bound_port = sockets[0][1] if sockets else port
            announce(f"http://{host}:{bound_port}")
            await asyncio.Event().wait()
    finally:
        await runner.cleanup()
