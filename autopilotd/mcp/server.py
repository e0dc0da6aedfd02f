"""An MCP stdio server over the same command registry (RELIABILITY S4, T19).

Tools are generated from `system.commands`. By default only read commands are exposed;
`--allow-control` adds state-changing ones; `--allow-spend` adds money-moving ones, and each of
those calls still waits until a person approves it outside the model (`autopilotctl
approvals.approve --id …` or the web UI). The server never keeps the owner token: it trades it
for a token of the narrowest scope that does the job, so the daemon enforces the same limits.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from autopilotd import __version__
from autopilotd.client import Endpoint, RpcClient, RpcError, locate
from autopilotd.errors import AutopilotError
from autopilotd.registry import Access

logger = logging.getLogger(__name__)

# Plumbing for agents' own credentials and approvals is never a tool.
HIDDEN_PREFIXES = ("auth.", "approvals.")
APPROVAL_WAIT_S = 600.0


def tool_name(command: str) -> str:
    """MCP clients accept `[A-Za-z0-9_-]`; dots become double underscores (reversible)."""
    return command.replace(".", "__")


def exposed(cmd: dict[str, Any], *, allow_control: bool, allow_spend: bool) -> bool:
    if cmd["name"].startswith(HIDDEN_PREFIXES):
        return False
    if cmd["moves_money"]:
        return allow_spend
    if cmd["access"] == "read":
        return True
    return cmd["access"] == "control" and allow_control


class McpBridge:
    """Lists and calls registry commands for an MCP client, through a scoped RPC client."""

    def __init__(self, client: RpcClient, *, allow_control: bool, allow_spend: bool) -> None:
        self._client = client
        self._allow_control = allow_control
        self._allow_spend = allow_spend
        self._commands: dict[str, dict[str, Any]] = {}

    async def refresh(self) -> None:
        commands = await self._client.call("system.commands")
        self._commands = {
            tool_name(c["name"]): c
            for c in commands
            if exposed(c, allow_control=self._allow_control, allow_spend=self._allow_spend)
        }

    async def tools(self) -> list[types.Tool]:
        await self.refresh()
        out = []
        for name, cmd in sorted(self._commands.items()):
            description = cmd["help"]
            if cmd["moves_money"]:
                description += "\n\nEach call waits until the user approves it outside this chat."
            out.append(
                types.Tool(
                    name=name,
                    description=description,
                    input_schema=_schema(cmd),
                    annotations=_annotations(cmd),
                )
            )
        return out

    async def call(self, name: str, arguments: dict[str, Any] | None) -> types.CallToolResult:
        if name not in self._commands:
            await self.refresh()
        cmd = self._commands.get(name)
        if cmd is None:
            return _error(f"no tool named '{name}' is exposed by this server")
        try:
            if cmd["moves_money"]:
                result = await self._approved_call(cmd["name"], arguments or {})
            else:
                result = await self._client.call(cmd["name"], arguments or {})
        except AutopilotError as exc:
            return _error(exc.message)
        text = json.dumps(result, indent=2, sort_keys=True)
        structured = result if isinstance(result, dict) else {"result": result}
        return types.CallToolResult(
            content=[types.TextContent(text=text)], structured_content=structured
        )

    async def _approved_call(self, command: str, params: dict[str, Any]) -> Any:
        approval = await self._client.call(
            "approvals.request",
            {"command": command, "params": params, "note": "requested over MCP"},
        )
        approval_id = approval["id"]
        logger.warning(
            "MCP asks to run %s; approve with: autopilotctl approvals.approve --id %s",
            command,
            approval_id,
        )
        deadline = time.monotonic() + APPROVAL_WAIT_S
        status = approval["status"]
        while status == "pending" and time.monotonic() < deadline:
            status = (
                await self._client.call("approvals.wait", {"id": approval_id, "timeout_s": 20})
            )["status"]
        if status != "approved":
            raise RpcError(-32031, f"the user did not approve this {command} (approval {status})")
        return (await self._client.call("approvals.execute", {"id": approval_id}))["result"]


def _annotations(cmd: dict[str, Any]) -> types.ToolAnnotations:
    """Hints for the client's confirmation prompts, from the command's access and money flag.

    A read command changes nothing, so repeating it is harmless; a money-moving one cannot be
    undone and pays someone on the network.
    """
    read = cmd["access"] == "read"
    money = bool(cmd["moves_money"])
    return types.ToolAnnotations(
        read_only_hint=read,
        destructive_hint=money,
        idempotent_hint=read,
        open_world_hint=money,
    )


def _schema(cmd: dict[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for p in cmd["params"]:
        schema: dict[str, Any] = (
            {"type": "array", "items": {"type": "string"}}
            if p["type"] == "array"
            else {"type": p["type"]}
        )
        if p.get("choices"):
            schema["enum"] = p["choices"]
        if not p["required"]:
            schema["default"] = p["default"]
        properties[p["name"]] = schema
    return {
        "type": "object",
        "properties": properties,
        "required": [p["name"] for p in cmd["params"] if p["required"]],
    }


def _error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=message)], is_error=True)


async def scoped_endpoint(owner: Endpoint, scope: Access) -> Endpoint:
    """Trade the owner token for a narrower one; the owner token is not kept."""
    async with RpcClient(owner) as client:
        issued = await client.call("auth.token_create", {"scope": scope})
    return Endpoint(owner.rpc_url, issued["token"], owner.web_url, owner.pid)


def build_server(bridge: McpBridge) -> Server[Any]:
    async def list_tools(
        ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=await bridge.tools())

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        return await bridge.call(params.name, params.arguments)

    return Server(
        "autopilotd",
        version=__version__,
        instructions="Tools of the local autopilotd daemon. Spending needs the user's approval.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


async def serve_stdio(
    *, home: str | None, manifest: str | None, allow_control: bool, allow_spend: bool
) -> int:
    scope: Access = "spend" if allow_spend else "control" if allow_control else "read"
    endpoint = await scoped_endpoint(locate(home=home, manifest=manifest), scope)
    async with RpcClient(endpoint) as client:
        bridge = McpBridge(client, allow_control=allow_control, allow_spend=allow_spend)
        server = build_server(bridge)
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
    return 0
