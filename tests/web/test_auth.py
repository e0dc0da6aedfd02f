"""Login, session cookie and CSRF rules of the web UI (RELIABILITY C1, C2, C5, C7)."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import aiohttp
import pytest
from support import InProcessDaemon

from autopilotd.client import RpcError
from autopilotd.ctl.main import run as ctl_run
from autopilotd.web.auth import LOGIN_TTL_S, WebAuth

from .conftest import WebClient


async def _marks(d: InProcessDaemon) -> int:
    events = await d.call("events.wait", {"after": 0, "timeout_s": 0, "limit": 1000})
    return sum(e["name"] == "logs.marked" for e in events["events"])


async def test_no_cookie_no_data(daemon: InProcessDaemon) -> None:
    base = f"http://127.0.0.1:{daemon.port}"
    host = {"Host": f"127.0.0.1:{daemon.port}"}
    session_id = (await daemon.call("status"))["daemon"]["session_id"]
    async with aiohttp.ClientSession() as s:
        async with s.get(base + "/", headers=host) as r:
            html = await r.text()
            assert r.status == 401
            assert "autopilotctl web" in html and "pane-wallet" not in html
            assert session_id not in html and "control_plane" not in html
        for path in ("/pane/wallet", "/pane/hud", "/events/stream"):
            async with s.get(base + path, headers=host) as r:
                assert r.status == 401, path
                assert session_id not in await r.text()
        async with s.get(
            base + "/pane/wallet", headers={**host, "Accept": "application/json"}
        ) as r:
            assert r.status == 401 and "autopilotctl web" in (await r.json())["error"]
        async with s.post(base + "/do/logs.mark", data={"message": "x"}, headers=host) as r:
            assert r.status == 401
    assert await _marks(daemon) == 0


async def test_login_link_sets_a_strict_httponly_cookie_and_works_once(
    daemon: InProcessDaemon,
) -> None:
    base = f"http://127.0.0.1:{daemon.port}"
    host = {"Host": f"127.0.0.1:{daemon.port}"}
    link = await daemon.call("web.login_url")
    assert link["url"].startswith(f"{base}/login?token=") and len(link["url"]) > len(base) + 50
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        async with s.get(link["url"], headers=host, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/"
            cookie = r.headers["Set-Cookie"]
        assert cookie.startswith(f"autopilotd_session_{daemon.port}=")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        async with s.get(base + "/", headers=host) as r:
            assert r.status == 200
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        async with s.get(link["url"], headers=host, allow_redirects=False) as r:
            assert r.status == 403 and "already used or has expired" in await r.text()
            assert "Set-Cookie" not in r.headers
        async with s.get(base + "/login?token=" + "x" * 43, headers=host) as r:
            assert r.status == 403


def test_login_tokens_expire_and_sessions_are_capped() -> None:
    now = [1000.0]
    auth = WebAuth(1234, clock=lambda: now[0])
    token = auth.new_login_token()
    now[0] += LOGIN_TTL_S + 1
    assert auth.redeem(token) is None
    sessions = [auth.redeem(auth.new_login_token()) for _ in range(20)]
    assert all(sessions)
    assert auth.session(sessions[0]) is None and auth.session(sessions[-1]) is not None
    auth.end(sessions[-1])
    assert auth.session(sessions[-1]) is None


async def test_mutations_need_the_csrf_header(web: WebClient) -> None:
    d = web.daemon
    status, _ = await web.do("logs.mark", {"message": "no header"}, csrf=None, accept_json=True)
    assert status == 403
    status, _ = await web.do("logs.mark", {"message": "wrong"}, csrf="x" * 43, accept_json=True)
    assert status == 403
    assert await _marks(d) == 0
    status, body = await web.do("logs.mark", {"message": "right"}, accept_json=True)
    assert status == 200, body
    assert await _marks(d) == 1


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({"Origin": "http://evil.example"}, False),
        ({"Origin": "null"}, False),
        ({"Origin": "http://127.0.0.1:1"}, False),
        ({"Sec-Fetch-Site": "cross-site"}, False),
        ({"Sec-Fetch-Site": "same-site"}, False),
        ({"Host": "evil.example"}, False),
        ({"Sec-Fetch-Site": "same-origin"}, True),
        ({}, True),
    ],
)
async def test_origin_host_and_fetch_site_rules(
    web: WebClient, headers: dict[str, str], allowed: bool
) -> None:
    status, _ = await web.do("logs.mark", {"message": "m"}, accept_json=True, **headers)
    assert (status == 200) is allowed, status
    assert await _marks(web.daemon) == (1 if allowed else 0)


async def test_exact_origin_passes(web: WebClient) -> None:
    status, _ = await web.do("logs.mark", {"message": "m"}, Origin=web.base, accept_json=True)
    assert status == 200


async def test_logout_ends_the_session(web: WebClient) -> None:
    async with web.session.post(
        web.base + "/logout", headers=web.headers(**{"X-CSRF-Token": web.csrf})
    ) as r:
        assert r.status == 204 and r.headers["HX-Redirect"] == "/"
    status, _ = await web.get("/pane/wallet")
    assert status == 401


async def test_login_url_needs_the_owner(daemon: InProcessDaemon) -> None:
    read = await daemon.call("auth.token_create", {"scope": "control"})
    async with daemon.client(read["token"]) as c:
        with pytest.raises(RpcError) as err:
            await c.call("web.login_url")
    assert "owner" in err.value.message


async def test_autopilotctl_web_prints_a_login_link(
    daemon: InProcessDaemon, monkeypatch: Any
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = await ctl_run(["--home", str(daemon.paths.home), "web", "--no-open"])
    assert code == 0
    url = out.getvalue().strip()
    assert url.startswith(f"http://127.0.0.1:{daemon.port}/login?token=")
