"""MCP over stdio with the official SDK client, and the spend guard (RELIABILITY T19)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from support import BIN, DaemonFactory, DaemonProcess

from autopilotd.client import Endpoint, RpcClient
from autopilotd.mcp.server import McpBridge, exposed, scoped_endpoint, tool_name
from autopilotd.registry import Registry
from autopilotd.runtime.context import Runtime


async def _mcp_session_tools(home: Path, *extra: str) -> tuple[list[str], Any]:
    params = StdioServerParameters(
        command=str(BIN / "autopilotd"),
        args=["mcp", "--home", str(home), *extra],
        env={**os.environ},
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        tools = await session.list_tools()
        status = await session.call_tool("status", {})
        return sorted(t.name for t in tools.tools), status


async def test_stdio_server_exposes_read_commands_only(
    daemon_process: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    d = daemon_process(tmp_path / "h")
    names, status = await asyncio.wait_for(_mcp_session_tools(d.home), 120)
    assert "status" in names and "system__version" in names
    assert "logs__mark" not in names and "daemon__stop" not in names
    assert not any(n.startswith(("auth__", "approvals__")) for n in names)
    assert not status.is_error
    payload = json.loads(status.content[0].text)
    assert payload["daemon"]["pid"] == d.proc.pid

    names, _ = await asyncio.wait_for(_mcp_session_tools(d.home, "--allow-control"), 120)
    assert "logs__mark" in names and "daemon__stop" in names


async def _mcp_tools(home: Path, *extra: str) -> dict[str, Any]:
    params = StdioServerParameters(
        command=str(BIN / "autopilotd"),
        args=["mcp", "--home", str(home), *extra],
        env={**os.environ},
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        return {t.name: t for t in (await session.list_tools()).tools}


async def test_tools_carry_annotations_from_access_and_money(
    daemon_process: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    d = daemon_process(tmp_path / "h")
    tools = await asyncio.wait_for(_mcp_tools(d.home, "--allow-control", "--allow-spend"), 120)

    def hints(name: str) -> tuple[bool | None, ...]:
        a = tools[name].annotations
        assert a is not None, f"{name} has no annotations"
        return a.read_only_hint, a.destructive_hint, a.idempotent_hint, a.open_world_hint

    # (readOnly, destructive, idempotent, openWorld)
    assert hints("status") == (True, False, True, False)
    assert hints("logs__mark") == (False, False, False, False)
    assert hints("wallet__pay") == (False, True, False, True)


async def test_read_only_token_gets_403(daemon_factory: DaemonFactory) -> None:
    d = await daemon_factory()
    read = await scoped_endpoint(d.endpoint, "read")
    async with aiohttp.ClientSession() as s:
        async with s.post(
            read.rpc_url,
            json={"jsonrpc": "2.0", "id": 1, "method": "logs.mark", "params": {"message": "x"}},
            headers={"Authorization": f"Bearer {read.token}"},
        ) as r:
            assert r.status == 403


def _spend_command(calls: list[dict[str, Any]]) -> Callable[[Registry, Runtime], None]:
    def register(reg: Registry, rt: Runtime) -> None:
        @reg.command("test.pay", access="owner", moves_money=True)
        async def pay(amount_sats: int) -> dict[str, Any]:
            """Pretend to pay (stands in for wallet.pay in this test)."""
            calls.append({"amount_sats": amount_sats})
            return {"paid": amount_sats}

    return register


async def test_spend_needs_a_persons_approval(daemon_factory: DaemonFactory) -> None:
    calls: list[dict[str, Any]] = []
    d = await daemon_factory(registrars=[_spend_command(calls)])
    spend = await scoped_endpoint(d.endpoint, "spend")
    async with RpcClient(spend) as agent:
        # The spend token cannot call the money command directly.
        bridge = McpBridge(agent, allow_control=False, allow_spend=True)
        names = [t.name for t in await bridge.tools()]
        assert "test__pay" in names and "logs__mark" not in names

        async def approve_when_asked(decision: bool) -> None:
            async with RpcClient(d.endpoint) as owner:
                for _ in range(200):
                    pending = [
                        a for a in await owner.call("approvals.list") if a["status"] == "pending"
                    ]
                    if pending:
                        method = "approvals.approve" if decision else "approvals.deny"
                        await owner.call(method, {"id": pending[0]["id"]})
                        return
                    await asyncio.sleep(0.02)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(approve_when_asked(False))
            denied = await bridge.call("test__pay", {"amount_sats": 10})
        assert denied.is_error and "did not approve" in denied.content[0].text
        assert calls == []

        async with asyncio.TaskGroup() as tg:
            tg.create_task(approve_when_asked(True))
            paid = await bridge.call("test__pay", {"amount_sats": 21})
        assert not paid.is_error and json.loads(paid.content[0].text) == {"paid": 21}
        assert calls == [{"amount_sats": 21}]

        # The approval is spent: executing it again does nothing.
        approvals = await agent.call("approvals.list")
        executed = [a for a in approvals if a["status"] == "executed"]
        assert len(executed) == 1
        try:
            await agent.call("approvals.execute", {"id": executed[0]["id"]})
        except Exception as exc:
            assert "executed" in str(exc)
        else:
            raise AssertionError("an approval must execute once")
        assert calls == [{"amount_sats": 21}]

        # Agents cannot approve their own requests.
        request = await agent.call(
            "approvals.request", {"command": "test.pay", "params": {"amount_sats": 5}}
        )
        try:
            await agent.call("approvals.approve", {"id": request["id"]})
        except Exception as exc:
            assert "owner" in str(exc)
        else:
            raise AssertionError("a spend token must not approve")


def test_exposure_rules() -> None:
    def cmd(name: str, access: str, money: bool = False) -> dict[str, Any]:
        return {"name": name, "access": access, "moves_money": money}

    assert exposed(cmd("status", "read"), allow_control=False, allow_spend=False)
    assert not exposed(cmd("logs.mark", "control"), allow_control=False, allow_spend=True)
    assert not exposed(cmd("wallet.pay", "owner", True), allow_control=True, allow_spend=False)
    assert exposed(cmd("wallet.pay", "owner", True), allow_control=False, allow_spend=True)
    assert not exposed(cmd("wallet.reveal_mnemonic", "owner"), allow_control=True, allow_spend=True)
    assert not exposed(cmd("approvals.list", "read"), allow_control=True, allow_spend=True)
    assert tool_name("wallet.pay") == "wallet__pay"
    assert Endpoint("u", "t").pid is None
