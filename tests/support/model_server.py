"""A scripted model server on loopback speaking the OpenAI Responses API's streaming form
(`POST /v1/responses`, server-sent events), as Codex's model provider config uses it: each
request gets the next scripted reply, a list of output items (a message, a function call),
or waits for `release` when the reply is `HOLD`. Every request body is kept for the test."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

HOLD = "hold"


def message(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "role": "assistant",
        "id": f"msg-{abs(hash(text)) % 10**8}",
        "content": [{"type": "output_text", "text": text}],
    }


def function_call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": json.dumps(arguments),
    }


class ModelServer:
    def __init__(self, script: list[list[dict[str, Any]] | str]) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        self.got_request = asyncio.Event()
        self.release = asyncio.Event()
        self.url = ""

    def tool_outputs(self, n: int) -> list[str]:
        """What Codex sent back for function calls in request `n` (0-based)."""
        return [
            str(i.get("output"))
            for i in self.requests[n]["input"]
            if i.get("type") == "function_call_output"
        ]

    async def _respond(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(await request.json())
        self.got_request.set()
        n = len(self.requests)
        reply = self.script.pop(0) if self.script else [message("(the script is over)")]
        if reply == HOLD:
            await self.release.wait()
            reply = [message("released")]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        rid = f"resp-{n}"
        events: list[dict[str, Any]] = [{"type": "response.created", "response": {"id": rid}}]
        events += [{"type": "response.output_item.done", "item": item} for item in reply]
        usage = {
            "input_tokens": 0,
            "input_tokens_details": None,
            "output_tokens": 0,
            "output_tokens_details": None,
            "total_tokens": 0,
        }
        events.append({"type": "response.completed", "response": {"id": rid, "usage": usage}})
        for event in events:
            await response.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
        await response.write_eof()
        return response


@asynccontextmanager
async def model_server(script: list[list[dict[str, Any]] | str]) -> AsyncIterator[ModelServer]:
    server = ModelServer(script)
    app = web.Application()
    app.router.add_post("/v1/responses", server._respond)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield server
    finally:
        server.release.set()
        await runner.cleanup()
