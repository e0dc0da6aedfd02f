"""Web UI fixtures: a logged-in in-process client, daemons with a fake wallet node."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from support import InProcessDaemon
from support.chat import user_workspace  # noqa: F401 (a fixture, shared with tests/chat)

from autopilotd.adapters.fake_lightning import FakeNetwork

CSRF_RE = re.compile(r"hx-headers='([^']*)'")


@dataclass
class WebClient:
    """A browser stand-in: the session cookie in its jar and the page's CSRF token."""

    daemon: InProcessDaemon
    session: aiohttp.ClientSession
    csrf: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.daemon.port}"

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Host": f"127.0.0.1:{self.daemon.port}", **extra}

    async def get(self, path: str, **headers: str) -> tuple[int, str]:
        async with self.session.get(self.base + path, headers=self.headers(**headers)) as r:
            return r.status, await r.text()

    async def get_json(self, path: str) -> tuple[int, Any]:
        status, text = await self.get(path, Accept="application/json")
        return status, json.loads(text)

    async def do(
        self,
        command: str,
        data: dict[str, Any] | None = None,
        *,
        pane: str | None = None,
        json_body: dict[str, Any] | None = None,
        accept_json: bool = False,
        csrf: str | None = "",
        **headers: str,
    ) -> tuple[int, str]:
        h = self.headers(**headers)
        token = self.csrf if csrf == "" else csrf
        if token is not None:
            h["X-CSRF-Token"] = token
        if accept_json:
            h["Accept"] = "application/json"
        url = f"{self.base}/do/{command}" + (f"?pane={pane}" if pane else "")
        async with self.session.post(url, data=data, json=json_body, headers=h) as r:
            return r.status, await r.text()


async def login(daemon: InProcessDaemon) -> WebClient:
    result = await daemon.call("web.login_url")
    session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    host = {"Host": f"127.0.0.1:{daemon.port}"}
    async with session.get(result["url"], headers=host, allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"] == "/"
    async with session.get(f"http://127.0.0.1:{daemon.port}/", headers=host) as r:
        html = await r.text()
        assert r.status == 200, html
    match = CSRF_RE.search(html)
    assert match is not None
    csrf = json.loads(match.group(1).replace("&#34;", '"').replace("&quot;", '"'))["X-CSRF-Token"]
    return WebClient(daemon, session, csrf)


@pytest.fixture
async def web_login() -> AsyncIterator[Callable[[InProcessDaemon], Any]]:
    clients: list[WebClient] = []

    async def make(daemon: InProcessDaemon) -> WebClient:
        client = await login(daemon)
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.session.close()


@pytest.fixture
async def web(daemon: InProcessDaemon, web_login: Any) -> WebClient:
    client: WebClient = await web_login(daemon)
    return client


@pytest.fixture
def net() -> FakeNetwork:
    return FakeNetwork()
