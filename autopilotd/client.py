"""A small JSON-RPC client for the control plane, shared by autopilotctl, MCP and tests."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from autopilotd.errors import AutopilotError, DaemonNotRunning, UserError
from autopilotd.manifest import read_manifest
from autopilotd.paths import Paths


class RpcError(AutopilotError):
    """An error answered by the daemon, with its JSON-RPC code and data."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message, data=data if isinstance(data, dict) else None)
        self.rpc_code = code
        self.raw_data = data


@dataclass(frozen=True)
class Endpoint:
    rpc_url: str
    token: str
    web_url: str | None = None
    pid: int | None = None


def locate(
    *,
    home: str | None = None,
    manifest: str | None = None,
    rpc_url: str | None = None,
    token: str | None = None,
) -> Endpoint:
    """Find the daemon: --rpc-url with --token, else the manifest (--manifest, --home, default)."""
    if rpc_url or token:
        if not (rpc_url and token):
            raise UserError("--rpc-url and --token go together")
        return Endpoint(rpc_url, token)
    path = Path(manifest) if manifest else Paths.resolve(home).manifest_file
    m = read_manifest(path)
    return Endpoint(m.rpc_url, m.auth_token, m.web_url, m.pid)


class RpcClient:
    """`async with RpcClient(endpoint) as c: await c.call("status")`."""

    def __init__(self, endpoint: Endpoint, timeout_s: float = 60.0) -> None:
        self.endpoint = endpoint
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> RpcClient:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        assert self._session is not None, "use 'async with RpcClient(...)'"
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params or {}}
        headers = {"Authorization": f"Bearer {self.endpoint.token}"}
        try:
            async with self._session.post(
                self.endpoint.rpc_url, json=body, headers=headers
            ) as resp:
                if resp.status == 401:
                    raise RpcError(
                        401, "the daemon refused the token (restarted? re-read the manifest)"
                    )
                payload = await resp.json(content_type=None)
        except aiohttp.ClientConnectionError:
            raise DaemonNotRunning(
                f"autopilotd is not running (nothing answers at {self.endpoint.rpc_url})"
            ) from None
        if not isinstance(payload, dict):
            raise RpcError(-32700, "the daemon sent an unexpected answer")
        if "error" in payload:
            err = payload["error"] if isinstance(payload["error"], dict) else {}
            raise RpcError(
                int(err.get("code", -32000)), str(err.get("message", "error")), err.get("data")
            )
        return payload.get("result")
