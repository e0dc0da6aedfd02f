"""The GPU arbiter: a swap reservation lock, the swap webhook, and a schedule registry.

When automation (not only a person) swaps models, a holder takes the lock and gets a secret
token; while the lock is held, swaps without that token are refused (HTTP 423). The lock
expires after its TTL so a crashed holder cannot wedge the machine, and a person can force
it open. After every swap a ``swap_complete`` or ``swap_failed`` event is posted to a
configured URL, signed with HMAC-SHA256 when a secret is set. The schedule registry is a
read-only declaration of who automates what, shown in status; psionic never runs it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import aiohttp

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
SIGNATURE_HEADER = "X-Psionic-Signature"


@dataclass(frozen=True)
class LockState:
    holder: str
    token: str
    acquired_at: float
    expires_at: float

    def public(self) -> dict[str, Any]:
        """What status shows: everything but the token."""
        return {
            "holder": self.holder,
            "acquired_at": self.acquired_at,
            "expires_at": self.expires_at,
        }


class LockHeld(Exception):
    """Someone else holds the lock (HTTP 423)."""

    def __init__(self, state: LockState) -> None:
        super().__init__(f"swap lock held by {state.holder!r}")
        self.state = state


class BadToken(Exception):
    """The token does not match the current lock (HTTP 403)."""


class SwapLock:
    """A single reservation with a TTL. All reads go through ``current()``."""

    MAX_TTL_S = 24 * 3600.0

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock
        self._state: LockState | None = None

    def current(self) -> LockState | None:
        """The live lock, or None when free or expired (one read of the state)."""
        state = self._state
        if state is not None and state.expires_at <= self._clock():
            return None
        return state

    def acquire(self, holder: str, ttl_s: float, token: str | None = None) -> LockState:
        """Take the lock, or extend it when ``token`` is the current holder's."""
        if not holder:
            raise ValueError("holder is required")
        if not 0 < ttl_s <= self.MAX_TTL_S:
            raise ValueError(f"ttl_s must be in (0, {self.MAX_TTL_S:.0f}]")
        now = self._clock()
        state = self.current()
        if state is not None:
            if token is None or not hmac.compare_digest(token, state.token):
                raise LockHeld(state)
            self._state = replace(state, holder=holder, expires_at=now + ttl_s)
            return self._state
        self._state = LockState(holder, secrets.token_urlsafe(24), now, now + ttl_s)
        return self._state

    def check(self, token: str | None) -> None:
        """Raise ``LockHeld`` unless the lock is free or ``token`` is its holder's."""
        state = self.current()
        if state is not None and (token is None or not hmac.compare_digest(token, state.token)):
            raise LockHeld(state)

    def release(self, token: str | None, force: bool = False) -> bool:
        """Free the lock; True if a live lock was released. ``force`` skips the token."""
        state = self.current()
        if state is None:
            self._state = None
            return False
        if not force and (token is None or not hmac.compare_digest(token, state.token)):
            raise BadToken()
        self._state = None
        return True


def sign(body: bytes, secret: str) -> str:
    """Header value for a webhook body: ``sha256=<hex HMAC-SHA256(secret, body)>``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class SwapWebhook:
    """Posts swap events as JSON to a URL; failures are logged, never raised."""

    def __init__(
        self, url: str | None, secret: str | None, clock: Clock = time.time, timeout_s: float = 5.0
    ) -> None:
        self.url = url
        self._secret = secret
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    def body(self, event: str, **details: Any) -> bytes:
        payload = {"event": event, "at": self._clock(), **details}
        return json.dumps(payload, sort_keys=True).encode()

    async def send(self, event: str, **details: Any) -> bool:
        if not self.url:
            return False
        body = self.body(event, **details)
        headers = {"Content-Type": "application/json"}
        if self._secret:
            headers[SIGNATURE_HEADER] = sign(body, self._secret)
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.post(self.url, data=body, headers=headers) as response,
            ):
                if response.status >= 300:
                    logger.warning("webhook %s answered %d", event, response.status)
                    return False
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("webhook %s failed: %s", event, exc)
            return False
        return True


@dataclass(frozen=True)
class ScheduleEntry:
    """A declared piece of automation: who swaps what, when (free text, e.g. a cron line)."""

    id: str
    owner: str
    action: str
    model: str
    when: str
    note: str
    created_at: float


class ScheduleRegistry:
    """Declarations only: listing them makes automation visible; nothing is executed."""

    FIELDS = ("owner", "action", "model", "when", "note")

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock
        self._entries: dict[str, ScheduleEntry] = {}

    def add(self, data: dict[str, Any]) -> ScheduleEntry:
        unknown = set(data) - {"id", *self.FIELDS}
        if unknown:
            raise ValueError(f"unknown fields: {', '.join(sorted(unknown))}")
        values = {name: data.get(name, "") for name in self.FIELDS}
        for name, value in values.items():
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a string")
        for name in ("owner", "action", "when"):
            if not values[name]:
                raise ValueError(f"{name} is required")
        entry_id = data.get("id") or uuid.uuid4().hex[:12]
        if not isinstance(entry_id, str):
            raise ValueError("id must be a string")
        entry = ScheduleEntry(id=entry_id, created_at=self._clock(), **values)
        self._entries[entry.id] = entry
        return entry

    def remove(self, entry_id: str) -> bool:
        return self._entries.pop(entry_id, None) is not None

    def list(self) -> list[dict[str, Any]]:
        return [asdict(e) for e in sorted(self._entries.values(), key=lambda e: e.created_at)]
