"""Web routes. Every pane renders the Snapshot; every page has a JSON twin (Accept: JSON)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from autopilotd.runtime.context import Runtime

PANES = ("daemon", "services")


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("autopilotd.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def add_web_routes(app: web.Application, rt: Runtime) -> None:
    env = _environment()
    page = env.get_template("index.html")

    def context() -> dict[str, Any]:
        return {"snapshot": rt.state.current.to_json(rt.clock())}

    async def index(request: web.Request) -> web.Response:
        if wants_json(request):
            return web.json_response(context()["snapshot"])
        return web.Response(text=page.render(context()), content_type="text/html")

    async def pane(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in PANES:
            raise web.HTTPNotFound(reason="no such pane")
        ctx = context()
        if wants_json(request):
            return web.json_response(ctx["snapshot"][name])
        block = page.blocks[name]
        html = "".join(block(page.new_context(ctx)))
        return web.Response(text=html, content_type="text/html")

    app.router.add_get("/", index)
    app.router.add_get("/pane/{name}", pane)
    static = Path(str(resources.files("autopilotd.web") / "static"))
    app.router.add_static("/static/", static, follow_symlinks=False)
