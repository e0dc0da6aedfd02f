"""A JSON-RPC client for btcd over TLS.

btcd closes every RPC connection after it has replied, so the client opens a fresh TLS
connection per call (`force_close`) instead of trusting a pool of dead keep-alive sockets.
"""

import base64
import itertools
import logging
import ssl
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp

logger = logging.getLogger(__name__)

# bitcoind's error codes, which ldk-node and other clients match on.
RPC_MISC_ERROR = -1
RPC_INVALID_ADDRESS_OR_KEY = -5
RPC_METHOD_NOT_FOUND = -32601
RPC_PARSE_ERROR = -32700
RPC_INVALID_REQUEST = -32600


def basic_auth_header(user: str, password: str) -> str:
    """The value of an HTTP Basic `Authorization` header."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


class RpcError(Exception):
    """An error answer from the node, with its JSON-RPC code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class BtcdRpc:
    """Calls btcd's RPC server at `url`, checking its self-signed certificate `cafile`."""

    def __init__(
        self, url: str, user: str, password: str, cafile: Path, timeout_s: float = 30.0
    ) -> None:
        self._url = url
        self._headers = {"Authorization": basic_auth_header(user, password)}
        self._cafile = cafile
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        context = ssl.create_default_context(cafile=str(self._cafile))
        connector = aiohttp.TCPConnector(ssl=context, force_close=True)
        self._session = aiohttp.ClientSession(
            connector=connector, headers=self._headers, timeout=self._timeout
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call_raw(self, method: str, params: list[Any]) -> dict[str, Any]:
        """The whole reply object (`result`, `error`), as btcd sent it."""
        if self._session is None:
            raise RuntimeError("BtcdRpc used outside its context")
        body = {"jsonrpc": "1.0", "id": next(self._ids), "method": method, "params": params}
        async with self._session.post(self._url, json=body) as response:
            reply: dict[str, Any] = await response.json(content_type=None)
        return reply

    async def call(self, method: str, *params: Any) -> Any:
        """The `result` of `method`; an error answer raises `RpcError`."""
        reply = await self.call_raw(method, list(params))
        error = reply.get("error")
        if error:
            raise RpcError(int(error.get("code", RPC_MISC_ERROR)), str(error.get("message", "")))
        return reply.get("result")
