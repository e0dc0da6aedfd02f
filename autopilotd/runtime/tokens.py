"""Control-plane credentials: the owner token of this start, and narrower scoped tokens.

A fresh 256-bit owner token is made at every start and written only into the 0600 manifest.
Scoped tokens (read, control, spend) are issued by the owner for agents such as the MCP server;
they live in memory and die with the daemon. Comparisons are constant-time.
"""

from __future__ import annotations

import hmac
import secrets

from autopilotd.registry import Access


class TokenBook:
    def __init__(self) -> None:
        self.owner = secrets.token_hex(32)
        self._scoped: list[tuple[str, Access]] = []

    def issue(self, scope: Access) -> str:
        token = secrets.token_hex(32)
        self._scoped.append((token, scope))
        return token

    def revoke(self, token: str) -> bool:
        before = len(self._scoped)
        self._scoped = [(t, s) for t, s in self._scoped if not hmac.compare_digest(t, token)]
        return len(self._scoped) != before

    def scope_of(self, presented: str) -> Access | None:
        """The scope of `presented`, or None if it is no token of ours."""
        candidate = presented.encode()
        found: Access | None = None
        if hmac.compare_digest(candidate, self.owner.encode()):
            found = "owner"
        for token, scope in self._scoped:
            if hmac.compare_digest(candidate, token.encode()) and found is None:
                found = scope
        return found
