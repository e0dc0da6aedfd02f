"""Provider sessions, opened with a NIP-98 signature: the session's pubkey is the signer.

`POST /api/session` (and `/api/session/desktop`, the original's name) carries a NIP-98
`Authorization: Nostr …` header for that exact URL and method, with the body's hash. Each auth
event is accepted once (a replay is 409); a body that names another pubkey than the signer
(`bound_nostr_pubkey`, `provider_nostr_pubkey`) is 403. The answer is a bearer token for the
session's other calls; only its SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections import OrderedDict
from dataclasses import asdict
from typing import Any

from autopilotd.nexus.desk import NexusError
from autopilotd.nexus.repos import AuthSeen, Session, Sessions
from autopilotd.nostr.nip98 import MAX_AGE_S, MAX_AHEAD_S, Nip98Error, verify_auth_header
from autopilotd.runtime.clock import Clock

SESSION_TTL_S = 86_400.0
KNOWN_SESSIONS = 10_000
CLAIMED_PUBKEY_FIELDS = ("bound_nostr_pubkey", "provider_nostr_pubkey", "pubkey")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionDesk:
    def __init__(self, *, sessions: Sessions, seen: AuthSeen, clock: Clock) -> None:
        self._sessions = sessions
        self._seen = seen
        self._clock = clock
        self._live: dict[str, float] = {}  # pubkey → latest session expiry (the relay asks)
        self._known: OrderedDict[str, Session] = OrderedDict()  # token hash → session (LRU)

    async def load(self) -> None:
        """After a restart: the pubkeys with a live session, each until its session expires."""
        self._live.update(await self._sessions.live_pubkeys(self._clock.now()))

    def is_live(self, pubkey: str) -> bool:
        return self._live.get(pubkey, 0.0) > self._clock.now()

    async def open(
        self, *, authorization: str | None, url: str, method: str, body: bytes
    ) -> tuple[Session, str]:
        """Verify the NIP-98 request and open a session; returns it and its bearer token."""
        now = self._clock.now()
        auth = verify_auth_header(authorization, url=url, method=method, body=body, now=now)
        if isinstance(auth, Nip98Error):
            raise NexusError(401, "nip98_invalid", auth.reason)
        if not await self._seen.first_use(auth.event_id, now, 2 * (MAX_AGE_S + MAX_AHEAD_S)):
            raise NexusError(409, "nip98_replayed", "this auth event was used already")
        claims = _claims(body)
        for name in CLAIMED_PUBKEY_FIELDS:
            claimed = claims.get(name)
            if claimed and claimed != auth.pubkey:
                raise NexusError(403, "pubkey_mismatch", f"{name} is not the signer's pubkey")
        token = secrets.token_hex(32)
        session = Session(
            id="sess_" + secrets.token_hex(24),
            pubkey=auth.pubkey,
            token_hash=token_hash(token),
            client_id=str(claims.get("desktop_client_id") or claims.get("client_id") or "")[:100],
            created_at=now,
            expires_at=now + SESSION_TTL_S,
            last_dispatch_at=None,
        )
        await self._sessions.add(session)
        self._remember(session)
        self._live[session.pubkey] = max(self._live.get(session.pubkey, 0.0), session.expires_at)
        return session, token

    def _remember(self, session: Session) -> None:
        """Keep recently used sessions at hand (a session never changes what it authenticates:
        its key and expiry), so most calls ask the database nothing to know their caller."""
        self._known[session.token_hash] = session
        self._known.move_to_end(session.token_hash)
        while len(self._known) > KNOWN_SESSIONS:
            self._known.popitem(last=False)

    async def authenticate(self, authorization: str | None) -> Session:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NexusError(401, "missing_bearer_token")
        digest = token_hash(token.strip())
        session = self._known.get(digest) or await self._sessions.by_token_hash(digest)
        if session is None or not hmac.compare_digest(session.token_hash, digest):
            raise NexusError(401, "session_not_found")
        self._remember(session)
        if self._clock.now() >= session.expires_at:
            raise NexusError(401, "session_expired")
        return session


def session_json(session: Session, token: str | None = None) -> dict[str, Any]:
    data = asdict(session)
    del data["token_hash"], data["last_dispatch_at"]
    data["session_id"] = data.pop("id")
    data["issued_at_unix_ms"] = int(session.created_at * 1000)
    data["expires_at_unix_ms"] = int(session.expires_at * 1000)
    if token is not None:
        data["access_token"] = token
        data["token_type"] = "Bearer"
    return data


def _claims(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        claims = json.loads(body)
    except (ValueError, RecursionError):
        raise NexusError(400, "invalid_body", "the body is not JSON") from None
    if not isinstance(claims, dict):
        raise NexusError(400, "invalid_body", "the body must be a JSON object")
    return claims
