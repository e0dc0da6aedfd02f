"""The `/rpc` route: bearer token → scope, JSON body → the dispatcher → the registry."""

from __future__ import annotations

from aiohttp import web

from autopilotd.guard import bearer_token
from autopilotd.rpc.jsonrpc import RpcDispatcher, http_status
from autopilotd.runtime.context import Runtime


def add_rpc_route(app: web.Application, rt: Runtime) -> None:
    cfg = rt.config
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
