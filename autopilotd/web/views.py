"""Web routes. Every pane renders the Snapshot; every page has a JSON twin (Accept: JSON).

    GET  /                 the whole page (every pane), or the snapshot as JSON
    GET  /pane/<name>      one pane's block alone (htmx), or its data as JSON
    POST /do/<command>     run a registry command, answer the re-rendered pane (?pane=<name>)
    GET  /sandbox/<job>/download?path=…   a sandbox job's workspace file, as an attachment
    GET  /events/stream    server-sent "something changed" signals for the open page
    GET  /chat/<thread>/stream   a chat thread's events, server-sent (Last-Event-ID, ?after=)
    GET  /login?token=…    spend a one-time login token, set the session cookie, go to /
    POST /logout           end the session

Reading needs the session cookie; every POST also needs the session's CSRF token in the
`X-CSRF-Token` header. Host and Origin are checked before any of this (guard.py).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import secrets
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from autopilotd.errors import AutopilotError, NotFound
from autopilotd.runtime.context import Runtime
from autopilotd.web.auth import CSRF_HEADER, WebAuth, WebSession
from autopilotd.web.catalog import BY_NAME, DEFAULT_PANE, GROUPS, HUD, PANES
from autopilotd.web.chat_stream import thread_stream
from autopilotd.web.panes import Action, Pane, View
from autopilotd.web.params import read_params
from autopilotd.web.render import environment
from autopilotd.web.stream import event_stream

logger = logging.getLogger(__name__)

LOGIN_HINT = "not logged in: run 'autopilotctl web' for a one-time login link"
UNSAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._-]")


def wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def attachment_name(path: str) -> str:
    """A download's file name: the last component of its path, only [A-Za-z0-9._-] kept, no
    leading dot (never '..', never a hidden file), 'download' when nothing is left."""
    return UNSAFE_NAME_RE.sub("", path.rsplit("/", 1)[-1]).lstrip(".") or "download"


class WebUI:
    """The routes of the web UI over one runtime and one set of browser sessions."""

    def __init__(self, rt: Runtime, auth: WebAuth) -> None:
        self.rt = rt
        self.auth = auth
        self.env = environment()

    # -- sessions --------------------------------------------------------------------------

    def session(self, request: web.Request) -> WebSession | None:
        return self.auth.session(request.cookies.get(self.auth.cookie_name))

    def mutating(self, request: web.Request) -> WebSession:
        """The session of a POST that carries its CSRF token from a same-origin page."""
        session = self.session(request)
        if session is None:
            raise web.HTTPUnauthorized(reason=LOGIN_HINT)
        if not session.csrf_ok(request.headers.get(CSRF_HEADER)):
            raise web.HTTPForbidden(reason="missing or wrong CSRF token")
        if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            raise web.HTTPForbidden(reason="cross-site request")
        return session

    def login_page(self, status: int, message: str) -> web.Response:
        html = self.env.get_template("login.html").render(message=message)
        return web.Response(text=html, content_type="text/html", status=status)

    # -- rendering -------------------------------------------------------------------------

    def view(self, request: web.Request, action: Action | None = None) -> View:
        snapshot = self.rt.state.current.to_json(self.rt.clock.now())
        return View(self.rt, snapshot, dict(request.query), action)

    async def load(self, pane: Pane, v: View) -> dict[str, Any]:
        """The pane's data; a failure shows in the pane instead of breaking the page."""
        try:
            return await pane.load(v)
        except AutopilotError as exc:
            return {"failed": exc.message}
        except Exception:
            error_id = secrets.token_hex(6)
            logger.exception("pane %s failed [error id %s]", pane.name, error_id)
            return {"failed": f"internal error (error id {error_id})"}

    def block(self, pane: Pane, data: dict[str, Any]) -> str:
        """The pane's one block, rendered alone (the page places it; htmx swaps it in)."""
        if "failed" in data:
            return self.env.get_template("failed.html").render(d=data, pane=pane.describe())
        template = self.env.get_template(pane.template)
        ctx = template.new_context({"d": data, "pane": pane.describe()})
        return "".join(template.blocks[pane.name](ctx))

    # -- commands --------------------------------------------------------------------------

    async def call(self, name: str, params: dict[str, Any]) -> Any:
        """Run a registry command as the logged-in owner (the web session's scope), in time."""
        async with asyncio.timeout(self.rt.config.call_timeout_s):
            return await self.rt.registry.call(name, params, scope="owner")

    def failure(self, name: str, exc: Exception) -> tuple[str, int]:
        """What to show of a command that failed, and the HTTP status that answers it."""
        if isinstance(exc, AutopilotError):
            return exc.message, exc.http_status if exc.http_status != 200 else 400
        if isinstance(exc, TimeoutError):
            return f"'{name}' did not finish in time", 504
        error_id = secrets.token_hex(6)
        logger.error("web action %s failed [error id %s]", name, error_id, exc_info=exc)
        return f"internal error (error id {error_id})", 500

    # -- routes ----------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        session = self.session(request)
        if session is None:
            if wants_json(request):
                return web.json_response({"error": LOGIN_HINT}, status=401)
            return self.login_page(401, "")
        v = self.view(request)
        if wants_json(request):
            return web.json_response(v.snapshot)
        data = {p.name: await self.load(p, v) for p in (HUD, *PANES)}
        html = self.env.get_template("index.html").render(
            csrf=session.csrf,
            hud=data.pop(HUD.name),
            data=data,
            panes=[p.describe() for p in PANES],
            groups=GROUPS,
            open="setup" if v.snapshot["wallet"]["state"] == "needs_setup" else DEFAULT_PANE,
            seq=v.snapshot["seq"],
        )
        return web.Response(text=html, content_type="text/html")

    async def pane(self, request: web.Request) -> web.Response:
        if self.session(request) is None:
            raise web.HTTPUnauthorized(reason=LOGIN_HINT)
        pane = BY_NAME.get(request.match_info["name"])
        if pane is None:
            raise web.HTTPNotFound(reason="no such pane")
        data = await self.load(pane, self.view(request))
        if wants_json(request):
            return web.json_response(data)
        return web.Response(text=self.block(pane, data), content_type="text/html")

    async def do(self, request: web.Request) -> web.Response:
        self.mutating(request)
        name = request.match_info["command"]
        pane = BY_NAME.get(request.query.get("pane", ""))
        params: dict[str, Any] = {}
        try:
            params = await read_params(request, self.rt.registry.get(name))
            action = Action(name, params, result=await self.call(name, params))
            status = 200
        except Exception as exc:
            error, status = self.failure(name, exc)
            action = Action(name, params, error=error)
        if wants_json(request) or pane is None:
            if action.error is not None:
                return web.json_response({"error": action.error}, status=status)
            return web.json_response({"command": name, "result": action.result})
        data = await self.load(pane, self.view(request, action))
        html = self.block(pane, data)
        if action.error is not None and data.get("error") != action.error:
            # a pane without a place for this command's errors still shows them, on top
            notice = self.env.get_template("action_error.html")
            html = notice.render(command=name, error=action.error) + html
        return web.Response(text=html, content_type="text/html")

    async def download(self, request: web.Request) -> web.Response:
        """A sandbox job's workspace file as an attachment, read by `sandbox.download` (which
        refuses symlinks and anything outside the workspace); a refusal answers no bytes."""
        if self.session(request) is None:
            raise web.HTTPUnauthorized(reason=LOGIN_HINT)
        params = {"job_id": request.match_info["job_id"], "path": request.query.get("path", "")}
        try:
            got = await self.call("sandbox.download", params)
        except Exception as exc:
            error, status = self.failure("sandbox.download", exc)
            return self.refused(request, 404 if isinstance(exc, NotFound) else status, error)
        return web.Response(
            body=base64.b64decode(got["data_b64"]),
            content_type="application/octet-stream",
            headers={
                "Content-Disposition": f'attachment; filename="{attachment_name(got["path"])}"',
                "X-Content-Type-Options": "nosniff",
                "X-Content-SHA256": got["sha256"],
            },
        )

    def refused(self, request: web.Request, status: int, error: str) -> web.Response:
        """A download that did not happen: the reason, as a page or as JSON."""
        if wants_json(request):
            return web.json_response({"error": error}, status=status)
        html = self.env.get_template("refused.html").render(error=error)
        return web.Response(text=html, content_type="text/html", status=status)

    async def login(self, request: web.Request) -> web.Response:
        token = request.query.get("token", "")
        session_id = self.auth.redeem(token) if token else None
        if session_id is None:
            return self.login_page(403, "This login link was already used or has expired.")
        resp = web.Response(status=303, headers={"Location": "/"})
        resp.set_cookie(
            self.auth.cookie_name, session_id, httponly=True, samesite="Strict", path="/"
        )
        logger.info("a browser logged in to the web UI")
        return resp

    async def logout(self, request: web.Request) -> web.Response:
        self.mutating(request)
        self.auth.end(request.cookies.get(self.auth.cookie_name))
        resp = web.Response(status=204, headers={"HX-Redirect": "/"})
        resp.del_cookie(self.auth.cookie_name, path="/")
        return resp

    async def stream(self, request: web.Request) -> web.StreamResponse:
        cookie = request.cookies.get(self.auth.cookie_name)
        if self.auth.session(cookie) is None:
            raise web.HTTPUnauthorized(reason=LOGIN_HINT)
        return await event_stream(request, self.rt, lambda: self.auth.session(cookie) is not None)

    async def chat_stream(self, request: web.Request) -> web.StreamResponse:
        cookie = request.cookies.get(self.auth.cookie_name)
        if self.auth.session(cookie) is None:
            raise web.HTTPUnauthorized(reason=LOGIN_HINT)
        return await thread_stream(
            request,
            self.rt,
            self.call,
            request.match_info["thread_id"],
            lambda: self.auth.session(cookie) is not None,
        )


def add_web_routes(app: web.Application, rt: Runtime, auth: WebAuth) -> None:
    ui = WebUI(rt, auth)
    app.router.add_get("/", ui.index)
    app.router.add_get("/pane/{name}", ui.pane)
    app.router.add_post("/do/{command}", ui.do)
    app.router.add_get("/sandbox/{job_id}/download", ui.download)
    app.router.add_get("/events/stream", ui.stream)
    app.router.add_get("/chat/{thread_id}/stream", ui.chat_stream)
    app.router.add_get("/login", ui.login)
    app.router.add_post("/logout", ui.logout)
    static = Path(str(resources.files("autopilotd.web") / "static"))
    app.router.add_static("/static/", static, follow_symlinks=False)
