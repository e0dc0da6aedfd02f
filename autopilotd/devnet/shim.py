"""A bitcoind-compatible JSON-RPC front for btcd, so ldk-node's bitcoind chain source works.

ldk-node speaks plain HTTP with Basic auth and keeps its connection alive; btcd wants TLS
and closes every connection. In between, the shim fills the gaps in btcd's answers:

- `getblockheader` (verbose) gets `chainwork`, which LDK's block sync checks exactly;
- `getmempoolentry` (unimplemented in btcd) is answered from `getrawmempool true`, with
  error -5 when the transaction is not in the mempool (any other error breaks ldk-node's
  wallet sync);
- `estimatesmartfee` (missing) and `mempoolminfee` in `getmempoolinfo` are supplied;
- everything else passes through unchanged.
"""

import base64
import binascii
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web

from autopilotd.devnet.headers import NULL_HASH, HeaderIndex, chainwork_hex
from autopilotd.devnet.rpc import (
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_REQUEST,
    RPC_METHOD_NOT_FOUND,
    RPC_MISC_ERROR,
    RPC_PARSE_ERROR,
    BtcdRpc,
    RpcError,
)
from autopilotd.loopback import LOOPBACK

logger = logging.getLogger(__name__)

# BTC per kvB. The estimate is 2 sat/vB, above btcd's 1 sat/vB relay minimum, so every
# transaction ldk-node builds from it is relayed.
ESTIMATED_FEE_RATE = 0.00002
MEMPOOL_MIN_FEE = 0.00001

Handler = Callable[[list[Any]], Awaitable[Any]]


class BitcoindShim:
    """Answers bitcoind JSON-RPC requests using a btcd node."""

    def __init__(self, btcd: BtcdRpc, user: str, password: str) -> None:
        self._btcd = btcd
        self._credentials = f"{user}:{password}".encode()
        self.headers = HeaderIndex(self._fetch_raw_header)
        self._handlers: dict[str, Handler] = {
            "getblockheader": self._getblockheader,
            "getmempoolentry": self._getmempoolentry,
            "estimatesmartfee": self._estimatesmartfee,
            "getmempoolinfo": self._getmempoolinfo,
        }

    def app(self) -> web.Application:
        """The aiohttp application (POST / and POST /wallet/<name>, like bitcoind)."""
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/", self._handle_http)
        app.router.add_post("/wallet/{wallet}", self._handle_http)
        return app

    async def _fetch_raw_header(self, block_hash: str) -> str:
        raw: str = await self._btcd.call("getblockheader", block_hash, False)
        return raw

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self._credentials)

    async def _handle_http(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="jsonrpc"'})
        try:
            body = json.loads(await request.read())
        except ValueError:
            reply = _error_reply(None, RPC_PARSE_ERROR, "Parse error")
            return web.json_response(reply, status=500)
        if isinstance(body, list):
            replies = [await self.dispatch(item) for item in body]
            return web.json_response(replies)
        reply = await self.dispatch(body)
        error = reply.get("error")
        status = 200
        if error:
            status = 404 if error.get("code") == RPC_METHOD_NOT_FOUND else 500
        return web.json_response(reply, status=status)

    async def dispatch(self, request: Any) -> dict[str, Any]:
        """One JSON-RPC request object in, one reply object out (never raises RpcError)."""
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            return _error_reply(None, RPC_INVALID_REQUEST, "Invalid request")
        request_id = request.get("id")
        method: str = request["method"]
        params = request.get("params") or []
        if not isinstance(params, list):
            return _error_reply(request_id, RPC_INVALID_REQUEST, "params must be a list")
        handler = self._handlers.get(method)
        try:
            if handler is None:
                reply = await self._btcd.call_raw(method, params)
                reply["id"] = request_id
                return reply
            result = await handler(params)
        except RpcError as exc:
            return _error_reply(request_id, exc.code, exc.message)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # btcd down, restarting or answering garbage: a JSON-RPC error that ldk-node
            # treats as transient, instead of an HTML 500 page.
            logger.warning("btcd did not answer %s: %r", method, exc)
            return _error_reply(request_id, RPC_MISC_ERROR, "btcd is unreachable")
        return {"result": result, "error": None, "id": request_id}

    async def _getblockheader(self, params: list[Any]) -> Any:
        if not params or not isinstance(params[0], str):
            raise RpcError(RPC_INVALID_REQUEST, "getblockheader needs a block hash")
        verbose = params[1] if len(params) > 1 else True
        if not verbose:
            return await self._fetch_raw_header(params[0])
        header = await self.headers.header(params[0])
        position = await self.headers.position(header)
        best_height: int = await self._btcd.call("getblockcount")
        on_main_chain = position.height <= best_height and header.hash == await self._btcd.call(
            "getblockhash", position.height
        )
        reply: dict[str, Any] = {
            "hash": header.hash,
            "confirmations": best_height - position.height + 1 if on_main_chain else -1,
            "height": position.height,
            "version": header.version,
            "versionHex": f"{header.version & 0xFFFFFFFF:08x}",
            "merkleroot": header.merkleroot,
            "time": header.time,
            "nonce": header.nonce,
            "bits": f"{header.bits:08x}",
            "chainwork": chainwork_hex(position.chainwork),
        }
        if header.previousblockhash != NULL_HASH:
            reply["previousblockhash"] = header.previousblockhash
        if on_main_chain and position.height < best_height:
            reply["nextblockhash"] = await self._btcd.call("getblockhash", position.height + 1)
        return reply

    async def _getmempoolentry(self, params: list[Any]) -> Any:
        if not params or not isinstance(params[0], str):
            raise RpcError(RPC_INVALID_REQUEST, "getmempoolentry needs a txid")
        mempool: dict[str, Any] = await self._btcd.call("getrawmempool", True)
        entry = mempool.get(params[0])
        if entry is None:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Transaction not in mempool")
        fee = entry.get("fee", 0)
        return {
            "vsize": entry.get("vsize", entry.get("size")),
            "weight": entry.get("weight", 4 * int(entry.get("vsize", entry.get("size", 0)))),
            "time": entry["time"],
            "height": entry["height"],
            "fees": {"base": fee, "modified": fee, "ancestor": fee, "descendant": fee},
            "depends": entry.get("depends", []),
            "spentby": [],
            "bip125-replaceable": False,
            "unbroadcast": False,
        }

    async def _estimatesmartfee(self, params: list[Any]) -> Any:
        blocks = params[0] if params and isinstance(params[0], int) else 6
        return {"feerate": ESTIMATED_FEE_RATE, "blocks": blocks}

    async def _getmempoolinfo(self, params: list[Any]) -> Any:
        info: dict[str, Any] = await self._btcd.call("getmempoolinfo")
        info.setdefault("loaded", True)
        info.setdefault("usage", info.get("bytes", 0))
        info["mempoolminfee"] = MEMPOOL_MIN_FEE
        info["minrelaytxfee"] = MEMPOOL_MIN_FEE
        return info


def _error_reply(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"result": None, "error": {"code": code, "message": message}, "id": request_id}


@asynccontextmanager
async def serve_shim(shim: BitcoindShim, port: int, host: str = LOOPBACK) -> AsyncIterator[str]:
    """Serve `shim` on host:port for the duration of the context; yields its URL."""
    runner = web.AppRunner(shim.app(), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        logger.info("bitcoind shim listening on %s:%d", host, port)
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
