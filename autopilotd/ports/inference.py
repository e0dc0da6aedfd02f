"""The inference port: what the daemon needs from a local runtime, in our own types.

The local runtime service (inference/service.py) is the `Inference` the provider gets: it
answers only while the runtime it supervises is ready, through an `InferenceClient` (the
psionic adapter, or a fake in fast tests) made by the factory it was given.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class InferenceError(Exception):
    """The runtime failed a request; `reason` is short and safe to show."""

    def __init__(self, reason: str, *, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


@dataclass(frozen=True)
class ModelInfo:
    id: str
    kind: str  # psionic's kinds: "chat" | "embeddings"
    state: str  # "cold" | "loading" | "warm" | "error"
    precision: str | None = None

    @property
    def warm(self) -> bool:
        return self.state == "warm"


@dataclass(frozen=True)
class RuntimeStatus:
    healthy: bool
    ready: bool = False  # at least one model is warm
    device: str | None = None
    dtype: str | None = None
    models: tuple[ModelInfo, ...] = ()
    queue_depth: int = 0
    last_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def warm_model(self, kind: str) -> ModelInfo | None:
        return next((m for m in self.models if m.kind == kind and m.warm), None)


@dataclass(frozen=True)
class Completion:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


@dataclass(frozen=True)
class ToolCall:
    """A call the model made: `arguments` is a JSON object, as text (OpenAI's shape)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ChatChunk:
    """A piece of a streamed chat completion: text, then at the end the calls and the reason
    (`stop`, `length`, `tool_calls`)."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None


@dataclass(frozen=True)
class ChatModelState:
    """Whether the chat model a local engine wants can run a turn now, in words."""

    ready: bool
    model: str | None
    reason: str


class Inference(Protocol):
    async def status(self) -> RuntimeStatus: ...

    async def chat(
        self,
        messages: list[dict[str, str]],
        *,
        model: str | None,
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None = None,
    ) -> Completion: ...

    async def embed(self, texts: list[str], *, model: str | None) -> list[list[float]]: ...

    async def warm(self, model: str) -> None: ...

    async def unload(self, model: str) -> None: ...

    def stream_chat(
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
        """A chat completion with OpenAI function tools, streamed."""
        ...


class ToolChat(Protocol):
    """What a local chat engine needs: the local runtime (inference/service.py)."""

    def chat_model(self) -> ChatModelState: ...

    def stream_chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        model: str | None,
        tools: Sequence[dict[str, Any]],
        tool_choice: Any,
        max_tokens: int,
        temperature: float,
        seed: int | None = None,
    ) -> AsyncIterator[ChatChunk]: ...


class InferenceClient(Inference, Protocol):
    """A client of one runtime at one URL (the adapter: psionic over HTTP)."""

    async def close(self) -> None: ...
