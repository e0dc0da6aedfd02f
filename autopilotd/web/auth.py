"""Browser sessions for the web UI (RELIABILITY C1, C7).

A person logs in by opening a one-time URL (`web.login_url`, printed by `autopilotctl web`):
its token is spent on first use and expires within minutes. The session it opens lives in an
HttpOnly, SameSite=Strict cookie; each session also has a CSRF token that every mutating request
must carry in the `X-CSRF-Token` header, which a cross-origin page cannot set without a CORS
preflight that this server never grants. Secrets are kept only as SHA-256 digests and compared
in constant time; everything lives in memory and dies with the daemon.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

LOGIN_TTL_S = 300.0
MAX_PENDING_LOGINS = 16
MAX_SESSIONS = 16
CSRF_HEADER = "X-CSRF-Token"


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True)
class WebSession:
    csrf: str
    created_at: float

    def csrf_ok(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.csrf.encode())


class WebAuth:
    """One-time login tokens and the sessions they open."""

    def __init__(self, port: int = 0, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.bind(port, "")
        self._logins: OrderedDict[bytes, float] = OrderedDict()
        self._sessions: OrderedDict[bytes, WebSession] = OrderedDict()

    def bind(self, port: int, base_url: str) -> None:
        """Set the control plane's port and URL, known once its socket is bound."""
        self.cookie_name = f"autopilotd_session_{port}"  # cookies ignore ports; names do not
        self.base_url = base_url

    def new_login_token(self) -> str:
        """A fresh one-time token (256 bits), valid for LOGIN_TTL_S seconds."""
        token = secrets.token_urlsafe(32)
        self._logins[_digest(token)] = self._clock() + LOGIN_TTL_S
        while len(self._logins) > MAX_PENDING_LOGINS:
            self._logins.popitem(last=False)
        return token

    def redeem(self, token: str) -> str | None:
        """Spend a login token; return a new session id, or None if it is unknown or stale."""
        expires = self._logins.pop(_digest(token), None)
        if expires is None or expires < self._clock():
            return None
        session_id = secrets.token_urlsafe(32)
        self._sessions[_digest(session_id)] = WebSession(secrets.token_urlsafe(32), self._clock())
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session_id

    def session(self, session_id: str | None) -> WebSession | None:
        if not session_id:
            return None
        return self._sessions.get(_digest(session_id))

    def end(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(_digest(session_id), None)
