"""Tool calling against the packaged model: the wire shapes, the 400s, and the parse rate of
constrained calls (always 100 %) beside the unconstrained one (printed, not asserted)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import torch
from support.psionic import CHAT, serve_models

from psionic.engine import TextDelta
from psionic.grammar import INTEGER_BOUND, TOOL_CALL_TAG
from psionic.openai_routes import chat_job
from psionic.sampling import SamplingParams
from psionic.tools import Splitter, parse_call, parse_tools


def _tool(name: str, description: str, **properties: Any) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": list(properties),
                "additionalProperties": False,
            },
        },
    }


PATH = {"type": "string", "maxLength": 24}
FILES = [
    _tool("read", "Show a file of the workspace", path=PATH),
    _tool("ls", "List the files below a folder", path=PATH),
    _tool("search", "Find lines holding a text", text={"type": "string", "maxLength": 24}),
]
WEATHER = [
    _tool(
        "get_weather",
        "The weather in a city",
        city={"type": "string", "maxLength": 24},
        unit={"enum": ["celsius", "fahrenheit"]},
    ),
    _tool(
        "add",
        "Add two integers",
        a={"type": "integer", "maximum": 999},
        b={"type": "integer", "maximum": 999},
    ),
]
RUN = [
    _tool("run", "Run a shell command", command={"type": "string", "maxLength": 24}),
    _tool(
        "buy",
        "Buy a text job from the network",
        budget_sats={"type": "integer", "minimum": 1, "maximum": 1000},
        prompt={"type": "string", "maxLength": 24},
    ),
]
PROMPTS: list[tuple[str, list[dict[str, Any]]]] = [
    ("Show me README.md", FILES),
    ("What files are in src?", FILES),
    ("Find where main is defined", FILES),
    ("Open the file setup.py", FILES),
    ("List everything in the docs folder", FILES),
    ("Search for TODO", FILES),
    ("Read pyproject.toml please", FILES),
    ("Which files are there?", FILES),
    ("What's the weather in Paris?", WEATHER),
    ("Is it cold in Oslo, in fahrenheit?", WEATHER),
    ("What is 2 plus 3?", WEATHER),
    ("Add 40 and 2", WEATHER),
    ("Weather for Tokyo in celsius", WEATHER),
    ("Run the tests with pytest", RUN),
    ("Show the git log", RUN),
    ("Buy a poem about the sea for 20 sats", RUN),
    ("Count the lines of main.py with wc", RUN),
    ("Ask the network for a haiku, 5 sats at most", RUN),
    ("Print the current directory", RUN),
    ("Install nothing, just run echo hi", RUN),
]
# Every string is at most 24 characters, so a call fits in 64 tokens with room to spare.
GREEDY = SamplingParams(max_tokens=64, temperature=0)


def _valid(text: str, tools: list[dict[str, Any]]) -> bool:
    call = parse_call(text)
    if call is None:
        return False
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    if call.name not in schemas:
        return False
    try:
        jsonschema.validate(json.loads(call.arguments), schemas[call.name])
    except jsonschema.ValidationError:
        return False
    return True


def _generate(engine: Any, prompt: str, tools: list[dict[str, Any]], constrained: bool) -> str:
    request = parse_tools({"tools": tools, "tool_choice": "required"}, constrained=constrained)
    splitter = Splitter()
    messages = [{"role": "user", "content": prompt}]
    for event in chat_job(engine, messages, request, GREEDY):
        if isinstance(event, TextDelta) and splitter.push(event.text):
            break  # plain text: it cannot be a call any more, so stop the attempt here
    return splitter.text


def test_constrained_calls_parse_and_validate_every_time(chat_engine: Any) -> None:
    failed = []
    for prompt, tools in PROMPTS:
        text = _generate(chat_engine, prompt, tools, True)
        if not _valid(text, tools):
            failed.append((prompt, text))
    print(f"\nconstrained: {len(PROMPTS) - len(failed)}/{len(PROMPTS)} calls parse and validate")
    assert not failed


def test_unconstrained_rate_is_measured(chat_engine: Any) -> None:
    """The same prompts with the tools in the prompt but no grammar: how many answers are a
    call that parses and validates (printed for docs/psionic.md; only measured)."""
    valid = sum(_valid(_generate(chat_engine, p, t, False), t) for p, t in PROMPTS)
    print(f"\nunconstrained: {valid}/{len(PROMPTS)} calls parse and validate")
    assert 0 <= valid <= len(PROMPTS)


@pytest.fixture
async def served(chat_engine: Any) -> Any:
    async with serve_models({CHAT: chat_engine}) as pair:
        yield pair


def _body(**extra: Any) -> dict[str, Any]:
    return {
        "model": CHAT.id,
        "messages": [{"role": "user", "content": "Show me README.md"}],
        "max_tokens": 40,
        "temperature": 0,
        "tools": FILES,
        **extra,
    }


async def test_a_required_call_comes_back_as_tool_calls(served: Any) -> None:
    client, _ = served
    response = await client.post("/v1/chat/completions", json=_body(tool_choice="required"))
    assert response.status == 200
    choice = (await response.json())["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] in {"read", "ls", "search"}
    assert isinstance(json.loads(call["function"]["arguments"]), dict)


async def test_a_named_call_streams_as_a_tool_calls_delta(served: Any) -> None:
    client, _ = served
    choice = {"type": "function", "function": {"name": "ls"}}
    response = await client.post(
        "/v1/chat/completions", json=_body(tool_choice=choice, stream=True)
    )
    assert response.status == 200
    chunks = [
        json.loads(line[6:])
        for line in (await response.text()).splitlines()
        if line.startswith("data: {")
    ]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    calls = [d["tool_calls"] for d in deltas if "tool_calls" in d]
    assert len(calls) == 1 and calls[0][0]["function"]["name"] == "ls"
    assert calls[0][0]["index"] == 0
    assert not any(d.get("content") for d in deltas)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_history_with_calls_and_results_is_accepted(served: Any) -> None:
    client, _ = served
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "ls", "arguments": '{"path": "."}'},
    }
    messages = [
        {"role": "user", "content": "What is here?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "README.md 120 bytes"},
    ]
    response = await client.post(
        "/v1/chat/completions", json=_body(messages=messages, tool_choice="none", max_tokens=8)
    )
    assert response.status == 200
    choice = (await response.json())["choices"][0]
    assert isinstance(choice["message"]["content"], str)
    assert "tool_calls" not in choice["message"]


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "rm"}}}, "not in 'tools'"),
        ({"tool_choice": "sometimes"}, "'tool_choice' must be"),
        (
            {"tools": [_tool("t", "t", a={"type": "string", "pattern": "(?=x)a"})]},
            "cannot be used as a grammar",
        ),
        ({"tools": [{"type": "retrieval"}]}, "Only function tools"),
    ],
)
async def test_bad_tools_are_a_400(served: Any, extra: dict[str, Any], says: str) -> None:
    client, _ = served
    response = await client.post("/v1/chat/completions", json=_body(**extra))
    assert response.status == 400
    assert says in (await response.json())["error"]["message"]


def test_an_integer_the_schema_leaves_unbounded_still_ends(chat_engine: Any) -> None:
    """A picker that always wants another digit: the grammar ends the number at 16 digits
    (INTEGER_BOUND), so the call closes instead of running to the token budget."""
    tools = [_tool("count", "Count to n", n={"type": "integer"})]
    request = parse_tools({"tools": tools, "tool_choice": "required"}, constrained=True)
    assert request.grammar is not None
    constraint = chat_engine.constraint(request.grammar)
    one = chat_engine.tokenizer.encode("1")
    assert len(one) == 1
    wants_digits = torch.zeros(chat_engine.args.vocab_size)
    wants_digits[one[0]] = 1.0
    pick = constraint.wrap(lambda logits: int(torch.argmax(logits)))
    picked = []
    for _ in range(200):
        picked.append(pick(wants_digits.clone()))
        if picked[-1] in chat_engine.tokenizer.stop_ids:
            break
    text = chat_engine.tokenizer.decode(picked)
    call = json.loads(text.removeprefix(TOOL_CALL_TAG).split("<|im_end|>")[0])
    assert call["name"] == "count" and 0 < call["arguments"]["n"] <= INTEGER_BOUND, text
