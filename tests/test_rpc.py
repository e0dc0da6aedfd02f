"""The JSON-RPC control plane: the T10 matrix, error mapping, caps and headers."""

from __future__ import annotations

import asyncio
import itertools
import json
from functools import partial
from typing import Any

import aiohttp
import pytest
from support import DaemonFactory, InProcessDaemon, host_cases, origin_cases

from autopilotd.registry import Registry
from autopilotd.runtime.context import Runtime


def _test_commands(reg: Registry, rt: Runtime) -> None:
    @reg.command("test.crash")
    async def crash() -> dict[str, Any]:
        """Raise an internal error whose text must not reach the client."""
        raise RuntimeError("secret internal detail /home/user/.seed")

    @reg.command("test.hang")
    async def hang() -> dict[str, Any]:
        """Never finish (the per-call timeout must stop it)."""
        await asyncio.sleep(3600)
        return {}


async def _post(
    port: int,
    body: Any,
    *,
    headers: dict[str, str],
    raw: bytes | None = None,
) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    async with aiohttp.ClientSession() as s:
        data = raw if raw is not None else json.dumps(body).encode()
        async with s.post(f"http://127.0.0.1:{port}/rpc", data=data, headers=headers) as r:
            text = await r.text()
            try:
                payload = json.loads(text) if text else None
            except json.JSONDecodeError:
                payload = text
            return r.status, payload, dict(r.headers)


def _auth(d: InProcessDaemon, **extra: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {d.endpoint.token}",
        "Content-Type": "application/json",
        "Host": f"127.0.0.1:{d.port}",
        **extra,
    }


def _rpc(method: str, params: dict[str, Any] | None = None, id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "method": method, "params": params or {}}


async def test_t10_host_origin_auth_matrix(daemon: InProcessDaemon) -> None:
    """216 requests: only allowed Host ∧ (no Origin ∨ exact Origin) ∧ valid token pass."""
    port = daemon.port
    hosts = host_cases(port)
    origins = partial(origin_cases, port)

    auths = [(None, False), ("wrong-" + "x" * 40, False), (daemon.endpoint.token, True)]
    ops = [("status", False), ("logs.mark", True)]
    before = await daemon.call("events.wait", {"after": 0, "timeout_s": 0, "limit": 1000})
    marks_before = sum(e["name"] == "logs.marked" for e in before["events"])
    total = passed = expected_marks = 0
    for (host, host_ok), (token, token_ok), (method, mutates) in itertools.product(
        hosts, auths, ops
    ):
        for origin, origin_ok in origins(host):
            headers = {"Host": host, "Content-Type": "application/json"}
            if origin is not None:
                headers["Origin"] = origin
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
            params = {"message": f"matrix {total}"} if mutates else {}
            status, payload, resp_headers = await _post(port, _rpc(method, params), headers=headers)
            should_pass = host_ok and origin_ok and token_ok
            total += 1
            assert "Access-Control-Allow-Origin" not in resp_headers
            assert "frame-ancestors 'none'" in resp_headers["Content-Security-Policy"]
            if should_pass:
                assert status == 200 and "result" in payload, (host, origin, token, method)
                passed += 1
                expected_marks += mutates
            else:
                assert status in (401, 403), (host, origin, token, method, status)
                assert not (isinstance(payload, dict) and "result" in payload)
    assert total == 216
    assert passed == 3 * 2 * 2
    after = await daemon.call("events.wait", {"after": 0, "timeout_s": 0, "limit": 1000})
    marks_after = sum(e["name"] == "logs.marked" for e in after["events"])
    assert marks_after - marks_before == expected_marks == 6


async def test_errors_map_to_codes_and_never_leak(daemon_factory: DaemonFactory) -> None:
    d = await daemon_factory(registrars=[_test_commands], call_timeout_s=0.5)
    h = _auth(d)
    status, payload, _ = await _post(d.port, _rpc("test.crash"), headers=h)
    assert status == 200
    err = payload["error"]
    assert err["code"] == -32603 and err["message"] == "Internal error"
    assert "secret" not in json.dumps(payload) and "RuntimeError" not in json.dumps(payload)
    assert len(err["data"]["correlation_id"]) == 12
    logged = await d.call("logs.tail", {"lines": 50})
    assert any(err["data"]["correlation_id"] in r["message"] for r in logged["records"])

    _, payload, _ = await _post(d.port, _rpc("test.hang"), headers=h)
    assert payload["error"]["code"] == -32021

    _, payload, _ = await _post(d.port, _rpc("logs.tail", {"lines": 0}), headers=h)
    assert payload["error"]["code"] == -32602 and "lines" in payload["error"]["message"]
    _, payload, _ = await _post(d.port, _rpc("logs.tail", {"bogus": 1}), headers=h)
    assert payload["error"]["code"] == -32602
    _, payload, _ = await _post(d.port, _rpc("no.such"), headers=h)
    assert payload["error"]["code"] == -32601
    _, payload, _ = await _post(d.port, None, headers=h, raw=b"{not json")
    assert payload["error"]["code"] == -32700
    _, payload, _ = await _post(
        d.port, {"jsonrpc": "2.0", "id": 1, "method": "status", "params": [1]}, headers=h
    )
    assert payload["error"]["code"] == -32602


async def test_caps_and_content_type(daemon_factory: DaemonFactory) -> None:
    d = await daemon_factory(max_body_bytes=4096, max_batch=3)
    h = _auth(d)
    status, _, _ = await _post(d.port, None, headers=h, raw=b'{"x":"' + b"a" * 10000 + b'"}')
    assert status == 413
    batch = [_rpc("system.version", id=i) for i in range(4)]
    _, payload, _ = await _post(d.port, batch, headers=h)
    assert payload["error"]["code"] == -32600
    _, payload, _ = await _post(d.port, batch[:3], headers=h)
    assert [r["id"] for r in payload] == [0, 1, 2]
    status, _, _ = await _post(d.port, _rpc("status"), headers={**h, "Content-Type": "text/plain"})
    assert status == 415
    status, _, _ = await _post(
        d.port, {"jsonrpc": "2.0", "method": "logs.mark", "params": {"message": "n"}}, headers=h
    )
    assert status == 204


async def test_scoped_tokens(daemon: InProcessDaemon) -> None:
    read = (await daemon.call("auth.token_create", {"scope": "read"}))["token"]
    control = (await daemon.call("auth.token_create", {"scope": "control"}))["token"]
    h = _auth(daemon)
    status, payload, _ = await _post(
        daemon.port, _rpc("status"), headers={**h, "Authorization": f"Bearer {read}"}
    )
    assert status == 200 and "result" in payload
    status, payload, _ = await _post(
        daemon.port,
        _rpc("logs.mark", {"message": "x"}),
        headers={**h, "Authorization": f"Bearer {read}"},
    )
    assert status == 403 and payload["error"]["code"] == -32031
    status, payload, _ = await _post(
        daemon.port,
        _rpc("logs.mark", {"message": "x"}),
        headers={**h, "Authorization": f"Bearer {control}"},
    )
    assert status == 200
    status, _, _ = await _post(
        daemon.port,
        _rpc("auth.token_create", {"scope": "read"}),
        headers={**h, "Authorization": f"Bearer {control}"},
    )
    assert status == 403


async def test_web_page_and_its_json_twin(daemon: InProcessDaemon) -> None:
    host = {"Host": f"127.0.0.1:{daemon.port}"}
    base = f"http://127.0.0.1:{daemon.port}"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        async with s.get(base + "/", headers=host) as r:
            html = await r.text()
            assert r.status == 401 and "control_plane" not in html  # no session, no data
            assert r.headers["X-Frame-Options"] == "DENY"
        login = await daemon.call("web.login_url")
        async with s.get(login["url"], headers=host, allow_redirects=False) as r:
            assert r.status == 303
        async with s.get(base + "/", headers=host) as r:
            html = await r.text()
            assert r.status == 200 and "control_plane" in html
        async with s.get(base + "/", headers={**host, "Accept": "application/json"}) as r:
            data = await r.json()
            assert data["daemon"]["state"] == "ready"
        async with s.get(base + "/pane/alerts_recovery", headers=host) as r:
            fragment = await r.text()
            assert "<html" not in fragment and "control_plane" in fragment
        async with s.get(base + "/pane/nope", headers=host) as r:
            assert r.status == 404
        async with s.get(base + "/", headers={"Host": "evil.example"}) as r:
            assert r.status == 403
        async with s.get(base + "/static/../manifest", headers=host) as r:
            assert r.status in (403, 404)


@pytest.mark.parametrize("path", ["/static/app.css"])
async def test_static_assets_are_served(daemon: InProcessDaemon, path: str) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.get(
            f"http://127.0.0.1:{daemon.port}{path}", headers={"Host": f"localhost:{daemon.port}"}
        ) as r,
    ):
        assert r.status == 200
