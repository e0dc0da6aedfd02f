"""The psionic adapter: its OpenAI-compatible API plus its management endpoints, over HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import quote

import aiohttp

from autopilotd.adapters.http_session import LazySession
from autopilotd.ports.inference import (
    ChatChunk,
    Completion,
    InferenceError,
    ModelInfo,
    RuntimeStatus,
    ToolCall,
)


class PsionicClient:
    """Inference over a psionic server at `base_url` (loopback)."""

    def __init__(self, base_url: str, *, timeout_s: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = LazySession(timeout_s)
        self._models: tuple[ModelInfo, ...] = ()

    async def close(self) -> None:
        await self._client.close()

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            async with self._client().request(method, self.base_url + path, json=body) as resp:
                data = await resp.json(content_type=None)
                if resp.status >= 400:
                    error = data.get("error", {}) if isinstance(data, dict) else {}
                    message = error.get("message") if isinstance(error, dict) else str(error)
                    raise InferenceError(
                        f"psionic answered {resp.status}: {message or 'error'}",
                        retryable=resp.status in (429, 503),
                    )
                return data
        except aiohttp.ClientError as exc:
            raise InferenceError(
                f"psionic is not reachable ({type(exc).__name__})", retryable=True
            ) from None
        except TimeoutError:
            raise InferenceError("psionic did not answer in time", retryable=True) from None

    async def status(self) -> RuntimeStatus:
        """psionic's management status (GET /api/status), in our own types."""
        data = await self._request("GET", "/api/status")
        models = tuple(
            ModelInfo(
                id=str(m.get("id")),
                kind=str(m.get("kind", "chat")),
                state=str(m.get("state", "cold")),
                precision=m.get("precision"),
            )
            for m in data.get("models", [])
            if isinstance(m, dict)
        )
        self._models = models
        warm = [m for m in models if m.warm]
        return RuntimeStatus(
            healthy=True,
            ready=bool(data.get("ready", bool(warm))),
            device=data.get("device"),
            dtype=warm[0].precision if warm else None,
            models=models,
            queue_depth=sum(int(m.get("queue_depth", 0) or 0) for m in data.get("models", [])),
            last_error=data.get("last_error"),
        )

    def _default_model(self, kind: str) -> str:
        found = next((m.id for m in self._models if m.kind == kind and m.warm), None)
        found = found or next((m.id for m in self._models if m.kind == kind), None)
        if found is None:
            raise InferenceError(f"no {kind} model is loaded in psionic")
        return found

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
        body: dict[str, Any] = {
            "model": model or self._default_model("chat"),
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
        }
        if seed is not None:
            body["seed"] = seed
        data = await self._request("POST", "/v1/chat/completions", body)
        try:
            choice = data["choices"][0]
            usage = data.get("usage", {})
            return Completion(
                text=str(choice["message"]["content"]),
                model=str(data.get("model", model or "")),
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
                finish_reason=str(choice.get("finish_reason", "stop")),
            )
        except (KeyError, IndexError, TypeError, ValueError):
            raise InferenceError("psionic sent a malformed completion") from None

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
        """POST /v1/chat/completions with `stream`: text chunks as they come, then one chunk
        with the calls (their argument pieces joined) and the finish reason."""
        body: dict[str, Any] = {
            "model": model or self._default_model("chat"),
            "messages": list(messages),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
        }
        if tools:
            body["tools"] = list(tools)
            body["tool_choice"] = tool_choice
        if seed is not None:
            body["seed"] = seed
        calls: dict[int, dict[str, str]] = {}
        finish: str | None = None
        url = self.base_url + "/v1/chat/completions"
        try:
            async with self._client().post(url, json=body) as resp:
                if resp.status >= 400:
                    data = await resp.json(content_type=None)
                    error = data.get("error", {}) if isinstance(data, dict) else {}
                    message = error.get("message") if isinstance(error, dict) else None
                    raise InferenceError(
                        f"psionic answered {resp.status}: {message or 'error'}",
                        retryable=resp.status in (429, 503),
                    )
                async for raw in resp.content:
                    line = raw.decode(errors="replace").strip()
                    if not line.startswith("data: {"):
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        raise InferenceError("psionic failed mid-stream")
                    for choice in event.get("choices", []):
                        delta = choice.get("delta", {})
                        if delta.get("content"):
                            yield ChatChunk(text=str(delta["content"]))
                        for call in delta.get("tool_calls") or []:
                            seen = calls.setdefault(
                                int(call.get("index", 0)), {"id": "", "name": "", "arguments": ""}
                            )
                            function = call.get("function") or {}
                            seen["id"] = call.get("id") or seen["id"]
                            seen["name"] = function.get("name") or seen["name"]
                            seen["arguments"] += function.get("arguments") or ""
                        finish = choice.get("finish_reason") or finish
        except aiohttp.ClientError as exc:
            raise InferenceError(
                f"psionic is not reachable ({type(exc).__name__})", retryable=True
            ) from None
        except TimeoutError:
            raise InferenceError("psionic did not answer in time", retryable=True) from None
        except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
            raise InferenceError("psionic sent a malformed stream") from None
        made = tuple(ToolCall(c["id"], c["name"], c["arguments"]) for _, c in sorted(calls.items()))
        yield ChatChunk(tool_calls=made, finish_reason=finish or "stop")

    async def embed(self, texts: list[str], *, model: str | None) -> list[list[float]]:
        body: dict[str, Any] = {"input": texts, "model": model or self._default_model("embeddings")}
        data = await self._request("POST", "/v1/embeddings", body)
        try:
            rows = sorted(data["data"], key=lambda d: int(d["index"]))
            return [[float(x) for x in row["embedding"]] for row in rows]
        except (KeyError, TypeError, ValueError):
            raise InferenceError("psionic sent malformed embeddings") from None

    async def warm(self, model: str) -> None:
        await self._request("POST", f"/api/models/{quote(model, safe='')}/warm")

    async def unload(self, model: str) -> None:
        await self._request("POST", f"/api/models/{quote(model, safe='')}/unload")
