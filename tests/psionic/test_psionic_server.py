"""The HTTP server against the real models: OpenAI shapes, streaming, errors, the client."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest
from support.psionic import CHAT, EMBED, serve_models

CHAT_BODY = {
    "model": CHAT.id,
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "max_tokens": 8,
    "temperature": 0,
}


@pytest.fixture
async def served(chat_engine: Any, embedder: Any) -> Any:
    async with serve_models({CHAT: chat_engine, EMBED: embedder}) as pair:
        yield pair


async def test_health_and_models(served: Any) -> None:
    client, _ = served
    health = await (await client.get("/health")).json()
    assert health["status"] == "ok"
    models = await (await client.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == [CHAT.id, EMBED.id]
    assert all(m["object"] == "model" for m in models["data"])


async def test_chat_completion_shape_and_usage(served: Any) -> None:
    client, _ = served
    response = await client.post("/v1/chat/completions", json=CHAT_BODY)
    assert response.status == 200
    body = await response.json()
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert "Paris" in choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_stop_sequence_cuts_text(served: Any) -> None:
    client, _ = served
    body = {**CHAT_BODY, "max_tokens": 16, "stop": [" Paris"]}
    result = await (await client.post("/v1/chat/completions", json=body)).json()
    choice = result["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert "Paris" not in choice["message"]["content"]


async def test_streaming_sse_matches_non_streaming(served: Any) -> None:
    client, _ = served
    plain = await (await client.post("/v1/chat/completions", json=CHAT_BODY)).json()
    body = {**CHAT_BODY, "stream": True, "stream_options": {"include_usage": True}}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    raw = (await response.read()).decode()
    events = [line.removeprefix("data: ") for line in raw.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] == plain["choices"][0]["finish_reason"]
    assert chunks[-1]["usage"] == plain["usage"]


@pytest.mark.parametrize(
    ("patch", "param", "status"),
    [
        ({"tools": [{"type": "function"}]}, "tools[0].function", 400),
        ({"n": 2}, "n", 400),
        ({"logprobs": True}, "logprobs", 400),
        ({"response_format": {"type": "json_object"}}, "response_format", 400),
        ({"temperature": 5}, "temperature", 400),
        ({"model": "gpt-4"}, "model", 404),
    ],
)
async def test_unsupported_fields_are_rejected_openai_style(
    served: Any, patch: dict[str, Any], param: str, status: int
) -> None:
    client, _ = served
    response = await client.post("/v1/chat/completions", json={**CHAT_BODY, **patch})
    assert response.status == status
    error = (await response.json())["error"]
    assert error["param"] == param
    assert error["message"] and error["type"]


async def test_bad_json_is_a_400(served: Any) -> None:
    client, _ = served
    response = await client.post("/v1/chat/completions", data=b"{nope")
    assert response.status == 400
    assert "error" in await response.json()


async def test_embeddings_float_and_base64(served: Any) -> None:
    client, _ = served
    texts = ["a cat", "a dog", "bitcoin over lightning"]
    floats = await (
        await client.post("/v1/embeddings", json={"model": EMBED.id, "input": texts})
    ).json()
    assert [d["index"] for d in floats["data"]] == [0, 1, 2]
    assert len(floats["data"][0]["embedding"]) == 384
    assert floats["usage"]["prompt_tokens"] > 0
    encoded = await (
        await client.post(
            "/v1/embeddings",
            json={"model": EMBED.id, "input": texts, "encoding_format": "base64"},
        )
    ).json()
    raw = base64.b64decode(encoded["data"][1]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert decoded == pytest.approx(floats["data"][1]["embedding"], abs=1e-6)


async def test_embeddings_reject_token_arrays_and_dimensions(served: Any) -> None:
    client, _ = served
    bad = await client.post("/v1/embeddings", json={"model": EMBED.id, "input": [[1, 2]]})
    assert bad.status == 400
    dims = await client.post(
        "/v1/embeddings", json={"model": EMBED.id, "input": "x", "dimensions": 64}
    )
    assert dims.status == 400
    assert (await dims.json())["error"]["param"] == "dimensions"


async def test_official_openai_client(served: Any) -> None:
    openai = pytest.importorskip("openai")
    client, _ = served
    api = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused")
    try:
        completion = await api.chat.completions.create(
            model=CHAT.id,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=8,
            temperature=0,
        )
        assert "Paris" in (completion.choices[0].message.content or "")
        assert completion.usage is not None and completion.usage.completion_tokens > 0
        stream = await api.chat.completions.create(
            model=CHAT.id,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=8,
            temperature=0,
            stream=True,
        )
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(pieces) == completion.choices[0].message.content
        embedded = await api.embeddings.create(model=EMBED.id, input=["hello", "world"])
        assert len(embedded.data) == 2 and len(embedded.data[0].embedding) == 384
        models = await api.models.list()
        assert {m.id for m in models.data} == {CHAT.id, EMBED.id}
        with pytest.raises(openai.BadRequestError):
            await api.chat.completions.create(
                model=CHAT.id, messages=[{"role": "user", "content": "x"}], n=3
            )
    finally:
        await api.close()
