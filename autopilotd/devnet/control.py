"""The devnet's control API: loopback HTTP + JSON, one bearer token from devnet.json.

Tests, the demo and `autopilotd devnet ...` reach the running supervisor through it (see
`DevnetClient`). Every route maps to one `DevnetOperations` method.
"""

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from autopilotd.devnet.coins import FaucetError
from autopilotd.devnet.hub import HubError
from autopilotd.devnet.lsp import LspError
from autopilotd.devnet.operations import DevnetOperations
from autopilotd.loopback import LOOPBACK

logger = logging.getLogger(__name__)

OPERATIONS = web.AppKey("operations", DevnetOperations)
TOKEN = web.AppKey("token", str)

Route = Callable[[DevnetOperations, dict[str, Any]], Awaitable[Any]]


async def _status(ops: DevnetOperations, body: dict[str, Any]) -> Any:
    return await ops.status()


async def _mine(ops: DevnetOperations, body: dict[str, Any]) -> Any:
    hashes = await ops.mine(int(body.get("blocks", 1)))
    return {"hashes": hashes, "height": await ops.height()}


async def _reorg(ops: DevnetOperations, body: dict[str, Any]) -> Any:
    return await ops.reorg(int(body["depth"]))


async def _fund(ops: DevnetOperations, body: dict[str, Any]) -> Any:
    txid = await ops.fund(
        str(body["address"]), int(body["sats"]), int(body.get("confirmations", 1))
    )
    return {"txid": txid, "height": await ops.height()}


async def _open_channel(ops: DevnetOperations, body: dict[str, Any]) -> Any:
    return await ops.open_channel(
        str(body["node_id"]),
        str(body["address"]),
        int(body["sats"]),
        int(body.get("push_sats", 0)),
    )


async def _lsp_open_channel(ops: DevnetOperations, body: dict[str, Any]) -> Any:
    return await ops.lsp_open_channel(
        str(body["node_id"]),
        str(body["address"]),
        int(body["sats"]),
        int(body.get("push_sats", 0)),
    )


async def _hub_invoice(ops: DevnetOperations, body: dict[str, Any]) -> Any:
    bolt11 = await ops.hub_invoice(
        int(body["amount_msat"]),
        str(body.get("description", "devnet hub")),
        int(body.get("expiry_s", 3600)),
    )
    return {"bolt11": bolt11}


async def _hub_payment(ops: DevnetOperations, body: dict[str, Any]) -> Any:
    return await ops.hub_payment(str(body["payment_hash"]))


async def _hub_pay(ops: DevnetOperations, body: dict[str, Any]) -> Any:
    return await ops.hub_pay(str(body["bolt11"]))


ROUTES: dict[str, Route] = {
    "status": _status,
    "mine": _mine,
    "fund": _fund,
    "reorg": _reorg,
    "open_channel": _open_channel,
    "lsp_open_channel": _lsp_open_channel,
    "hub_invoice": _hub_invoice,
    "hub_pay": _hub_pay,
    "hub_payment": _hub_payment,
}


async def _handle(request: web.Request) -> web.Response:
    token = request.app[TOKEN]
    given = request.headers.get("Authorization", "").removeprefix("Bearer ")
    if not hmac.compare_digest(given.encode(), token.encode()):
        return web.json_response({"error": "unauthorized"}, status=401)
    route = ROUTES.get(request.match_info["name"])
    if route is None:
        return web.json_response({"error": "no such operation"}, status=404)
    try:
        body = await request.json() if request.can_read_body else {}
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        result = await route(request.app[OPERATIONS], body)
    except (KeyError, ValueError, TypeError) as exc:
        return web.json_response({"error": f"bad request: {exc!r}"}, status=400)
    except (FaucetError, HubError, LspError, TimeoutError) as exc:
        logger.warning("%s failed: %r", request.path, exc)
        return web.json_response({"error": repr(exc)}, status=409)
    except Exception as exc:
        logger.exception("%s failed", request.path)
        return web.json_response({"error": f"{type(exc).__name__}: {exc}"}, status=500)
    return web.json_response({"result": result})


def control_app(ops: DevnetOperations, token: str) -> web.Application:
    """The aiohttp application: POST /v1/<operation> with a JSON body."""
    app = web.Application()
    app[OPERATIONS] = ops
    app[TOKEN] = token
    app.router.add_post("/v1/{name}", _handle)
    return app


@asynccontextmanager
async def serve_control(ops: DevnetOperations, token: str, port: int) -> AsyncIterator[str]:
    """Serve the control API on loopback for the duration of the context; yields its URL."""
    runner = web.AppRunner(control_app(ops, token), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, LOOPBACK, port).start()
        yield f"http://{LOOPBACK}:{port}"
    finally:
        await runner.cleanup()
