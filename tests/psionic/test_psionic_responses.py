"""`POST /v1/responses` with the official `openai` client against the packaged model: text,
streaming, a function call round trip through `previous_response_id`, instructions, the
token budget, and the 400s, 404-style unknown ids and 429 in OpenAI's error shape."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support.psionic import CHAT, FakeEngine, serve_models

from psionic.tools import message

openai = pytest.importorskip("openai")

QUESTION = "What is the capital of France?"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 16}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


@pytest.fixture
async def api(chat_engine: Any) -> AsyncIterator[Any]:
    async with serve_models({CHAT: chat_engine}) as (client, _runtime):
        api = openai.AsyncOpenAI(
            base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0
        )
        try:
            yield api
        finally:
            await api.close()


async def test_text_response_and_its_stream(api: Any) -> None:
    response = await api.responses.create(
        model=CHAT.id, input=QUESTION, max_output_tokens=8, temperature=0
    )
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status in ("completed", "incomplete")
    assert response.model == CHAT.id
    [item] = response.output
    assert item.type == "message" and item.role == "assistant"
    assert item.content[0].type == "output_text"
    assert "Paris" in response.output_text
    usage = response.usage
    assert 0 < usage.output_tokens <= 8
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens

    stream = await api.responses.create(
        model=CHAT.id, input=QUESTION, max_output_tokens=8, temperature=0, stream=True
    )
    events = [event async for event in stream]
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:-1] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert kinds[-1] == f"response.{response.status}"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == response.output_text
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == deltas
    final = events[-1].response
    assert final.output_text == deltas
    assert final.usage.output_tokens == usage.output_tokens


async def test_input_items_and_instructions(api: Any, chat_engine: Any) -> None:
    items = await api.responses.create(
        model=CHAT.id,
        instructions="Answer in one word.",
        input=[
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Hi!"}]},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": QUESTION}],
            },
        ],
        max_output_tokens=4,
        temperature=0,
    )
    assert items.instructions == "Answer in one word."
    # The prompt is the chat of the instructions (as the system message) and the items.
    messages = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": QUESTION},
    ]
    tok = chat_engine.tokenizer
    assert items.usage.input_tokens == len(tok.encode(tok.render_chat(messages)))


async def test_function_call_round_trip(api: Any, chat_engine: Any) -> None:
    call_response = await api.responses.create(
        model=CHAT.id,
        input="What is the weather in Paris?",
        tools=[WEATHER],
        tool_choice="required",
        temperature=0,
        max_output_tokens=40,
    )
    assert call_response.status == "completed"
    [call] = call_response.output
    assert call.type == "function_call"
    assert call.name == "get_weather"
    assert call.call_id.startswith("call_")
    assert isinstance(json.loads(call.arguments)["city"], str)

    answer = await api.responses.create(
        model=CHAT.id,
        previous_response_id=call_response.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24 C"}],
        tools=[WEATHER],
        tool_choice="none",
        temperature=0,
        max_output_tokens=12,
    )
    assert answer.previous_response_id == call_response.id
    assert answer.output[0].type == "message"
    assert answer.output_text
    # The stored conversation (the question, the call) went before the call's output.
    function = {"name": call.name, "arguments": call.arguments}
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        message(0, {"role": "assistant", "tool_calls": [{"function": function}]}),
        message(1, {"role": "tool", "content": "Sunny, 24 C"}),
    ]
    tok = chat_engine.tokenizer
    assert answer.usage.input_tokens == len(tok.encode(tok.render_chat(messages)))

    stream = await api.responses.create(
        model=CHAT.id,
        input="What is the weather in Paris?",
        tools=[WEATHER],
        tool_choice="required",
        temperature=0,
        max_output_tokens=40,
        stream=True,
    )
    events = [event async for event in stream]
    kinds = [event.type for event in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[4].arguments == call.arguments
    assert events[-1].response.output[0].name == "get_weather"


async def test_function_call_items_in_input_without_a_stored_response(api: Any) -> None:
    response = await api.responses.create(
        model=CHAT.id,
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city": "Paris"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "Rain"},
        ],
        tools=[WEATHER],
        temperature=0,
        max_output_tokens=6,
        store=False,
    )
    assert response.status in ("completed", "incomplete")
    with pytest.raises(openai.BadRequestError) as unknown:
        await api.responses.create(model=CHAT.id, previous_response_id=response.id, input="x")
    assert unknown.value.code == "previous_response_not_found"


async def test_what_codex_sends_besides_is_accepted(chat_engine: Any) -> None:
    body = {
        "model": CHAT.id,
        "input": [{"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]}, {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        "max_output_tokens": 2,
        "reasoning": {"summary": "auto"},
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "thread-1",
        "client_metadata": {"thread_id": "thread-1"},
        "store": False,
        "parallel_tool_calls": True,
    }  # fmt: skip
    async with serve_models({CHAT: chat_engine}) as (client, _runtime):
        response = await client.post("/v1/responses", json=body)
        assert response.status == 200, await response.text()
        assert (await response.json())["output"][0]["type"] == "message"


async def test_max_output_tokens_makes_it_incomplete(api: Any) -> None:
    response = await api.responses.create(
        model=CHAT.id, input="Write a long story about a dragon.", max_output_tokens=3
    )
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3
    assert response.output[0].status == "incomplete"


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type", "unsupported_parameter"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input[0].content[0].type", "unsupported_parameter"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role", "invalid_value"),
        ({"input": 3}, "input", "invalid_value"),
        ({"input": "x", "reasoning": {"effort": "low"}}, "reasoning.effort", "unsupported_parameter"),
        ({"input": "x", "include": ["file_search_call.results"]}, "include", "unsupported_parameter"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type", "unsupported_parameter"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name", "invalid_value"),
        ({"input": "x", "tools": [{**WEATHER, "parameters": 3}]}, "tools[0].parameters", "invalid_value"),
        ({"input": "x", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice", "invalid_value"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens", "invalid_value"),
        ({"input": [{"type": "function_call_output", "call_id": "call_x", "output": "y"}]}, "input[0].call_id", "invalid_value"),
        ({"input": "x", "previous_response_id": "resp_unknown"}, "previous_response_id", "previous_response_not_found"),
    ],
)  # fmt: skip
async def test_malformed_requests_are_400_in_openai_shape(
    chat_engine: Any, body: dict[str, Any], param: str, code: str
) -> None:
    async with serve_models({CHAT: chat_engine}) as (client, runtime):
        response = await client.post("/v1/responses", json={"model": CHAT.id, **body})
        assert response.status == 400
        error = (await response.json())["error"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] == param
        assert error["code"] == code
        assert runtime.models[CHAT.id].worker.queue_depth == 0


async def test_unknown_model_is_404_and_unknown_previous_id_400(api: Any) -> None:
    with pytest.raises(openai.NotFoundError):
        await api.responses.create(model="nope", input="x")
    with pytest.raises(openai.BadRequestError) as unknown:
        await api.responses.create(model=CHAT.id, input="x", previous_response_id="resp_0")
    assert unknown.value.body["param"] == "previous_response_id"


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_full_queue_is_a_429_and_a_disconnect_cancels() -> None:
    gate = threading.Event()
    engine = FakeEngine(gate)
    body = {"model": CHAT.id, "input": "hi", "max_output_tokens": 1}
    async with (
        serve_models({CHAT: engine}, max_queue=1) as (client, runtime),
        asyncio.TaskGroup() as tg,
    ):
        api = openai.AsyncOpenAI(
            base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0
        )
        first = tg.create_task(client.post("/v1/responses", json=body))
        await _until(lambda: engine.started == 1)
        second = tg.create_task(client.post("/v1/responses", json=body))
        await _until(lambda: runtime.models[CHAT.id].worker.queue_depth == 2)
        with pytest.raises(openai.RateLimitError) as limited:
            await api.responses.create(model=CHAT.id, input="hi", max_output_tokens=1)
        assert limited.value.code == "queue_full"
        assert limited.value.response.headers["Retry-After"] == "1"
        gate.set()
        assert (await first).status == 200
        assert (await second).status == 200
        await api.close()

        response = await client.post(
            "/v1/responses", json={**body, "max_output_tokens": 100000, "stream": True}
        )
        assert response.status == 200
        await response.content.readline()  # the first event is on the wire
        response.close()  # the client goes away mid-stream
        await _until(lambda: engine.stopped_early)
        await _until(lambda: runtime.models[CHAT.id].worker.queue_depth == 0)
