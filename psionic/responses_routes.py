"""The OpenAI Responses API: ``POST /v1/responses`` (JSON or SSE), on the chat path.

A request's ``instructions`` and ``input`` items (messages, ``function_call`` and
``function_call_output`` items) become chat messages, its function tools become chat tools,
and the job is the chat completion's own (``chat_job``: the tools in the prompt, constrained
calls), through the same worker queue (429 when full, cancelled when the client goes away).
The answer comes back as output items: a ``message`` with ``output_text``, or a
``function_call``.

Responses are stored in memory unless ``store`` is false: a later request names one in
``previous_response_id`` and its conversation (input and output, not its instructions) goes
before the new input. The store keeps the most recently used ``MAX_STORED`` responses.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from psionic.batch import ChatRequest
from psionic.engine import Engine, Finished, TextDelta
from psionic.errors import ApiError, invalid, unsupported
from psionic.openai_routes import (
    _check_fields,
    _integer,
    _job_error,
    _json_body,
    _model,
    _number,
    _submit,
    chat_job,
    collect,
    open_stream,
)
from psionic.registry import ModelKind
from psionic.runtime import Runtime, ServedModel
from psionic.sampling import SamplingParams
from psionic.tools import Splitter, ToolCall, ToolRequest, parse_tools
from psionic.tools import message as tool_message
from psionic.worker import JobFailed, JobHandle

MAX_STORED = 256
DEFAULT_MAX_OUTPUT_TOKENS = 512

_FIELDS = {
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "max_output_tokens",
    "temperature",
    "top_p",
    "stream",
    "store",
    "metadata",
    "previous_response_id",
    "user",
    # What the Codex CLI sends; accepted where psionic can honour them (see _Request).
    "reasoning",
    "include",
    "prompt_cache_key",
    "client_metadata",
}
_INCLUDABLE = {"reasoning.encrypted_content"}  # there are no reasoning items to carry it
_MESSAGE_FIELDS = {"type", "role", "content", "id", "status", "phase"}
_CALL_FIELDS = {"type", "call_id", "name", "arguments", "id", "status"}
_OUTPUT_FIELDS = {"type", "call_id", "output", "id", "status"}
_TOOL_FIELDS = {"type", "name", "description", "parameters", "strict"}


@dataclass
class _Stored:
    """A stored response: its conversation as chat messages, and the calls made in it."""

    messages: list[dict[str, str]]
    call_ids: set[str]


class ResponseStore:
    """Stored responses by id, least recently used dropped beyond ``limit``."""

    def __init__(self, limit: int = MAX_STORED) -> None:
        self.limit = limit
        self._items: OrderedDict[str, _Stored] = OrderedDict()

    def get(self, response_id: str) -> _Stored | None:
        stored = self._items.get(response_id)
        if stored is not None:
            self._items.move_to_end(response_id)
        return stored

    def put(self, response_id: str, stored: _Stored) -> None:
        self._items[response_id] = stored
        self._items.move_to_end(response_id)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


STORE = web.AppKey("responses", ResponseStore)


def _text(param: str, content: Any, part_types: tuple[str, ...]) -> str:
    """A string, or text parts of the given types, as one string."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(param, f"'{param}' must be a string or an array of text parts.")
    pieces = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in part_types:
            kind = part.get("type") if isinstance(part, dict) else None
            raise unsupported(f"{param}[{j}].type", f"Content of type {kind!r} is not supported.")
        text = part.get("text")
        if not isinstance(text, str):
            raise invalid(f"{param}[{j}].text", "A text part needs a string 'text'.")
        pieces.append(text)
    return "".join(pieces)


def _extra(param: str, item: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(item) - allowed)
    if extra:
        raise unsupported(f"{param}.{extra[0]}")


def _input(raw: Any, call_ids: set[str]) -> list[dict[str, str]]:
    """The input as chat messages. ``call_ids`` holds the calls made so far in the
    conversation; the input's own calls are added, and a call output must answer one."""
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise invalid("input", "'input' must be a string or an array of input items.")
    out: list[dict[str, str]] = []
    for i, item in enumerate(raw):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid(param, "Each input item must be an object.")
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            _extra(param, item, _MESSAGE_FIELDS)
            role = item.get("role")
            if role == "developer":
                role = "system"
            if role not in ("system", "user", "assistant"):
                raise invalid(f"{param}.role", f"Unsupported role {role!r}.")
            parts = ("output_text",) if role == "assistant" else ("input_text",)
            content = _text(f"{param}.content", item.get("content"), (*parts, "text"))
            out.append({"role": str(role), "content": content})
        elif kind == "function_call":
            _extra(param, item, _CALL_FIELDS)
            call_id, name, arguments = (item.get(k) for k in ("call_id", "name", "arguments"))
            if not all(isinstance(v, str) for v in (call_id, name, arguments)):
                raise invalid(param, "A function_call needs string call_id, name, arguments.")
            call_ids.add(str(call_id))
            wire = {"function": {"name": name, "arguments": arguments}}
            turn = tool_message(i, {"role": "assistant", "tool_calls": [wire]})
            assert turn is not None
            if out and out[-1]["role"] == "assistant" and "<tool_call>" in out[-1]["content"]:
                out[-1] = {
                    "role": "assistant",
                    "content": f"{out[-1]['content']}\n{turn['content']}",
                }
            else:
                out.append(turn)
        elif kind == "function_call_output":
            _extra(param, item, _OUTPUT_FIELDS)
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or call_id not in call_ids:
                raise invalid(
                    f"{param}.call_id",
                    f"No function call found for function_call_output with call_id {call_id!r}.",
                )
            output = _text(f"{param}.output", item.get("output"), ("input_text", "text"))
            turn = tool_message(i, {"role": "tool", "content": output})
            assert turn is not None
            out.append(turn)
        else:
            raise unsupported(f"{param}.type", f"Input items of type {kind!r} are not supported.")
    return out


def _tools(body: dict[str, Any]) -> ToolRequest | None:
    """The Responses API's function tools and tool_choice, checked as chat tools."""
    raw = body.get("tools")
    if raw is None or raw == []:
        if body.get("tool_choice") not in (None, "none", "auto"):
            raise invalid("tool_choice", "'tool_choice' needs 'tools'.")
        return None
    if not isinstance(raw, list):
        raise invalid("tools", "'tools' must be an array of tools.")
    converted = []
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise unsupported(f"tools[{i}].type", f"Tools of type {kind!r} are not supported.")
        _extra(f"tools[{i}]", tool, _TOOL_FIELDS)
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise invalid(f"tools[{i}].name", "A function tool needs a name.")
        function = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
        if function.get("parameters") is None:
            function.pop("parameters", None)
        elif not isinstance(function["parameters"], dict):
            raise invalid(f"tools[{i}].parameters", "'parameters' must be a JSON schema.")
        converted.append({"type": "function", "function": function})
    choice = body.get("tool_choice", "auto")
    if isinstance(choice, dict):
        if choice.get("type") != "function" or set(choice) - {"type", "name"}:
            raise invalid(
                "tool_choice",
                "'tool_choice' must be 'auto', 'none', 'required' or "
                '{"type": "function", "name": ...}.',
            )
        choice = {"type": "function", "function": {"name": choice.get("name")}}
    return parse_tools({"tools": converted, "tool_choice": choice})


def _sampling(body: dict[str, Any]) -> SamplingParams:
    max_tokens = _integer(body, "max_output_tokens", 1, 1 << 20)
    return SamplingParams(
        max_tokens=max_tokens if max_tokens is not None else DEFAULT_MAX_OUTPUT_TOKENS,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
    )


def _usage(finished: Finished) -> dict[str, Any]:
    return {
        "input_tokens": finished.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": finished.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _call_item(item_id: str, call: ToolCall, arguments: str, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call.id,
        "name": call.name,
        "arguments": arguments,
        "status": status,
    }


class _Request:
    """One checked request: what the job needs, and what the response object echoes."""

    def __init__(self, body: dict[str, Any], store: ResponseStore) -> None:
        self.stream = body.get("stream") is True
        self.store = body.get("store") is not False
        for name in ("stream", "store", "parallel_tool_calls"):
            if body.get(name) not in (None, False, True):
                raise invalid(name, f"'{name}' must be a boolean.")
        instructions = body.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise invalid("instructions", "'instructions' must be a string.")
        metadata = body.get("metadata")
        if metadata is not None and (
            not isinstance(metadata, dict)
            or len(metadata) > 16
            or not all(isinstance(v, str) for v in metadata.values())
        ):
            raise invalid("metadata", "'metadata' must be up to 16 string values.")
        for name in ("user", "prompt_cache_key"):
            if body.get(name) is not None and not isinstance(body[name], str):
                raise invalid(name, f"'{name}' must be a string.")
        user = body.get("user")
        if body.get("client_metadata") is not None and not isinstance(
            body["client_metadata"], dict
        ):
            raise invalid("client_metadata", "'client_metadata' must be an object.")
        reasoning = body.get("reasoning")
        if reasoning is not None:
            # The models do not reason: no effort can be honoured, and there is nothing to
            # summarise, so a summary setting is moot.
            if not isinstance(reasoning, dict) or set(reasoning) - {"effort", "summary"}:
                raise invalid("reasoning", "'reasoning' may hold 'effort' and 'summary'.")
            if reasoning.get("effort") not in (None, "none"):
                raise unsupported("reasoning.effort", "These models do not reason.")
        include = body.get("include")
        if include is not None and (
            not isinstance(include, list) or not all(i in _INCLUDABLE for i in include)
        ):
            raise unsupported("include", f"Only {sorted(_INCLUDABLE)} may be included.")
        previous_id = body.get("previous_response_id")
        history: list[dict[str, str]] = []
        self.call_ids: set[str] = set()
        if previous_id is not None:
            previous = store.get(previous_id) if isinstance(previous_id, str) else None
            if previous is None:
                raise ApiError(
                    400,
                    f"Previous response with id {previous_id!r} not found.",
                    param="previous_response_id",
                    code="previous_response_not_found",
                )
            history = list(previous.messages)
            self.call_ids = set(previous.call_ids)
        if "input" not in body:
            raise invalid("input", "'input' is required.")
        self.conversation = history + _input(body["input"], self.call_ids)
        system = [{"role": "system", "content": instructions}] if instructions else []
        self.messages = system + self.conversation
        self.tools = _tools(body)
        self.params = _sampling(body)
        self.echo: dict[str, Any] = {
            "instructions": instructions,
            "max_output_tokens": body.get("max_output_tokens"),
            "metadata": metadata or {},
            "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
            "previous_response_id": previous_id,
            "store": self.store,
            "temperature": self.params.temperature,
            "text": {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_p": self.params.top_p,
            "truncation": "disabled",
            "user": user,
        }


class _Builder:
    """The response object of one request as it grows: its output items and status."""

    def __init__(self, served: ServedModel, request: _Request) -> None:
        self.id = f"resp_{uuid.uuid4().hex}"
        self.created_at = int(time.time())
        self.model = served.spec.id
        self.fingerprint = served.fingerprint()  # an adapter model's revision
        self.headers = served.revision_headers()
        self.request = request
        self.output: list[dict[str, Any]] = []
        self.status = "in_progress"
        self.incomplete: dict[str, str] | None = None
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, str] | None = None
        self.message_id = f"msg_{uuid.uuid4().hex}"
        self.call_item_id = f"fc_{uuid.uuid4().hex}"

    def finish(self, finished: Finished, text: str, call: ToolCall | None) -> None:
        self.usage = _usage(finished)
        cut = finished.reason == "length" and call is None
        self.status = "incomplete" if cut else "completed"
        if cut:
            self.incomplete = {"reason": "max_output_tokens"}
        if call is not None:
            self.output = [_call_item(self.call_item_id, call, call.arguments, "completed")]
        else:
            self.output = [_message_item(self.message_id, text, self.status)]

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "error": self.error,
            "incomplete_details": self.incomplete,
            "model": self.model,
            "output": self.output,
            "usage": self.usage,
            **self.request.echo,
            **self.fingerprint,
        }

    def save(self, store: ResponseStore, call: ToolCall | None, text: str) -> None:
        if not self.request.store:
            return
        call_ids = set(self.request.call_ids)
        if call is not None:
            call_ids.add(call.id)
            wire = {"function": {"name": call.name, "arguments": call.arguments}}
            turn = tool_message(0, {"role": "assistant", "tool_calls": [wire]})
            assert turn is not None
        else:
            turn = {"role": "assistant", "content": text}
        store.put(self.id, _Stored([*self.request.conversation, turn], call_ids))


def add_routes(app: web.Application, key: web.AppKey[Runtime]) -> None:
    app[STORE] = ResponseStore()

    async def create(request: web.Request) -> web.StreamResponse:
        runtime = request.app[key]
        store = request.app[STORE]
        body = await _json_body(request)
        _check_fields(body, _FIELDS)
        served = _model(runtime, body, ModelKind.CHAT)
        checked = _Request(body, store)
        messages, tools, params = checked.messages, checked.tools, checked.params

        def job(engine: Engine, cancelled: Any) -> Iterator[TextDelta | Finished]:
            return chat_job(engine, messages, tools, params, cancelled)

        # Without tools it shares decode steps with other requests, as a chat completion does.
        batched = ChatRequest(messages, params) if tools is None else None
        handle = _submit(served, job, batched)
        builder = _Builder(served, checked)
        try:
            if checked.stream:
                return await _stream(request, handle, builder, store)
            try:
                text, call, finished = await collect(handle, tools is not None)
            except JobFailed as exc:
                raise _error(exc) from exc
            builder.finish(finished, text, call)
            builder.save(store, call, text)
            return web.json_response(builder.wire(), headers=builder.headers)
        finally:
            handle.cancel()  # a no-op when finished; stops work when the client left

    app.router.add_post("/v1/responses", create)


def _error(exc: JobFailed) -> ApiError:
    error = _job_error(exc)
    if error.code == "context_length_exceeded":
        error.param = "input"
    return error


async def _stream(
    request: web.Request, handle: JobHandle, builder: _Builder, store: ResponseStore
) -> web.StreamResponse:
    """Server-sent events, each ``event: <type>`` with a JSON ``data`` carrying the same
    ``type`` and a ``sequence_number``: created, in_progress, then the output item's events,
    then completed (or incomplete when the token budget cut the answer)."""
    response, events, first = await open_stream(request, handle, _error, builder.headers)
    sequence = 0
    tools = builder.request.tools is not None
    message_id = builder.message_id

    async def send(kind: str, **fields: Any) -> None:
        nonlocal sequence
        payload = {"type": kind, "sequence_number": sequence, **fields}
        sequence += 1
        await response.write(f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode())

    def part(text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    where = {"item_id": message_id, "output_index": 0}
    opened = False

    async def open_message() -> None:
        nonlocal opened
        if not opened:
            opened = True
            item = {**_message_item(message_id, "", "in_progress"), "content": []}
            await send("response.output_item.added", output_index=0, item=item)
            await send("response.content_part.added", **where, content_index=0, part=part(""))

    async def delta(text: str) -> None:
        await open_message()
        await send("response.output_text.delta", **where, content_index=0, delta=text, logprobs=[])

    try:
        await send("response.created", response=builder.wire())
        await send("response.in_progress", response=builder.wire())
        splitter = Splitter()
        event = first
        while event is not None:
            if isinstance(event, TextDelta):
                pushed = splitter.push(event.text)  # keeps the whole text either way
                text = pushed if tools else event.text
                if text:
                    await delta(text)
            else:
                rest, call = splitter.finish() if tools else ("", None)
                if rest:
                    await delta(rest)
                builder.finish(event, splitter.text, call)
                if call is None:
                    await open_message()
                    text = splitter.text
                    await send(
                        "response.output_text.done",
                        **where,
                        content_index=0,
                        text=text,
                        logprobs=[],
                    )
                    await send(
                        "response.content_part.done", **where, content_index=0, part=part(text)
                    )
                else:
                    call_where = {"item_id": builder.call_item_id, "output_index": 0}
                    added = _call_item(builder.call_item_id, call, "", "in_progress")
                    await send("response.output_item.added", output_index=0, item=added)
                    await send(
                        "response.function_call_arguments.delta", **call_where, delta=call.arguments
                    )
                    await send(
                        "response.function_call_arguments.done",
                        **call_where,
                        arguments=call.arguments,
                    )
                await send("response.output_item.done", output_index=0, item=builder.output[0])
                builder.save(store, call, splitter.text)
                done = (
                    "response.incomplete"
                    if builder.status == "incomplete"
                    else "response.completed"
                )
                await send(done, response=builder.wire())
            event = await anext(events, None)
    except JobFailed:
        builder.status = "failed"
        builder.error = {"code": "server_error", "message": "The model failed mid-stream."}
        await send("response.failed", response=builder.wire())
    except ConnectionResetError:
        handle.cancel()
        return response
    await response.write_eof()
    return response
