"""JSON-RPC 2.0 dispatch to the command registry, through pjrpc.

pjrpc (maintained, Python 3.11–3.13) parses requests, batches and notifications; every method it
knows is a thin bridge to `Registry.call`, so JSON-RPC has no logic of its own. Our errors map to
their stable codes; any other exception is logged with its traceback and the client receives
only a generic message and a correlation id. The library stays inside this package.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import pjrpc.server
from aiohttp import web
from pjrpc.server import exceptions as rpc_errors
from pjrpc.server import validators

from autopilotd.errors import AutopilotError, Forbidden
from autopilotd.registry import Access, Registry

logger = logging.getLogger(__name__)
logging.getLogger("pjrpc").setLevel(logging.WARNING)  # our own layer logs what matters

SCOPE_KEY: web.RequestKey[Access] = web.RequestKey("autopilotd_scope", str)  # type: ignore[arg-type]
TIMEOUT_CODE = -32021
INTERNAL_CODE = -32603


def _error(code: int, message: str, data: dict[str, Any] | None = None) -> rpc_errors.JsonRpcError:
    if data:
        return rpc_errors.JsonRpcError(code, message, data)
    return rpc_errors.JsonRpcError(code, message)


class _NamedParams(validators.BaseValidator):
    """Hand the JSON params object through whole; the registry checks it against the command."""

    def validate_params(self, params: Any) -> dict[str, Any]:
        if params is None:
            return {"params": {}}
        if not isinstance(params, dict):
            raise validators.ValidationError("params must be an object of named parameters")
        return {"params": params}


class _NamedParamsFactory(validators.BaseValidatorFactory):
    def build(self, method: Any) -> validators.BaseValidator:
        return _NamedParams(method)


class RpcDispatcher:
    """Registry commands as JSON-RPC methods, with a per-call timeout and error mapping."""

    def __init__(self, registry: Registry, *, call_timeout_s: float, max_batch: int) -> None:
        self._registry = registry
        self._timeout = call_timeout_s
        self._dispatcher: pjrpc.server.AsyncDispatcher[web.Request] = pjrpc.server.AsyncDispatcher(
            max_batch_size=max_batch
        )
        methods = pjrpc.server.MethodRegistry(validator_factory=_NamedParamsFactory())
        for cmd in registry.commands():
            methods.add_method(self._bridge(cmd.name), cmd.name, pass_context="http_request")
        self._dispatcher.add_methods(methods)

    def _bridge(self, name: str) -> Callable[..., Awaitable[Any]]:
        async def method(http_request: web.Request, params: dict[str, Any]) -> Any:
            scope: Access = http_request[SCOPE_KEY]
            return await self.invoke(name, params, scope)

        return method

    async def invoke(self, name: str, params: dict[str, Any], scope: Access) -> Any:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._registry.call(name, params, scope=scope)
        except AutopilotError as exc:
            raise _error(exc.code, exc.message, exc.data) from None
        except TimeoutError:
            raise _error(
                TIMEOUT_CODE, f"'{name}' did not finish within {self._timeout:g} s"
            ) from None
        except Exception:
            error_id = secrets.token_hex(6)
            logger.exception("command %s failed [error id %s]", name, error_id)
            raise _error(INTERNAL_CODE, "Internal error", {"correlation_id": error_id}) from None

    async def dispatch(self, body: str, request: web.Request) -> tuple[str, tuple[int, ...]] | None:
        return await self._dispatcher.dispatch(body, context=request)


def http_status(codes: tuple[int, ...]) -> int:
    """HTTP 403 for a request refused for its scope; JSON-RPC errors otherwise travel as 200."""
    return 403 if codes and all(code == Forbidden.code for code in codes) else 200
