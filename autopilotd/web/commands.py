"""The web UI's own command: a one-time login link for the browser."""

from __future__ import annotations

from typing import Any

from autopilotd.errors import NotReady
from autopilotd.registry import Registry
from autopilotd.web.auth import LOGIN_TTL_S, WebAuth


def register(reg: Registry, auth: WebAuth) -> None:
    @reg.command("web.login_url", access="owner")
    async def web_login_url() -> dict[str, Any]:
        """Return a fresh one-time link that logs a browser into the web UI.

        The link works once, within five minutes; opening it sets a session cookie in that
        browser. `autopilotctl web` prints it and opens it in the default browser.
        """
        if not auth.base_url:
            raise NotReady("the web UI is not serving yet")
        token = auth.new_login_token()
        return {"url": f"{auth.base_url}login?token={token}", "expires_in_s": int(LOGIN_TTL_S)}
