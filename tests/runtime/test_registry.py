"""The registry walk: every command is typed, documented and returns JSON."""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest

from autopilotd.errors import Forbidden, InvalidParams, NotFound, NotReady
from autopilotd.registry import ACCESS_RANK, RegistrationError, Registry
from autopilotd.runtime.context import Runtime


async def test_every_command_is_documented_typed_and_json(runtime: Runtime) -> None:
    commands = runtime.registry.commands()
    assert len(commands) >= 15
    for cmd in commands:
        assert cmd.help.strip(), cmd.name
        assert cmd.access in ACCESS_RANK
        for p in cmd.params:
            assert p.type in {"string", "integer", "number", "boolean", "array", "object"}
        json.dumps(cmd.describe())
        json.dumps(cmd.input_schema())


SAMPLE_ARGS: dict[str, dict[str, Any]] = {
    "status.wait": {"after_seq": 0, "timeout_s": 0},
    "events.wait": {"timeout_s": 0},
    "wait.until": {"condition": "daemon-ready", "timeout_s": 0},
}


async def test_every_read_command_returns_json(runtime: Runtime) -> None:
    called = 0
    for cmd in runtime.registry.commands():
        if cmd.access != "read":
            continue
        args = SAMPLE_ARGS.get(cmd.name, {})
        if any(p.required and p.name not in args for p in cmd.params):
            continue
        try:
            result = await runtime.registry.call(cmd.name, args, scope="read")
        except NotReady:
            continue  # e.g. the wallet is off here: a documented, user-facing answer
        json.dumps(result)
        called += 1
    assert called >= 9


def test_the_builtin_names() -> None:
    expected = {
        "system.commands",
        "system.version",
        "status",
        "events.wait",
        "logs.tail",
        "daemon.stop",
    }
    reg = Registry()
    from autopilotd.commands import BUILTINS

    class _Dummy:
        pass

    for register in BUILTINS:
        register(reg, _Dummy())  # type: ignore[arg-type]
    assert expected <= {c.name for c in reg.commands()}


def test_registration_refuses_bad_commands() -> None:
    reg = Registry()

    def sync(x: int) -> dict[str, Any]:
        """Doc."""
        return {}

    async def undocumented(x: int) -> dict[str, Any]:
        return {}

    async def untyped(x) -> dict[str, Any]:  # type: ignore[no-untyped-def]
        """Doc."""
        return {}

    async def bad_type(x: bytes) -> dict[str, Any]:
        """Doc."""
        return {}

    async def bad_return(x: int) -> bytes:
        """Doc."""
        return b""

    async def star(*args: int) -> dict[str, Any]:
        """Doc."""
        return {}

    for func in (sync, undocumented, untyped, bad_type, bad_return, star):
        with pytest.raises(RegistrationError):
            reg.add("x.bad", func)  # type: ignore[arg-type]

    async def spend(amount: int) -> dict[str, Any]:
        """Doc."""
        return {}

    with pytest.raises(RegistrationError, match="owner"):
        reg.add("x.spend", spend, access="control", moves_money=True)
    reg.add("x.ok", spend)
    with pytest.raises(RegistrationError, match="twice"):
        reg.add("x.ok", spend)
    with pytest.raises(RegistrationError):
        reg.add("Bad Name", spend)


async def test_call_checks_arguments_and_scope() -> None:
    reg = Registry()

    @reg.command("t.echo", access="control")
    async def echo(
        text: str,
        times: int = 1,
        ratio: float = 1.0,
        loud: bool = False,
        mode: Literal["a", "b"] = "a",
        tags: list[str] | None = None,
    ) -> dict[str, Any]:
        """Echo the text."""
        return {"text": text * times, "ratio": ratio, "loud": loud, "mode": mode, "tags": tags}

    assert (await reg.call("t.echo", {"text": "x", "times": 2, "ratio": 2}, scope="owner"))[
        "text"
    ] == "xx"
    bad = [
        {},
        {"text": 1},
        {"text": "x", "times": True},
        {"text": "x", "times": "2"},
        {"text": "x", "loud": 1},
        {"text": "x", "mode": "c"},
        {"text": "x", "tags": ["a", 1]},
        {"text": "x", "extra": 1},
    ]
    for params in bad:
        with pytest.raises(InvalidParams):
            await reg.call("t.echo", params, scope="owner")
    with pytest.raises(Forbidden):
        await reg.call("t.echo", {"text": "x"}, scope="read")
    with pytest.raises(NotFound):
        await reg.call("t.missing", {}, scope="owner")


async def test_strings_must_be_valid_unicode_at_any_depth() -> None:
    """A lone surrogate (JSON `"\\ud800"`) is refused as bad params, wherever it is nested."""
    reg = Registry()

    @reg.command("t.take")
    async def take(
        text: str = "",
        tags: list[str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Take the arguments."""
        return {}

    lone = json.loads('"\\ud800"')
    fine = {"text": "é ✓ 𝄞", "tags": ["ü"], "extra": {"ß": [{"b": "ok"}]}}
    assert await reg.call("t.take", fine, scope="read") == {}
    bad = {
        "text": {"text": lone},
        "tags": {"tags": ["fine", "x" + lone]},
        "extra": {"extra": {"a": [1, {"b": ["deep", lone]}]}},
    }
    for name, params in bad.items():
        with pytest.raises(InvalidParams, match=f"'{name}' must be valid Unicode"):
            await reg.call("t.take", params, scope="read")
    with pytest.raises(InvalidParams, match="'extra' must be valid Unicode"):
        await reg.call("t.take", {"extra": {"k" + lone: 1}}, scope="read")
