"""The Nexus over HTTP: NIP-98 to open a session, its bearer token for the starter calls.

Every answer is parsed into the port's types; an error answer becomes `NexusRefused` with the
Nexus's status and code, and anything that is not the protocol (no connection, a timeout, a
body that is not the expected JSON) becomes `NexusUnreachable`. A call whose token the Nexus
no longer knows (401 after a Nexus restart lost nothing, but a session can expire) is
answered as a refusal: the starter service opens a new session.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiohttp

from autopilotd.nostr.identity import NostrIdentity
from autopilotd.nostr.nip98 import auth_header
from autopilotd.ports.nexus import (
    NexusRefused,
    NexusSession,
    NexusUnreachable,
    PollAnswer,
    StarterOffer,
)

TIMEOUT_S = 10.0
MAX_ANSWER_BYTES = 256 * 1024


class HttpNexus:
    def __init__(self, url: str, identity: NostrIdentity, *, timeout_s: float = TIMEOUT_S) -> None:
        self._url = url.rstrip("/")
        self._identity = identity
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._http: aiohttp.ClientSession | None = None
        self._token: str | None = None

    @property
    def url(self) -> str:
        return self._url

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        return self._http

    async def _post(self, path: str, body: dict[str, Any], authorization: str) -> dict[str, Any]:
        data = json.dumps(body).encode()
        headers = {"Authorization": authorization, "Content-Type": "application/json"}
        try:
            async with self._client().post(self._url + path, data=data, headers=headers) as resp:
                raw = await resp.content.read(MAX_ANSWER_BYTES + 1)
                status = resp.status
        except aiohttp.ClientError as exc:
            raise NexusUnreachable(f"the Nexus is not reachable ({type(exc).__name__})") from None
        except TimeoutError:
            raise NexusUnreachable("the Nexus did not answer in time") from None
        try:
            answer = json.loads(raw) if len(raw) <= MAX_ANSWER_BYTES else None
        except (ValueError, RecursionError):
            answer = None
        if not isinstance(answer, dict):
            raise NexusUnreachable(f"the Nexus answered {status} without a JSON object")
        if status >= 400:
            code, message = answer.get("error"), answer.get("message")
            raise NexusRefused(
                status,
                code if isinstance(code, str) else "error",
                message if isinstance(message, str) else "",
            )
        return answer

    async def _call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        if self._token is None:
            raise NexusRefused(401, "no_session", "no session is open")
        return await self._post(path, body or {}, f"Bearer {self._token}")

    async def open_session(self) -> NexusSession:
        path = "/api/session"
        body = {"bound_nostr_pubkey": self._identity.pubkey_hex}
        data = json.dumps(body).encode()
        header = auth_header(self._identity, self._url + path, "POST", data)
        answer = await self._post(path, body, header)
        try:
            token = answer["access_token"]
            session = NexusSession(
                session_id=str(answer["session_id"]),
                pubkey=str(answer["pubkey"]),
                nexus_pubkey=str(answer["nexus_pubkey"]),
                relay_url=str(answer.get("relay_url") or ""),
                expires_at=float(answer["expires_at"]),
            )
        except (KeyError, TypeError, ValueError):
            raise NexusUnreachable("the Nexus's session answer is incomplete") from None
        if not isinstance(token, str) or session.pubkey != self._identity.pubkey_hex:
            raise NexusUnreachable("the Nexus bound the session to another key")
        self._token = token
        return session

    async def poll(self) -> PollAnswer:
        answer = await self._call("/api/starter-demand/poll")
        try:
            offers = tuple(StarterOffer.from_json(o) for o in answer.get("offers") or ())
            budget = answer.get("budget") or {}
            return PollAnswer(
                eligible=bool(answer["eligible"]),
                reason=str(answer["reason"]) if answer.get("reason") else None,
                offers=offers,
                budget={str(k): int(v) for k, v in budget.items()},
                heartbeat_interval_s=float(answer.get("heartbeat_interval_s") or 15.0),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise NexusUnreachable("the Nexus's poll answer is malformed") from None

    async def _offer(self, offer_id: str, action: str, body: dict[str, Any]) -> StarterOffer:
        answer = await self._call(
            f"/api/starter-demand/offers/{quote(offer_id, safe='')}/{action}", body
        )
        try:
            return StarterOffer.from_json(answer["offer"])
        except (KeyError, TypeError, ValueError):
            raise NexusUnreachable(f"the Nexus's {action} answer is malformed") from None

    async def ack(self, offer_id: str) -> StarterOffer:
        return await self._offer(offer_id, "ack", {})

    async def heartbeat(self, offer_id: str) -> StarterOffer:
        return await self._offer(offer_id, "heartbeat", {})

    async def fail(self, offer_id: str, reason: str) -> StarterOffer:
        return await self._offer(offer_id, "fail", {"failure_reason": reason})

    async def complete(self, offer_id: str, payment_hash: str) -> StarterOffer:
        return await self._offer(offer_id, "complete", {"payment_hash": payment_hash})
