"""The control-plane service: one loopback aiohttp server for /rpc and the web UI.

The daemon binds the socket itself before anything else, so the port is known when the app is
built (the Host allow-list needs it) and the manifest is written only after the bind.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from aiohttp import web

from autopilotd.rpc.jsonrpc import RpcDispatcher, http_status
from autopilotd.rpc.security import allowed_hosts, bearer_token, security_middleware
from autopilotd.runtime.context import Runtime
from autopilotd.web.views import add_web_routes

logger = logging.getLogger(__name__)


def bind_loopback(host: str, port: int) -> socket.socket:
    """Bind the control-plane socket (loopback only) and return it, listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def build_app(rt: Runtime, port: int) -> web.Application:
    cfg = rt.config
    auth = rt.web_auth
    auth.bind(port, f"http://{url_host(cfg.listen_host)}:{port}/")
    app = web.Application(
        middlewares=[security_middleware(allowed_hosts(port))],
        client_max_size=cfg.max_body_bytes,
    )
    dispatcher = RpcDispatcher(
        rt.registry, call_timeout_s=cfg.call_timeout_s, max_batch=cfg.max_batch
    )

    async def handle_rpc(request: web.Request) -> web.Response:
        token = bearer_token(request)
        scope = rt.tokens.scope_of(token) if token else None
        if scope is None:
            return web.json_response(
                {"error": "missing or invalid token (Authorization: Bearer …)"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if request.content_type != "application/json":
            return web.json_response({"error": "Content-Type must be application/json"}, status=415)
        try:
            body = await request.text()
        except UnicodeDecodeError:
            return web.json_response({"error": "body is not UTF-8"}, status=400)
        reply = await dispatcher.dispatch(body, scope)
        if reply is None:
            return web.Response(status=204)
        return web.json_response(text=reply.text, status=http_status(reply.codes))

    app.router.add_post("/rpc", handle_rpc)
    add_web_routes(app, rt, auth)
    return app


class ControlPlane:
    """Serves the app on an already-bound socket until cancelled."""

    name = "control_plane"

    def __init__(self, rt: Runtime, sock: socket.socket) -> None:
        self._rt = rt
        self._sock = sock
        self.port: int = sock.getsockname()[1]
        host = url_host(rt.config.listen_host)
        self.rpc_url = f"http://{host}:{self.port}/rpc"
        self.web_url = f"http://{host}:{self.port}/"

    async def run(self, ready: Callable[[], None]) -> None:
        app = build_app(self._rt, self.port)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.SockSite(runner, self._sock)
            await site.start()
            logger.info("control plane listening on %s", self.web_url)
            logger.info("web UI: %s (log in with the link from `autopilotctl web`)", self.web_url)
            ready()
            await asyncio.Event().wait()
        finally:
            await asyncio.shield(runner.cleanup())
            self._sock.close()
