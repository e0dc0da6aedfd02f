"""Browser safety for the loopback control plane (RELIABILITY C1, C2, C5, C7, C8).

- Host allow-list: only the loopback names with the bound port (DNS rebinding → 403).
- Origin: when a browser sends one, it must be exactly this server's own origin.
- No CORS headers, ever; a strict Content-Security-Policy with `frame-ancestors 'none'` and
  the companion headers on every response, errors included.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def allowed_hosts(port: int) -> frozenset[str]:
    return frozenset({f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"})


def origin_ok(origin: str | None, host: str) -> bool:
    """No Origin (non-browser clients) or exactly this server's own origin."""
    if origin is None:
        return True
    return hmac.compare_digest(origin.encode(), f"http://{host}".encode())


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def security_middleware(
    hosts: frozenset[str],
) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host", "")
        response: web.StreamResponse
        if host not in hosts:
            response = web.json_response({"error": "forbidden host"}, status=403)
        elif not origin_ok(request.headers.get("Origin"), host):
            response = web.json_response({"error": "forbidden origin"}, status=403)
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                response = web.json_response({"error": exc.reason}, status=exc.status)
        for name, value in SECURITY_HEADERS.items():
            response.headers[name] = value
        return response

    return middleware
