"""The control plane: one loopback aiohttp server for JSON-RPC (`/rpc`) and the web UI.

The daemon binds the socket itself before anything else, so the port is known when the app is
built (the Host allow-list needs it) and the manifest is written only after the bind. Every
response goes through the browser guard (guard.py): Host allow-list, exact Origin, CSP.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from aiohttp import web

from autopilotd.guard import allowed_hosts, security_middleware
from autopilotd.rpc.server import add_rpc_route
from autopilotd.runtime.context import Runtime
from autopilotd.web.auth import WebAuth
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


def build_app(rt: Runtime, auth: WebAuth, port: int) -> web.Application:
    cfg = rt.config
    auth.bind(port, f"http://{url_host(cfg.listen_host)}:{port}/")
    app = web.Application(
        middlewares=[security_middleware(allowed_hosts(port))],
        client_max_size=cfg.max_body_bytes,
    )
    add_rpc_route(app, rt)
    add_web_routes(app, rt, auth)
    return app


class ControlPlane:
    """Serves the app on an already-bound socket until cancelled."""

    name = "control_plane"

    def __init__(self, rt: Runtime, auth: WebAuth, sock: socket.socket) -> None:
        self._rt = rt
        self._auth = auth
        self._sock = sock
        self.port: int = sock.getsockname()[1]
        host = url_host(rt.config.listen_host)
        self.rpc_url = f"http://{host}:{self.port}/rpc"
        self.web_url = f"http://{host}:{self.port}/"

    async def run(self, ready: Callable[[], None]) -> None:
        app = build_app(self._rt, self._auth, self.port)
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
