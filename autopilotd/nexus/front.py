"""The Nexus's one public port: NIP-11, the relay (a WebSocket proxy), `/api/*` and `/stats`.

    GET  /                    NIP-11 with `Accept: application/nostr+json`; a WebSocket
                              upgrade is proxied to the relay (writers authenticate with
                              NIP-42 here, see `_WriteGate`); anything else: a short page
    POST /api/session         open a session (NIP-98); `/api/session/desktop` is an alias
    GET  /api/session/me      the session of the bearer token
    POST /api/starter-demand/poll
    POST /api/starter-demand/offers/{id}/ack | heartbeat | fail | complete
    GET  /stats, /api/stats   public stats
    /operator/*               the treasury's endpoints, loopback and token only (operator.py)

Errors are JSON `{"error": code, "message": …}` with the status the desk chose. Session
creation is rate-limited per client address and polling per session (429), so one client's
flood leaves the Nexus responsive for the others.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web

from autopilotd.nexus.desk import NexusError, StarterDesk
from autopilotd.nexus.operator import Operator
from autopilotd.nexus.sessions import SessionDesk, session_json
from autopilotd.nexus.stats import PublicStats
from autopilotd.nostr.events import ShapeError, parse_raw
from autopilotd.nostr.intake import TokenBuckets
from autopilotd.nostr.nip42 import Nip42Error, check_auth
from autopilotd.runtime.clock import Clock

logger = logging.getLogger(__name__)

MAX_BODY = 16 * 1024
SESSION_RATE = (10, 1.0)
"""Sessions opened per client address: a burst of 10, then one a second."""
POLL_RATE = (5, 2.0)
"""Polls per session: a burst of 5, then two a second (a provider polls every few seconds)."""
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(exc: NexusError) -> web.Response:
    return web.json_response({"error": exc.code, "message": exc.message}, status=exc.status)


class NexusFront:
    def __init__(
        self,
        *,
        sessions: SessionDesk,
        desk: StarterDesk,
        stats: PublicStats,
        clock: Clock,
        relay_url: str,
        info: dict[str, Any],
        after_ack: Callable[[], Awaitable[None]],
        operator: Operator | None = None,
        session_rate: tuple[int, float] = SESSION_RATE,
        poll_rate: tuple[int, float] = POLL_RATE,
    ) -> None:
        self._sessions = sessions
        self._desk = desk
        self._stats = stats
        self._clock = clock
        self._relay_url = relay_url
        self._info = info
        self._after_ack = after_ack
        self._operator = operator
        self._sockets: set[web.WebSocketResponse] = set()
        self._session_buckets = TokenBuckets(*session_rate, 10_000)
        self._poll_buckets = TokenBuckets(*poll_rate, 10_000)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._errors])
        app.router.add_get("/", self.root)
        for path in ("/api/session", "/api/session/desktop"):
            app.router.add_post(path, self.open_session)
        app.router.add_get("/api/session/me", self.me)
        app.router.add_post("/api/starter-demand/poll", self.poll)
        app.router.add_post("/api/starter-demand/offers/{offer_id}/{action}", self.offer)
        app.router.add_get("/stats", self.stats)
        app.router.add_get("/api/stats", self.stats)
        if self._operator is not None:
            self._operator.routes(app)
        app.on_shutdown.append(self._close_sockets)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except NexusError as exc:
            return _error(exc)

    # -- the relay ---------------------------------------------------------------------------

    async def root(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._proxy(request)
        if "application/nostr+json" in request.headers.get("Accept", ""):
            return web.json_response(
                self._info,
                content_type="application/nostr+json",
                headers={
                    "Access-Control-Allow-Origin": "*",
                    "Access-Control-Allow-Headers": "*",
                    "Access-Control-Allow-Methods": "GET",
                },
            )
        return web.Response(
            text=f"{self._info['name']}: a Nostr relay and starter demand for providers. "
            "Stats: /stats\n"
        )

    async def _proxy(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_BODY * 16)
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            await self._pump(request, ws)
        finally:
            self._sockets.discard(ws)
        return ws

    async def _close_sockets(self, app: web.Application) -> None:
        """On shutdown: every relay client is told the Nexus is going away (else the server
        would wait for them)."""
        for ws in list(self._sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"the nexus is stopping")

    async def _pump(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        gate = _WriteGate(request.host, self._clock)
        async with (
            aiohttp.ClientSession() as client,
            client.ws_connect(self._relay_url, max_msg_size=MAX_BODY * 16) as upstream,
        ):

            async def down() -> None:
                async for msg in upstream:
                    if msg.type is WSMsgType.TEXT:
                        await ws.send_str(msg.data)
                    elif msg.type is WSMsgType.BINARY:
                        await ws.send_bytes(msg.data)
                    else:
                        break
                await ws.close()

            async def up() -> None:
                async for msg in ws:
                    if msg.type is WSMsgType.TEXT:
                        answers = gate.screen(msg.data)
                        if answers is None:
                            await upstream.send_str(msg.data)
                        for answer in answers or ():
                            await ws.send_str(answer)
                    elif msg.type is WSMsgType.BINARY:
                        await upstream.send_bytes(msg.data)
                    else:
                        break
                await upstream.close()

            async with asyncio.TaskGroup() as tg:
                pumping = tg.create_task(down())
                await up()
                pumping.cancel()

    # -- sessions ----------------------------------------------------------------------------

    async def open_session(self, request: web.Request) -> web.Response:
        peer = request.remote or "?"
        now = self._clock.now()
        if not self._session_buckets.take(peer, now):
            raise NexusError(429, "rate_limited", "too many sessions opened; slow down")
        body = await request.read()
        session, token = await self._sessions.open(
            authorization=request.headers.get("Authorization"),
            url=str(request.url),
            method=request.method,
            body=body,
        )
        answer = session_json(session, token)
        answer["nexus_pubkey"] = self._info["pubkey"]
        answer["relay_url"] = _public_ws(request)
        return web.json_response(answer)

    async def me(self, request: web.Request) -> web.Response:
        session = await self._sessions.authenticate(request.headers.get("Authorization"))
        return web.json_response(session_json(session))

    # -- starter demand ----------------------------------------------------------------------

    async def poll(self, request: web.Request) -> web.Response:
        session = await self._sessions.authenticate(request.headers.get("Authorization"))
        if not self._poll_buckets.take(session.id, self._clock.now()):
            raise NexusError(429, "rate_limited", "polling too often; slow down")
        answer = await self._desk.poll(session)
        return web.json_response(answer.to_json(self._desk.settings))

    async def offer(self, request: web.Request) -> web.Response:
        session = await self._sessions.authenticate(request.headers.get("Authorization"))
        offer_id, action = request.match_info["offer_id"], request.match_info["action"]
        body = await _json(request)
        if action == "ack":
            offer = await self._desk.ack(session, offer_id)
            await self._after_ack()
        elif action == "heartbeat":
            offer = await self._desk.heartbeat(session, offer_id)
        elif action == "fail":
            reason = body.get("failure_reason") or body.get("reason")
            if not isinstance(reason, str) or not reason.strip():
                raise NexusError(400, "failure_reason_required")
            offer = await self._desk.fail(session, offer_id, reason)
        elif action == "complete":
            payment_hash = body.get("payment_hash") or body.get("payment_pointer")
            if not isinstance(payment_hash, str) or len(payment_hash) != 64:
                raise NexusError(400, "payment_hash_required")
            offer = await self._desk.complete(session, offer_id, payment_hash)
        else:
            raise NexusError(404, "unknown_action")
        return web.json_response({"offer": offer.to_json()})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(await self._stats.get())


_WRITE_OR_AUTH = re.compile(r'\s*\[\s*"(EVENT|AUTH)"')


class _WriteGate:
    """NIP-42 for writers on one proxied connection (see nostr/nip42.py for why it is here).

    An EVENT before the client has authenticated is answered with an AUTH challenge and
    `OK false auth-required`, as a relay does; the client answers AUTH and sends the event
    again. Everything else goes through to the relay as it is.
    """

    def __init__(self, host: str, clock: Clock) -> None:
        self._host = host
        self._clock = clock
        self._challenge = secrets.token_hex(16)
        self.pubkey: str | None = None

    def screen(self, text: str) -> list[str] | None:
        """None: forward `text` to the relay; else the frames to answer the client with."""
        match = _WRITE_OR_AUTH.match(text)
        if match is None or (match[1] == "EVENT" and self.pubkey is not None):
            return None
        try:
            frame = json.loads(text)
        except (ValueError, RecursionError):
            return None  # the relay answers malformed frames
        raw = frame[1] if isinstance(frame, list) and len(frame) > 1 else None
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
            return [json.dumps(["NOTICE", "invalid: the frame carries no event"])]
        event_id: str = raw["id"]
        if match[1] == "EVENT":
            return [
                json.dumps(["AUTH", self._challenge]),
                json.dumps(["OK", event_id, False, "auth-required: authenticate to write"]),
            ]
        event = parse_raw(raw)
        outcome: str | Nip42Error = (
            Nip42Error("the auth event is malformed")
            if isinstance(event, ShapeError)
            else check_auth(
                event, challenge=self._challenge, host=self._host, now=self._clock.now()
            )
        )
        if isinstance(outcome, Nip42Error):
            return [json.dumps(["OK", event_id, False, f"auth-required: {outcome.reason}"])]
        self.pubkey = outcome
        return [json.dumps(["OK", event_id, True, ""])]


async def _json(request: web.Request) -> dict[str, Any]:
    text = await request.text()
    if not text.strip():
        return {}
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        raise NexusError(400, "invalid_body", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise NexusError(400, "invalid_body", "the body must be a JSON object")
    return body


def _public_ws(request: web.Request) -> str:
    return f"ws://{request.host}/"
