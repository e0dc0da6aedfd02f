"""JSON-RPC 2.0 dispatch to the command registry.

JSON-RPC 2.0 is small, so the dispatcher is our own: it parses the body, checks each request
object on its own (a single request, or every member of a batch), and runs the call through
`Registry.call` under the per-call timeout; JSON-RPC has no logic of its own beyond that. Our
errors map to their stable codes; any other exception is logged with its traceback and the
client receives only a generic message and a correlation id. Every message a client sees is
ours, written for users: no parser or exception text reaches it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
from typing import Any, NamedTuple

from autopilotd.errors import AutopilotError, Forbidden, InvalidParams
from autopilotd.registry import Access, Registry

logger = logging.getLogger(__name__)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = InvalidParams.code
INTERNAL_CODE = -32603
TIMEOUT_CODE = -32021

RequestId = str | int | float | None
Answer = dict[str, Any]  # one JSON-RPC response object


class Reply(NamedTuple):
    """What goes back over HTTP: the JSON text, and each answer's error code (0 for a result)."""

    text: str
    codes: tuple[int, ...]


class _Refused(Exception):
    """A call answered with an error: its code, a message for users and our own `data`."""

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def _error(
    request_id: RequestId, code: int, message: str, data: dict[str, Any] | None = None
) -> Answer:
    error: dict[str, Any] = {"code": code, "message": message}
    if data:
        error["data"] = data
    return {"jsonrpc": "2.0", "error": error, "id": request_id}


def _code(answer: Answer) -> int:
    return int(answer["error"]["code"]) if "error" in answer else 0


def _reply(answer: Answer) -> Reply:
    return Reply(json.dumps(answer), (_code(answer),))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: Python's json accepts them


def _readable_id(value: Any) -> bool:
    """An id we can echo: a string, a finite number or null (never a boolean, array or object)."""
    if value is None or isinstance(value, str):
        return True
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _request_problem(member: dict[str, Any]) -> str | None:
    """Why `member` is not a JSON-RPC 2.0 request object, or None when it is one."""
    if member.get("jsonrpc") != "2.0":
        return 'a request needs "jsonrpc": "2.0"'
    if not isinstance(member.get("method"), str):
        return "a request needs a 'method': the name of a command"
    if "params" in member and not isinstance(member["params"], dict | list):
        return "'params', when given, must be an object of named parameters"
    return None


class RpcDispatcher:
    """Registry commands as JSON-RPC 2.0 methods, with a per-call timeout and error mapping."""

    def __init__(self, registry: Registry, *, call_timeout_s: float, max_batch: int) -> None:
        self._registry = registry
        self._timeout = call_timeout_s
        self._max_batch = max_batch

    async def dispatch(self, body: str, scope: Access) -> Reply | None:
        """Answer one request or batch; None when there is nothing to send (notifications)."""
        try:
            message = json.loads(body, parse_constant=_refuse_constant)
        except (ValueError, RecursionError):
            return _reply(_error(None, PARSE_ERROR, "the body is not valid JSON"))
        if not isinstance(message, list):
            answer = await self._answer(message, scope)
            return None if answer is None else _reply(answer)
        if not message:
            return _reply(_error(None, INVALID_REQUEST, "a batch must hold at least one request"))
        if len(message) > self._max_batch:
            return _reply(
                _error(
                    None,
                    INVALID_REQUEST,
                    f"a batch holds at most {self._max_batch} requests, not {len(message)}",
                )
            )
        answers: list[Answer] = []
        for member in message:  # one after another, each under its own timeout
            answer = await self._answer(member, scope)
            if answer is not None:
                answers.append(answer)
        if not answers:
            return None
        return Reply(json.dumps(answers), tuple(_code(a) for a in answers))

    async def _answer(self, member: Any, scope: Access) -> Answer | None:
        """The response to one request object; None for a valid notification (never answered)."""
        if not isinstance(member, dict):
            return _error(None, INVALID_REQUEST, "a request must be a JSON object")
        request_id = member.get("id")
        if not _readable_id(request_id):
            return _error(None, INVALID_REQUEST, "a request's 'id' must be a string or a number")
        problem = _request_problem(member)
        if problem is not None:
            return _error(request_id, INVALID_REQUEST, problem)
        try:
            result = await self._call(member["method"], member.get("params", {}), scope)
        except _Refused as exc:
            answer = _error(request_id, exc.code, exc.message, exc.data)
        else:
            answer = {"jsonrpc": "2.0", "result": result, "id": request_id}
        return answer if "id" in member else None

    async def _call(self, name: str, params: dict[str, Any] | list[Any], scope: Access) -> Any:
        if name not in self._registry:
            raise _Refused(
                METHOD_NOT_FOUND, f"no method named '{name}'; 'system.commands' lists them"
            )
        if isinstance(params, list):
            raise _Refused(INVALID_PARAMS, "params must be an object of named parameters")
        try:
            async with asyncio.timeout(self._timeout):
                return await self._registry.call(name, params, scope=scope)
        except AutopilotError as exc:
            raise _Refused(exc.code, exc.message, exc.data) from None
        except TimeoutError:
            raise _Refused(
                TIMEOUT_CODE, f"'{name}' did not finish within {self._timeout:g} s"
            ) from None
        except Exception:
            error_id = secrets.token_hex(6)
            logger.exception("command %s failed [error id %s]", name, error_id)
            raise _Refused(INTERNAL_CODE, "Internal error", {"correlation_id": error_id}) from None


def http_status(codes: tuple[int, ...]) -> int:
    """HTTP 403 when every answer is a scope refusal; JSON-RPC errors otherwise travel as 200."""
    return 403 if codes and all(code == Forbidden.code for code in codes) else 200
