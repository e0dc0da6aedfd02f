"""The one error type handlers raise, rendered in OpenAI's error shape.

``{"error": {"message", "type", "param", "code"}}`` with an HTTP status. Anything else that
escapes a handler is logged with its traceback and answered with a generic message and a
correlation id, so no exception text leaks to clients.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

logger = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def response(self) -> web.Response:
        body = {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }
        return web.json_response(body, status=self.status, headers=self.headers)


def unsupported(param: str, detail: str = "") -> ApiError:
    message = f"Unsupported parameter: '{param}' is not supported by this server."
    if detail:
        message = f"{message} {detail}"
    return ApiError(400, message, param=param, code="unsupported_parameter")


def invalid(param: str | None, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return ApiError(exc.status, exc.reason, type_="invalid_request_error").response()
    except json.JSONDecodeError:
        return ApiError(400, "The body is not valid JSON.").response()
    except Exception:
        correlation = uuid.uuid4().hex[:12]
        logger.exception("internal error (correlation id %s)", correlation)
        return ApiError(
            500,
            f"Internal server error (correlation id {correlation}).",
            type_="server_error",
        ).response()
