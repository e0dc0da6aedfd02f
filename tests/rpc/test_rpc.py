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


def _errors(payload: Any) -> list[dict[str, Any]]:
    """Every error object in a reply (one response or a batch of them), each checked as ours.

    `data` is absent or carries only our own keys: never a parser's or library's text.
    """
    answers = payload if isinstance(payload, list) else [payload]
    errors = [a["error"] for a in answers if "error" in a]
    for err in errors:
        assert set(err) <= {"code", "message", "data"}, err
        assert isinstance(err["message"], str) and err["message"], err
        data = err.get("data", {})
        assert isinstance(data, dict) and set(data) <= {"correlation_id"}, err
    return errors


async def _marks(d: InProcessDaemon) -> list[str]:
    events = await d.call("events.wait", {"after": 0, "timeout_s": 0, "limit": 1000})
    return [e["fields"]["text"] for e in events["events"] if e["name"] == "logs.marked"]


def _mark(text: str, id: int | None = None) -> dict[str, Any]:
    """A `logs.mark` request; a notification when `id` is None."""
    request = {"jsonrpc": "2.0", "method": "logs.mark", "params": {"message": text}}
    return request if id is None else {**request, "id": id}


async def test_batch_empty_or_of_non_requests(daemon_factory: DaemonFactory) -> None:
    d = await daemon_factory()
    h = _auth(d)
    status, payload, _ = await _post(d.port, [], headers=h)
    assert status == 200 and isinstance(payload, dict)  # one error, not an array
    assert payload["id"] is None and payload["error"]["code"] == -32600
    _errors(payload)
    for batch in ([1], [1, 2, 3]):
        status, payload, _ = await _post(d.port, batch, headers=h)
        assert status == 200 and isinstance(payload, list) and len(payload) == len(batch)
        assert all(r["jsonrpc"] == "2.0" and r["id"] is None for r in payload)
        assert [e["code"] for e in _errors(payload)] == [-32600] * len(batch)
    _, payload, _ = await _post(
        d.port, None, headers=h, raw=b'[{"jsonrpc":"2.0","method":"status"},'
    )
    assert isinstance(payload, dict) and payload["error"]["code"] == -32700
    _errors(payload)


async def test_batch_answers_each_member(daemon_factory: DaemonFactory) -> None:
    """Valid calls run, invalid members get their own error, notifications get nothing."""
    d = await daemon_factory()
    h = _auth(d)
    batch: list[Any] = [
        _rpc("system.version", id=1),
        _mark("batch notification"),
        {"foo": "boo"},
        {"jsonrpc": "2.0", "id": 5},  # no method: its id can be read
        {"jsonrpc": "2.0", "method": 1, "params": "bar"},
        {"jsonrpc": "2.0", "id": True, "method": "status"},  # an id that is no id
        _rpc("no.such", id=6),
        {"jsonrpc": "2.0", "id": 7, "method": "status", "params": [1]},
        {"jsonrpc": "1.0", "id": 8, "method": "status"},
        _mark("batch call", id=9),
        {"jsonrpc": "2.0", "id": None, "method": "system.version"},  # a call, not a notification
        3,
    ]
    status, payload, _ = await _post(d.port, batch, headers=h)
    assert status == 200 and isinstance(payload, list) and len(payload) == len(batch) - 1
    by_id: dict[Any, list[dict[str, Any]]] = {}
    for answer in payload:
        assert answer["jsonrpc"] == "2.0"
        by_id.setdefault(answer["id"], []).append(answer)
    assert set(by_id) == {1, 5, 6, 7, 8, 9, None}
    assert by_id[1][0]["result"]["autopilotd"]
    assert by_id[5][0]["error"]["code"] == -32600
    assert by_id[6][0]["error"]["code"] == -32601
    assert by_id[7][0]["error"]["code"] == -32602
    assert by_id[8][0]["error"]["code"] == -32600
    assert isinstance(by_id[9][0]["result"]["event_id"], int)
    nulls = by_id[None]
    assert len(nulls) == 5
    assert sorted(a["error"]["code"] for a in nulls if "error" in a) == [-32600] * 4
    assert [a["result"]["autopilotd"] for a in nulls if "result" in a]
    _errors(payload)
    assert {"batch notification", "batch call"} <= set(await _marks(d))


async def test_batch_of_notifications_answers_nothing(daemon_factory: DaemonFactory) -> None:
    d = await daemon_factory()
    failing = {"jsonrpc": "2.0", "method": "no.such"}  # a notification's errors are not sent
    batch = [_mark("only 1"), failing, _mark("only 2")]
    status, payload, _ = await _post(d.port, batch, headers=_auth(d))
    assert status == 204 and payload is None
    assert {"only 1", "only 2"} <= set(await _marks(d))


async def test_batch_http_status_follows_scope_refusals(daemon_factory: DaemonFactory) -> None:
    d = await daemon_factory()
    read = (await d.call("auth.token_create", {"scope": "read"}))["token"]
    h = {**_auth(d), "Authorization": f"Bearer {read}"}
    status, payload, _ = await _post(d.port, [_mark("x", id=1), _mark("y", id=2)], headers=h)
    assert status == 403 and [e["code"] for e in _errors(payload)] == [-32031, -32031]
    status, payload, _ = await _post(d.port, [_mark("x", id=1), _rpc("status", id=2)], headers=h)
    assert status == 200 and [e["code"] for e in _errors(payload)] == [-32031]
    assert "x" not in await _marks(d)


async def test_lone_surrogate_is_bad_params(daemon_factory: DaemonFactory) -> None:
    d = await daemon_factory()
    h = _auth(d)
    raw = b'{"jsonrpc":"2.0","id":1,"method":"runtime.unload","params":{"model":"\\ud800"}}'
    status, payload, _ = await _post(d.port, None, headers=h, raw=raw)
    assert status == 200 and payload["id"] == 1
    [err] = _errors(payload)
    assert err["code"] == -32602 and "model" in err["message"] and "data" not in err
    raw = b'{"jsonrpc":"2.0","id":2,"method":"logs.mark","params":{"message":"a\\udc00b"}}'
    _, payload, _ = await _post(d.port, None, headers=h, raw=raw)
    assert payload["id"] == 2 and _errors(payload)[0]["code"] == -32602


async def test_errors_carry_only_our_text(daemon_factory: DaemonFactory) -> None:
    """Parse and request errors read as ours; `data` never holds a library's words."""
    d = await daemon_factory(registrars=[_test_commands])
    h = _auth(d)
    bodies = [
        b"{not json",
        b"NaN",
        b"[" * 100_000,
        b'"just a string"',
        b'{"jsonrpc":"2.0","id":1,"method":"status","params":"x"}',
        b'{"jsonrpc":"2.0","id":1,"method":"status","params":null}',
        b'{"jsonrpc":"2.0","id":{"a":1},"method":"status"}',
        b'{"jsonrpc":"2.0","id":1,"method":"logs.tail","params":{"lines":"x"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"no.such"}',
        b'{"jsonrpc":"2.0","id":1,"method":"test.crash"}',
    ]
    for raw in bodies:
        status, payload, _ = await _post(d.port, None, headers=h, raw=raw)
        assert status == 200, raw
        [err] = _errors(payload)
        assert err["code"] in (-32700, -32600, -32601, -32602, -32603), raw
