"""Continuous batching (psionic/batch.py): each sequence of a batch decodes as it would alone."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import torch
from support.psionic import CHAT, serve_models

from psionic.batch import ChatRequest, DecodeBatch
from psionic.engine import Engine, Finished, TextDelta
from psionic.precision import Precision
from psionic.sampling import SamplingParams
from psionic.weights import LlamaWeights

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Explain gravity to a child in one sentence.",
]
GREEDY = SamplingParams(max_tokens=20, temperature=0)


class Collect:
    """A sequence's output, as the worker's job is to the batch."""

    def __init__(self) -> None:
        self.events: list[TextDelta | Finished] = []
        self.closed = False
        self.cancel = False

    def post(self, item: Any) -> None:
        self.events.append(item)

    def close(self) -> None:
        self.closed = True

    def cancelled(self) -> bool:
        return self.cancel

    def result(self) -> tuple[str, Finished]:
        text = "".join(e.text for e in self.events if isinstance(e, TextDelta))
        finished = self.events[-1]
        assert isinstance(finished, Finished)
        return text, finished


def _chat(prompt: str, params: SamplingParams = GREEDY) -> ChatRequest:
    return ChatRequest([{"role": "user", "content": prompt}], params)


def _alone(engine: Engine, request: ChatRequest) -> tuple[str, Finished]:
    out = Collect()
    for event in engine.complete(engine.chat_prompt(request.messages), request.params):
        out.post(event)
    return out.result()


def _run(batch: DecodeBatch, outs: list[Collect], steps: int = 1000) -> None:
    for _ in range(steps):
        if not len(batch):
            return
        batch.step()
    raise AssertionError("the batch did not finish")


@pytest.fixture(scope="module")
def fp32_engine(smollm: LlamaWeights) -> Engine:
    return Engine(smollm, torch.device("cpu"), Precision.FP32)


def test_batched_greedy_is_token_identical_to_running_alone(fp32_engine: Engine) -> None:
    """Four prompts joining at different steps, one cut by a stop string and one by a short
    budget (so slots are freed and refilled mid-batch), each as it is alone; a seeded
    sampled one too, since its sampler is its own."""
    requests = [
        _chat(PROMPTS[0]),
        _chat(PROMPTS[1], SamplingParams(max_tokens=5, temperature=0)),
        _chat(PROMPTS[2], SamplingParams(max_tokens=20, temperature=0, stop=("prime",))),
        _chat(PROMPTS[3], SamplingParams(max_tokens=20, temperature=0.8, seed=7)),
    ]
    alone = [_alone(fp32_engine, r) for r in requests]
    batch = DecodeBatch(fp32_engine, 3)
    outs = [Collect() for _ in requests]
    batch.join(requests[0], outs[0])
    batch.step()
    batch.step()
    batch.join(requests[1], outs[1])
    batch.step()
    batch.join(requests[2], outs[2])
    while not outs[1].closed:  # the short one leaves; the fourth takes a freed slot
        batch.step()
    batch.join(requests[3], outs[3])
    _run(batch, outs)
    assert [o.result() for o in outs] == alone
    assert all(o.closed for o in outs)
    assert alone[1][1].reason == "length"
    assert alone[1][1].completion_tokens == 5
    assert alone[2][1].reason == "stop", alone[2]


def test_cancel_mid_batch_frees_the_slot_and_leaves_the_others_unchanged(
    fp32_engine: Engine,
) -> None:
    """A long request joins two running ones (the shared cache grows under them, keeping
    what they hold), then its client goes away: its slot frees, theirs decode on as alone."""
    requests = [_chat(p) for p in PROMPTS[1:3]]
    alone = [_alone(fp32_engine, r) for r in requests]
    batch = DecodeBatch(fp32_engine, 3)
    outs = [Collect() for _ in requests]
    batch.join(requests[0], outs[0])
    batch.step()
    batch.join(requests[1], outs[1])
    batch.step()
    long = Collect()
    batch.join(_chat(PROMPTS[0], SamplingParams(max_tokens=400, temperature=0)), long)
    batch.step()
    long.cancel = True
    batch.step()
    assert long.closed and long.result()[1].reason == "cancelled"
    assert len(batch) == 2 and not batch.full
    _run(batch, outs)
    assert [o.result() for o in outs] == alone


@pytest.mark.parametrize("precision", [Precision.BF16, Precision.INT8])
def test_a_batch_of_one_matches_running_alone(smollm: LlamaWeights, precision: Precision) -> None:
    """In bf16 and int8 a sequence decoded beside others can differ from running alone
    (docs/psionic.md, Serving model); a sequence alone in the batch is the same."""
    engine = Engine(smollm, torch.device("cpu"), precision)
    request = _chat(PROMPTS[0])
    batch = DecodeBatch(engine, 4)
    out = Collect()
    batch.join(request, out)
    _run(batch, [out])
    engine.clear_prefix()  # in int8 a prefill from a kept prefix can differ (docs/psionic.md)
    assert out.result() == _alone(engine, request)


def test_a_prompt_longer_than_the_context_is_refused_before_it_joins(
    fp32_engine: Engine,
) -> None:
    from psionic.engine import ContextTooLong

    batch = DecodeBatch(fp32_engine, 2)
    with pytest.raises(ContextTooLong, match="the context is"):
        batch.join(_chat("hi " * fp32_engine.args.max_seq_len), Collect())
    assert len(batch) == 0


async def _until(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_concurrent_http_requests_share_a_batch_and_match_sequential(
    fp32_engine: Engine,
) -> None:
    bodies = [
        {
            "model": CHAT.id,
            "messages": [{"role": "user", "content": p}],
            "max_tokens": 12,
            "temperature": 0,
        }
        for p in PROMPTS[:3]
    ]
    async with serve_models({CHAT: fp32_engine}, batch_slots=3) as (client, runtime):

        async def ask(body: dict[str, Any]) -> str:
            response = await client.post("/v1/chat/completions", json=body)
            assert response.status == 200
            return str((await response.json())["choices"][0]["message"]["content"])

        sequential = [await ask(b) for b in bodies]
        seen: list[int] = []
        worker = runtime.models[CHAT.id].worker

        async def watch() -> None:
            while True:
                seen.append(worker.active)
                await asyncio.sleep(0.005)

        watcher = asyncio.ensure_future(watch())
        concurrent = await asyncio.gather(*(ask(b) for b in bodies))
        watcher.cancel()
        assert list(concurrent) == sequential
        assert max(seen) > 1


async def test_more_requests_than_slots_and_queue_answer_429(fp32_engine: Engine) -> None:
    body = {
        "model": CHAT.id,
        "messages": [{"role": "user", "content": "Count from 1 to 500, one number a line."}],
        "max_tokens": 400,
        "temperature": 0,
        "stream": True,
    }
    async with serve_models({CHAT: fp32_engine}, max_queue=1, batch_slots=2) as (
        client,
        runtime,
    ):
        worker = runtime.models[CHAT.id].worker
        running = [await client.post("/v1/chat/completions", json=body) for _ in range(2)]
        await _until(lambda: worker.active == 2)
        waiting = asyncio.ensure_future(client.post("/v1/chat/completions", json=body))
        await _until(lambda: worker.queue_depth == 3)
        refused = await client.post("/v1/chat/completions", json=body)
        assert refused.status == 429
        assert refused.headers["Retry-After"] == "1"
        status = await (await client.get("/api/status")).json()
        row = status["models"][0]
        assert (row["batch_slots"], row["active_sequences"], row["queue_depth"]) == (2, 2, 3)
        for response in running:
            response.close()  # their clients go away: the slots free, the waiting one joins
        third = await waiting
        assert third.status == 200
        third.close()
        await _until(lambda: worker.queue_depth == 0)


class _FakeBatch:
    """Sequences that each take three steps; it logs what the worker asks of it."""

    def __init__(self, slots: int, log: list[str]) -> None:
        self.slots = slots
        self.log = log
        self.seqs: list[list[Any]] = []

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def full(self) -> bool:
        return len(self.seqs) >= self.slots

    def join(self, request: str, out: Any) -> None:
        self.log.append(f"join {request}")
        self.seqs.append([request, 3, out])

    def step(self) -> None:
        self.log.append("step")
        for seq in self.seqs:
            seq[1] -= 1
            seq[2].post(seq[0])
            if seq[1] == 0:
                seq[2].close()
        self.seqs = [s for s in self.seqs if s[1]]

    def outputs(self) -> list[Any]:
        return [s[2] for s in self.seqs]

    def clear(self) -> None:
        self.seqs = []


async def test_the_worker_admits_in_order_one_join_per_step_and_drains_for_a_lone_job() -> None:
    """Queue a, b, c (batched), t (alone), d (batched) with two slots: b joins a step after
    a, c waits for a free slot, t waits for the batch to drain, and d waits for t."""
    from psionic.worker import ModelWorker

    log: list[str] = []

    class Model:
        pass

    def alone(model: Any, cancelled: Any) -> Any:
        log.append("t")
        yield "t"

    def unused(model: Any, cancelled: Any) -> Any:
        raise AssertionError("a batched job ran alone")

    worker: ModelWorker[Model] = ModelWorker(
        "fake", Model, max_queue=8, batch_slots=2, open_batch=lambda _, n: _FakeBatch(n, log)
    )
    handles = [worker.submit(unused, name) for name in "abc"]
    handles.append(worker.submit(alone))
    handles.append(worker.submit(unused, "d"))
    worker.start()
    results = [await h.result() for h in handles]
    worker.stop()
    assert results == [["a"] * 3, ["b"] * 3, ["c"] * 3, ["t"], ["d"] * 3]
    steps3 = ["step"] * 3
    assert log == [
        *["join a", "join b", *steps3],
        *["join c", *steps3],
        "t",
        *["join d", *steps3],
    ]
