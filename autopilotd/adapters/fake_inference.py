"""An in-memory stand-in for psionic, for fast tests of the services that use inference.

A chat model and an embeddings model, both warm; a completion echoes a fixed text. A test
keeps a job running by clearing `running` (set it to let it finish), or makes it fail by
setting `failure`. Never used by the daemon, the demo or the end-to-end tests: those run the
real psionic.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from autopilotd.ports.inference import (
    ChatChunk,
    Completion,
    InferenceClient,
    InferenceError,
    ModelInfo,
    RuntimeStatus,
)

CHAT_MODEL = "fake-chat"
EMBEDDINGS_MODEL = "fake-embeddings"


class FakeInference:
    def __init__(self, url: str = "http://fake-psionic", reply: str = "fake answer") -> None:
        self.url = url
        self.reply = reply
        self.calls: list[str] = []
        self.running = asyncio.Event()
        self.running.set()
        self.failure: str | None = None

    async def _work(self, what: str) -> None:
        self.calls.append(what)
        await self.running.wait()
        if self.failure is not None:
            raise InferenceError(self.failure)

    async def close(self) -> None:
        return None

    async def status(self) -> RuntimeStatus:
        models = (
            ModelInfo(CHAT_MODEL, "chat", "warm", "fp32"),
            ModelInfo(EMBEDDINGS_MODEL, "embeddings", "warm", "fp32"),
        )
        return RuntimeStatus(healthy=True, ready=True, device="cpu", dtype="fp32", models=models)

    async def chat(
        self,
        messages: list[dict[str, str]],
        *,
        model: str | None,
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None = None,
    ) -> Completion:
        await self._work("chat")
        return Completion(self.reply, model or CHAT_MODEL, 1, 1, "stop")

    async def embed(self, texts: list[str], *, model: str | None) -> list[list[float]]:
        await self._work("embed")
        return [[float(len(t)), 1.0] for t in texts]

    async def stream_chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        model: str | None,
        tools: Sequence[dict[str, Any]],
        tool_choice: Any,
        max_tokens: int,
        temperature: float,
        seed: int | None = None,
    ) -> AsyncIterator[ChatChunk]:
        await self._work("stream_chat")
        yield ChatChunk(text=self.reply)
        yield ChatChunk(finish_reason="stop")

    async def warm(self, model: str) -> None:
        self.calls.append(f"warm {model}")

    async def unload(self, model: str) -> None:
        self.calls.append(f"unload {model}")


def _conforms(fake: FakeInference) -> InferenceClient:
    """Static check (mypy) that the fake follows the port."""
    return fake
