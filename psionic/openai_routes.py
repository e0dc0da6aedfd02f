"""OpenAI wire format: ``/v1/models``, ``/v1/chat/completions`` (JSON or SSE, with tools and
``tool_calls``: psionic/tools.py), ``/v1/embeddings``.

Requests are validated strictly: a field this server does not implement is answered with an
OpenAI-style 400 naming it, never ignored. Work goes to the model's worker queue; a full
queue is a 429 with ``Retry-After``; a client that goes away cancels its job.
"""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from aiohttp import web

from psionic.batch import ChatRequest
from psionic.embeddings import Coalescer, Embedder
from psionic.engine import ContextTooLong, Engine, Finished, TextDelta
from psionic.errors import ApiError, invalid, unsupported
from psionic.registry import ModelKind
from psionic.runtime import Runtime, ServedModel
from psionic.sampling import SamplingParams
from psionic.tools import Splitter, ToolCall, ToolRequest, parse_tools, render_tools
from psionic.tools import message as tool_message
from psionic.worker import JobFailed, JobHandle, QueueFull

RETRY_AFTER_S = 1
MAX_EMBED_INPUTS = 2048

_CHAT_FIELDS = {
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "n",
    "user",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "metadata",
    "store",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
}
_EMBED_FIELDS = {"model", "input", "encoding_format", "dimensions", "user"}


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise invalid(name, f"'{name}' must be a number in [{lo}, {hi}].")
    return float(value)


def _integer(body: dict[str, Any], name: str, lo: int, hi: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise invalid(name, f"'{name}' must be an integer in [{lo}, {hi}].")
    return value


def _check_fields(body: dict[str, Any], allowed: set[str]) -> None:
    for name in body:
        if name not in allowed:
            raise unsupported(name)


def _model(runtime: Runtime, body: dict[str, Any], kind: ModelKind) -> ServedModel:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise invalid("model", "'model' is required.")
    served = runtime.models.get(name)
    if served is None or served.spec.kind is not kind:
        raise ApiError(
            404,
            f"The model '{name}' does not exist or is not a {kind} model.",
            param="model",
            code="model_not_found",
        )
    return served


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise invalid("messages", "'messages' must be a non-empty array.")
    out: list[dict[str, str]] = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise invalid(f"messages[{i}]", "Each message must be an object.")
        extra = set(message) - {"role", "content", "name", "tool_calls", "tool_call_id"}
        tool_turn = tool_message(i, message)
        if tool_turn is not None:
            out.append(tool_turn)
            continue
        if extra:
            raise unsupported(f"messages[{i}].{sorted(extra)[0]}")
        role = message.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise invalid(f"messages[{i}].role", f"Unsupported role {role!r}.")
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise unsupported(f"messages[{i}].content", "Only text parts are supported.")
                parts.append(str(part.get("text", "")))
            content = "".join(parts)
        if not isinstance(content, str):
            raise invalid(f"messages[{i}].content", "'content' must be a string.")
        out.append({"role": str(role), "content": content})
    return out


def _sampling(body: dict[str, Any]) -> SamplingParams:
    if body.get("n") not in (None, 1):
        raise unsupported("n", "Only n=1 is supported.")
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise unsupported(name, "Only 0 is supported.")
    if body.get("logprobs") not in (None, False):
        raise unsupported("logprobs")
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise invalid("stop", "'stop' must be a string or up to 4 strings.")
    max_tokens = _integer(body, "max_completion_tokens", 1, 1 << 20)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1, 1 << 20)
    return SamplingParams(
        max_tokens=max_tokens if max_tokens is not None else 512,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        top_k=_integer(body, "top_k", 0, 1 << 20) or 0,
        seed=_integer(body, "seed", -(1 << 63), (1 << 63) - 1),
        stop=stops,
    )


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except json.JSONDecodeError as exc:
        raise ApiError(400, "The body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "The body must be a JSON object.")
    return body


def _submit(served: ServedModel, job: Any, request: Any = None) -> JobHandle:
    try:
        return served.worker.submit(job, request)
    except QueueFull as exc:
        raise ApiError(
            429,
            f"The queue for '{served.spec.id}' is full; retry shortly.",
            type_="rate_limit_error",
            code="queue_full",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ) from exc


def _job_error(exc: JobFailed) -> ApiError:
    cause = exc.__cause__
    if isinstance(cause, ContextTooLong):
        return ApiError(400, str(cause), param="messages", code="context_length_exceeded")
    return ApiError(503, "The model could not run this request.", type_="server_error")


def add_routes(app: web.Application, key: web.AppKey[Runtime]) -> None:
    coalescers: dict[str, Coalescer] = {}  # per embeddings model

    async def list_models(request: web.Request) -> web.Response:
        runtime = request.app[key]
        data = [
            {
                "id": m.spec.id,
                "object": "model",
                "created": int(runtime.started_at),
                "owned_by": "psionic",
                "kind": str(m.spec.kind),
                **({"parent": m.parent} if m.parent is not None else {}),
            }
            for m in runtime.models.values()
        ]
        return web.json_response({"object": "list", "data": data})

    async def chat(request: web.Request) -> web.StreamResponse:
        runtime = request.app[key]
        body = await _json_body(request)
        _check_fields(body, _CHAT_FIELDS)
        served = _model(runtime, body, ModelKind.CHAT)
        messages = _messages(body)
        params = _sampling(body)
        tools = parse_tools(body)
        if body.get("parallel_tool_calls") not in (None, False, True):
            raise invalid("parallel_tool_calls", "'parallel_tool_calls' must be a boolean.")
        stream = body.get("stream") is True
        options = body.get("stream_options") or {}
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise unsupported("stream_options")
        include_usage = bool(options.get("include_usage"))

        def job(engine: Engine, cancelled: Any) -> Iterator[TextDelta | Finished]:
            return chat_job(engine, messages, tools, params, cancelled)

        # Without tools (no grammar) it can share decode steps with others.
        batched = ChatRequest(messages, params) if tools is None else None
        handle = _submit(served, job, batched)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        try:
            if stream:
                return await _stream_chat(
                    request,
                    handle,
                    completion_id,
                    created,
                    served,
                    include_usage,
                    tools is not None,
                )
            try:
                text, call, finished = await collect(handle, tools is not None)
            except JobFailed as exc:
                raise _job_error(exc) from exc
            message: dict[str, Any] = {"role": "assistant", "content": text}
            reason = finished.reason
            if call is not None:
                message = {"role": "assistant", "content": None, "tool_calls": [call.wire()]}
                reason = "tool_calls"
            return web.json_response(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": served.spec.id,
                    "choices": [
                        {
                            "index": 0,
                            "message": message,
                            "logprobs": None,
                            "finish_reason": reason,
                        }
                    ],
                    "usage": _usage(finished),
                    **served.fingerprint(),
                },
                headers=served.revision_headers(),
            )
        finally:
            handle.cancel()  # a no-op when finished; stops work when the client left

    async def embeddings(request: web.Request) -> web.Response:
        runtime = request.app[key]
        body = await _json_body(request)
        _check_fields(body, _EMBED_FIELDS)
        served = _model(runtime, body, ModelKind.EMBEDDINGS)
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if (
            not isinstance(texts, list)
            or not texts
            or len(texts) > MAX_EMBED_INPUTS
            or not all(isinstance(t, str) for t in texts)
        ):
            raise invalid(
                "input",
                f"'input' must be a string or 1..{MAX_EMBED_INPUTS} strings "
                "(token arrays are not supported).",
            )
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise invalid("encoding_format", "'encoding_format' must be 'float' or 'base64'.")
        dimensions = body.get("dimensions")

        coalescer = coalescers.setdefault(served.spec.id, Coalescer())
        entry = coalescer.add(texts)

        def job(embedder: Embedder, cancelled: Any) -> Iterator[Any]:
            if dimensions is not None and dimensions != embedder.args.dim:
                raise ValueError(f"this model has {embedder.args.dim} dimensions")
            yield coalescer.run(embedder, entry)

        try:
            handle = _submit(served, job)
        except ApiError:
            coalescer.abandon(entry)
            raise
        try:
            results = await handle.result()
        except JobFailed as exc:
            if isinstance(exc.__cause__, ValueError):
                raise unsupported("dimensions", str(exc.__cause__)) from exc
            raise _job_error(exc) from exc
        finally:
            handle.cancel()
            coalescer.abandon(entry)  # a no-op once it was taken into a batch
        result = results[0]
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(vector, encoding)}
            for i, vector in enumerate(result.vectors)
        ]
        usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
        return web.json_response(
            {"object": "list", "data": data, "model": served.spec.id, "usage": usage}
        )

    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/embeddings", embeddings)


async def open_stream(
    request: web.Request,
    handle: JobHandle,
    error: Callable[[JobFailed], ApiError],
    headers: dict[str, str] | None = None,
) -> tuple[web.StreamResponse, AsyncIterator[Any], Any]:
    """The job's first event (None: it ended without one), then the SSE response, prepared
    (with ``headers``), and the rest of its events: a job that fails before its first event
    is still a plain HTTP error, `error(exc)`."""
    events = handle.__aiter__()
    try:
        first = await anext(events, None)
    except JobFailed as exc:
        raise error(exc) from exc
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            **(headers or {}),
        }
    )
    await response.prepare(request)
    return response, events, first


async def collect(handle: JobHandle, tools: bool) -> tuple[str, ToolCall | None, Finished]:
    """A whole (not streamed) completion: its text, its tool call when `tools` were offered,
    and how it finished. A failed job raises JobFailed."""
    splitter = Splitter()
    finished = Finished("stop", 0, 0)
    async for event in handle:
        if isinstance(event, TextDelta):
            splitter.push(event.text)
        else:
            finished = event
    _, call = splitter.finish() if tools else ("", None)
    return splitter.text, call, finished


def chat_job(
    engine: Engine,
    messages: list[dict[str, str]],
    tools: ToolRequest | None,
    params: SamplingParams,
    cancelled: Any = lambda: False,
) -> Iterator[TextDelta | Finished]:
    """A chat completion on the worker thread: the tools rendered into the prompt, and the
    decoding constrained by their grammar when a call may be made."""
    constraint = None
    if tools is not None:
        messages = list(messages)
        render_tools(messages, tools.shown)
        if tools.grammar is not None:
            constraint = engine.constraint(tools.grammar)
    tok = engine.tokenizer
    prompt = tok.encode(tok.render_chat(messages))
    # A tool prompt starts with the same long system message (and a tool loop resends the
    # conversation so far): the prefix cache keeps their keys and values (prefix_cache.py).
    return engine.complete(prompt, params, cancelled, constraint)


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _usage(finished: Finished) -> dict[str, int]:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }


async def _stream_chat(
    request: web.Request,
    handle: JobHandle,
    completion_id: str,
    created: int,
    served: ServedModel,
    include_usage: bool,
    tools: bool,
) -> web.StreamResponse:
    """Server-sent events: a role chunk, content chunks, a finish chunk, usage, [DONE]. With
    tools, a call comes as one `tool_calls` chunk at its end (finish reason `tool_calls`)."""

    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": served.spec.id,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **served.fingerprint(),
        }

    headers = served.revision_headers()
    response, events, first = await open_stream(request, handle, _job_error, headers)

    async def send(payload: dict[str, Any] | str) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        await response.write(f"data: {data}\n\n".encode())

    try:
        await send(chunk({"role": "assistant", "content": ""}, None))
        event = first
        splitter = Splitter()
        while event is not None:
            if isinstance(event, TextDelta):
                text = splitter.push(event.text) if tools else event.text
                if text:
                    await send(chunk({"content": text}, None))
            else:
                reason = event.reason
                rest, call = splitter.finish() if tools else ("", None)
                if rest:
                    await send(chunk({"content": rest}, None))
                if call is not None:
                    await send(chunk({"tool_calls": [call.wire(index=0)]}, None))
                    reason = "tool_calls"
                await send(chunk({}, reason))
                if include_usage:
                    usage_chunk = chunk({}, None)
                    usage_chunk["choices"] = []
                    usage_chunk["usage"] = _usage(event)
                    await send(usage_chunk)
            event = await anext(events, None)
    except JobFailed:
        error = {"error": {"message": "The model failed mid-stream.", "type": "server_error"}}
        await send(error)
    except ConnectionResetError:
        handle.cancel()
        return response
    await send("[DONE]")
    await response.write_eof()
    return response
