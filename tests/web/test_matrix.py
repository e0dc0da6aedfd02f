"""RELIABILITY T10 for the web routes: Host × Origin × session state × read/mutate."""

from __future__ import annotations

import itertools
from functools import partial

import aiohttp
from support import host_cases, origin_cases
from yarl import URL

from .conftest import WebClient


async def test_web_host_origin_session_matrix(web: WebClient) -> None:
    """Only allowed Host ∧ (no Origin ∨ exact Origin) ∧ a valid session (and CSRF) pass."""
    port = web.daemon.port
    hosts = host_cases(port)
    origins = partial(origin_cases, port)
    cookie_name = f"autopilotd_session_{port}"
    good_cookie = web.session.cookie_jar.filter_cookies(URL(web.base))[cookie_name].value
    sessions = [(None, False), ("x" * 43, False), (good_cookie, True)]
    ops = [("GET", "/pane/wallet", False), ("POST", "/do/logs.mark", True)]
    total = passed = expected_marks = 0
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        for (host, host_ok), (cookie, cookie_ok), (method, path, mutates) in itertools.product(
            hosts, sessions, ops
        ):
            for origin, origin_ok in origins(host):
                headers = {"Host": host, "X-CSRF-Token": web.csrf}
                if origin is not None:
                    headers["Origin"] = origin
                if cookie is not None:
                    headers["Cookie"] = f"{cookie_name}={cookie}"
                data = {"message": f"matrix {total}"} if mutates else None
                async with s.request(method, web.base + path, headers=headers, data=data) as r:
                    status, text = r.status, await r.text()
                    assert "Access-Control-Allow-Origin" not in r.headers
                    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
                should_pass = host_ok and origin_ok and cookie_ok
                total += 1
                if should_pass:
                    assert status == 200, (host, origin, cookie, path, status, text)
                    passed += 1
                    expected_marks += mutates
                else:
                    assert status in (401, 403), (host, origin, cookie, path, status)
                    assert "Payment history" not in text
    assert total == 216 and passed == 3 * 2 * 2
    events = await web.daemon.call("events.wait", {"after": 0, "timeout_s": 0, "limit": 1000})
    marks = sum(e["name"] == "logs.marked" for e in events["events"])
    assert marks == expected_marks == 6
