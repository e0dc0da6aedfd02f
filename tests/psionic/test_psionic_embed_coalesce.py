"""Embeddings coalescing: concurrent requests share one forward pass, each gets the vectors
it would get alone, a client that left is not embedded, and a full queue is still a 429."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from support.psionic import EMBED, serve_models

from psionic.embeddings import Coalescer

TEXTS = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog near the river bank.",
    "Embeddings",
    "psionic serves models over HTTP",
    "Paris is the capital of France.",
    "How many tokens does this sentence have? Quite a few, I think.",
    "short",
    "The weather is sunny with a light breeze from the west.",
]


class GatedEmbedder:
    """The real embedder, whose first call waits for `gate`; records each call's inputs."""

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder
        self.args = embedder.args
        self.gate = threading.Event()
        self.calls: list[list[str]] = []

    def embed(self, texts: Any, cancelled: Any = lambda: False) -> Any:
        self.calls.append(list(texts))
        if len(self.calls) == 1:
            self.gate.wait(10)
        return self.embedder.embed(texts, cancelled)


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_concurrent_requests_share_a_forward_pass(embedder: Any) -> None:
    gated = GatedEmbedder(embedder)
    body = {"model": EMBED.id}
    async with serve_models({EMBED: gated}) as (client, runtime), asyncio.TaskGroup() as tg:
        worker = runtime.models[EMBED.id].worker
        first = tg.create_task(client.post("/v1/embeddings", json={**body, "input": "first"}))
        await _until(lambda: len(gated.calls) == 1)  # running, held by the gate
        rest = [
            tg.create_task(client.post("/v1/embeddings", json={**body, "input": text}))
            for text in TEXTS[:-1]
        ]
        pair = tg.create_task(client.post("/v1/embeddings", json={**body, "input": TEXTS[-2:]}))
        await _until(lambda: worker.queue_depth == 1 + len(rest) + 1)
        gated.gate.set()
        answers = [await (await task).json() for task in [first, *rest, pair]]
    # One pass for the first request, one for the eight waiting behind it.
    assert gated.calls == [["first"], [*TEXTS[:-1], *TEXTS[-2:]]]
    for text, answer in zip(["first", *TEXTS[:-1]], answers, strict=False):
        alone = embedder.embed([text])
        assert answer["usage"]["prompt_tokens"] == alone.prompt_tokens
        [got] = answer["data"]
        assert got["embedding"] == pytest.approx(alone.vectors[0], abs=1e-5)
    alone = embedder.embed(TEXTS[-2:])
    assert [d["index"] for d in answers[-1]["data"]] == [0, 1]
    for got, want in zip(answers[-1]["data"], alone.vectors, strict=True):
        assert got["embedding"] == pytest.approx(want, abs=1e-5)
    assert answers[-1]["usage"]["prompt_tokens"] == alone.prompt_tokens


async def test_a_client_that_left_is_not_embedded_and_a_full_queue_is_a_429(
    embedder: Any,
) -> None:
    gated = GatedEmbedder(embedder)
    body = {"model": EMBED.id}
    async with (
        serve_models({EMBED: gated}, max_queue=2) as (client, runtime),
        asyncio.TaskGroup() as tg,
    ):
        worker = runtime.models[EMBED.id].worker
        first = tg.create_task(client.post("/v1/embeddings", json={**body, "input": "first"}))
        await _until(lambda: len(gated.calls) == 1)
        gone = tg.create_task(client.post("/v1/embeddings", json={**body, "input": "gone"}))
        await _until(lambda: worker.queue_depth == 2)
        kept = tg.create_task(client.post("/v1/embeddings", json={**body, "input": "kept"}))
        await _until(lambda: worker.queue_depth == 3)
        full = await client.post("/v1/embeddings", json={**body, "input": "full"})
        assert full.status == 429
        assert (await full.json())["error"]["code"] == "queue_full"
        gone.cancel()  # closes the connection
        await asyncio.sleep(0.2)
        gated.gate.set()
        assert (await first).status == 200
        answer = await (await kept).json()
    assert gated.calls == [["first"], ["kept"]]
    assert answer["data"][0]["embedding"] == pytest.approx(
        embedder.embed(["kept"]).vectors[0], abs=1e-5
    )


def test_coalescer_caps_a_batch_and_passes_failures_to_each_request() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.calls: list[list[str]] = []

        def embed(self, texts: Any, cancelled: Any) -> Any:
            from psionic.embeddings import EmbeddingResult

            self.calls.append(list(texts))
            if "boom" in texts:
                raise RuntimeError("boom")
            return EmbeddingResult([[float(len(t))] for t in texts], len(texts), [1] * len(texts))

    coalescer = Coalescer(max_inputs=3)
    model: Any = Recorder()
    a, b, c = coalescer.add(["a", "bb"]), coalescer.add(["ccc", "dddd"]), coalescer.add(["e"])
    assert coalescer.run(model, a).vectors == [[1.0], [2.0]]
    assert model.calls == [["a", "bb", "e"]]  # b would pass the cap; c fits
    assert coalescer.run(model, c).vectors == [[1.0]]
    assert coalescer.run(model, b).vectors == [[3.0], [4.0]]
    assert len(model.calls) == 2
    d, e = coalescer.add(["boom"]), coalescer.add(["x"])
    with pytest.raises(RuntimeError):
        coalescer.run(model, d)
    with pytest.raises(RuntimeError):
        coalescer.run(model, e)
