"""The prefix cache (psionic/prefix_cache.py): kept blocks of prompt keys and values, reused
by later prompts on the single-sequence path and in the decode batch, within a byte budget."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from support.psionic import CHAT, serve_models

from psionic.args import LlamaArgs
from psionic.batch import ChatRequest, DecodeBatch
from psionic.engine import Engine, Finished, TextDelta
from psionic.model import KVCache
from psionic.precision import Precision
from psionic.prefix_cache import PrefixCache
from psionic.sampling import Sampler, SamplingParams
from psionic.weights import LlamaWeights

GREEDY = SamplingParams(temperature=0, max_tokens=12)
SYSTEM = {"role": "system", "content": "You answer in one word, politely. " * 20}
QUESTIONS = ("Name a colour.", "Name a fruit.", "Name a planet.")
TINY = LlamaArgs(dim=8, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=16, ffn_dim=8)


def _filled(prompt: list[int]) -> KVCache:
    """A cache whose keys and values at position p say which token sits there."""
    cache = KVCache.allocate(TINY, len(prompt) + 4, torch.float32, torch.device("cpu"))
    for p, token in enumerate(prompt):
        cache.k[:, 0, :, p] = float(token)
        cache.v[:, 0, :, p] = -float(token)
    return cache


def _empty(length: int) -> KVCache:
    return KVCache.allocate(TINY, length, torch.float32, torch.device("cpu"))


def test_blocks_are_shared_and_the_last_token_is_never_reused() -> None:
    cache = PrefixCache(1 << 20, block=4)
    first = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert cache.load(first, _empty(12)) == 0
    cache.store(first, _filled(first))
    assert len(cache) == 2  # two full blocks; the last two tokens are no block
    second = [1, 2, 3, 4, 5, 6, 9, 9, 9]  # shares the first block and half the second
    into = _empty(12)
    assert cache.load(second, into) == 4
    assert torch.equal(into.k[0, 0, 0, :4, 0], torch.tensor([1.0, 2, 3, 4]))
    assert torch.equal(into.v[1, 0, 0, :4, 0], torch.tensor([-1.0, -2, -3, -4]))
    assert into.k[0, 0, 0, 4:].abs().sum() == 0
    assert cache.load(first[:8], _empty(8)) == 4  # its last token is computed: not block 2
    assert cache.load(first[:9], _empty(9)) == 8
    cache.store(second, _filled(second))
    assert len(cache) == 3  # the first block once, two second blocks
    stats = cache.stats()
    assert stats["lookups"] == 4 and stats["hits"] == 3
    assert stats["hit_tokens"] == 16 and stats["lookup_tokens"] == 10 + 9 + 8 + 9
    assert stats["hit_rate"] == round(16 / 36, 4)
    assert stats["bytes"] == 3 * 2 * 2 * 1 * 4 * 4 * 4  # entries, k+v, layers, heads, block, dim
    cache.clear()
    assert len(cache) == 0 and cache.bytes == 0
    assert cache.load(first, _empty(12)) == 0


def test_the_budget_holds_and_the_least_recently_used_leaves_go_first() -> None:
    block_bytes = 2 * 2 * 1 * 4 * 4 * 4
    cache = PrefixCache(3 * block_bytes, block=4)
    a = [1, 1, 1, 1, 2, 2, 2, 2, 3]
    b = [5, 5, 5, 5, 6, 6, 6, 6, 7]
    cache.store(a, _filled(a))
    cache.store(b, _filled(b))
    assert len(cache) == 3 and cache.bytes == 3 * block_bytes  # a's leaf went for b's second
    assert cache.load(a, _empty(12)) == 4
    assert cache.load(b, _empty(12)) == 8
    c = [9, 9, 9, 9, 9]
    cache.store(c, _filled(c))  # evicts a's first block: the least recently used
    assert cache.bytes <= cache.budget_bytes
    assert cache.load(a, _empty(12)) == 0
    assert cache.load(b, _empty(12)) == 8
    long = [*range(16), 3]  # four blocks: only three fit, the chain keeps its start
    cache.store(long, _filled(long))
    assert cache.bytes <= cache.budget_bytes and len(cache) == 3
    assert cache.load(long, _empty(20)) == 12
    nothing = PrefixCache(block_bytes - 1, block=4)
    nothing.store(a, _filled(a))
    assert len(nothing) == 0 and nothing.load(a, _empty(12)) == 0


def test_an_evicted_parent_takes_its_children_with_it() -> None:
    block_bytes = 2 * 2 * 1 * 4 * 4 * 4
    cache = PrefixCache(4 * block_bytes, block=4)
    a = [1, 1, 1, 1, 2, 2, 2, 2, 3]
    cache.store(a, _filled(a))
    cache._evict(next(iter(cache._entries)))  # the leaf: LRU order keeps parents newer
    assert len(cache) == 1
    cache.store(a, _filled(a))
    root = next(key for key, entry in cache._entries.items() if entry.parent is None)
    cache._evict(root)
    assert len(cache) == 0 and cache.bytes == 0


@pytest.fixture(scope="module")
def fp32_engine(smollm: LlamaWeights) -> Engine:
    return Engine(smollm, torch.device("cpu"), Precision.FP32)


def _prompt(engine: Engine, question: str) -> list[int]:
    return engine.chat_prompt([SYSTEM, {"role": "user", "content": question}])


def _greedy(engine: Engine, prompt: list[int], reuse: bool = True) -> list[int]:
    return list(engine.generate_ids(prompt, 8, Sampler(GREEDY, engine.device), reuse_prefix=reuse))


@pytest.mark.parametrize("precision", [Precision.FP32, Precision.BF16])
def test_a_cache_hit_decodes_what_a_whole_prefill_decodes(
    smollm: LlamaWeights, fp32_engine: Engine, precision: Precision
) -> None:
    """Greedy output with the system prompt from the cache is the output without the cache,
    in fp32 and (on this CPU) bf16; int8 is not (docs/psionic.md)."""
    engine = (
        fp32_engine
        if precision is Precision.FP32
        else Engine(smollm, fp32_engine.device, precision)
    )
    engine.clear_prefix()
    first, second = (_prompt(engine, q) for q in QUESTIONS[:2])
    whole = _greedy(engine, second, reuse=False)
    assert len(engine.prefix_cache) == 0  # without reuse nothing is kept
    _greedy(engine, first)
    assert engine.reused_tokens == 0  # nothing kept yet
    assert _greedy(engine, second) == whole
    shared = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
    block = engine.prefix_cache.block
    assert engine.reused_tokens == shared // block * block > 100
    assert _greedy(engine, second) == whole  # the same prompt again: its full blocks
    assert engine.reused_tokens == (len(second) - 1) // block * block
    engine.clear_prefix()
    assert _greedy(engine, second) == whole
    assert engine.reused_tokens == 0


def test_a_tiny_budget_recomputes_what_it_evicted(smollm: LlamaWeights) -> None:
    """A budget of a few blocks: prompts evict each other's blocks, the bytes never pass the
    budget, and every answer is still the one without the cache."""
    probe = Engine(smollm, torch.device("cpu"), Precision.FP32, prefix_cache_bytes=0)
    prompts = [_prompt(probe, q) for q in QUESTIONS]
    wholes = [_greedy(probe, p, reuse=False) for p in prompts]
    assert len(probe.prefix_cache) == 0
    block = probe.prefix_cache.block
    a = smollm.args
    block_bytes = 2 * a.n_layers * a.n_kv_heads * block * a.head_dim * 4
    engine = Engine(smollm, torch.device("cpu"), Precision.FP32, prefix_cache_bytes=3 * block_bytes)
    reused = []
    for prompt, whole in [*zip(prompts, wholes, strict=True)] * 2:
        assert _greedy(engine, prompt) == whole
        reused.append(engine.reused_tokens)
        assert engine.prefix_cache.bytes <= engine.prefix_cache.budget_bytes
    assert len(engine.prefix_cache) == 3
    assert reused[1] == 3 * block  # the first prompt's three blocks, all the budget holds
    assert engine.prefix_cache.stats()["hits"] >= 4


class _Collect:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.closed = False

    def post(self, item: Any) -> None:
        self.events.append(item)

    def close(self) -> None:
        self.closed = True

    def cancelled(self) -> bool:
        return False

    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, TextDelta))


def test_a_joining_request_copies_the_cached_prefix_into_its_slot(fp32_engine: Engine) -> None:
    """In the batch, a request whose system prompt is kept prefills only the rest (into its
    slot, beside a running sequence) and answers what it answers without the cache."""
    engine = fp32_engine
    requests = [ChatRequest([SYSTEM, {"role": "user", "content": q}], GREEDY) for q in QUESTIONS]
    engine.clear_prefix()
    alone = []
    for r in requests:
        prompt = engine.chat_prompt(r.messages)
        events = list(engine.complete(prompt, r.params, reuse_prefix=False))
        alone.append("".join(e.text for e in events if isinstance(e, TextDelta)))
        assert isinstance(events[-1], Finished)
    assert len(engine.prefix_cache) == 0
    hits = engine.prefix_cache.hits
    batch = DecodeBatch(engine, 3)
    outs = [_Collect() for _ in requests]
    batch.join(requests[0], outs[0])
    assert engine.reused_tokens == 0
    batch.step()
    batch.join(requests[1], outs[1])
    assert engine.reused_tokens > 100
    batch.step()
    batch.join(requests[2], outs[2])
    assert engine.reused_tokens > 100
    for _ in range(100):
        if not len(batch):
            break
        batch.step()
    assert [o.text() for o in outs] == alone
    assert engine.prefix_cache.hits == hits + 2


async def test_status_shows_the_prefix_cache(fp32_engine: Engine) -> None:
    fp32_engine.clear_prefix()
    async with serve_models({CHAT: fp32_engine}, batch_slots=2, prefix_cache_mb=64) as (
        client,
        _runtime,
    ):
        cold = (await (await client.get("/api/status")).json())["models"][0]["prefix_cache"]
        assert cold["entries"] == 0 and cold["budget_bytes"] == 64 << 20
        for question in QUESTIONS[:2]:
            body = {
                "model": CHAT.id,
                "messages": [SYSTEM, {"role": "user", "content": question}],
                "max_tokens": 2,
                "temperature": 0,
            }
            response = await client.post("/v1/chat/completions", json=body)
            assert response.status == 200
        status = (await (await client.get("/api/status")).json())["models"][0]["prefix_cache"]
    assert set(status) >= {"entries", "bytes", "budget_bytes", "lookups", "hits", "hit_tokens"}
    assert status["entries"] > 0 and status["bytes"] > 0
    assert status["budget_bytes"] == fp32_engine.prefix_cache.budget_bytes
    assert status["hits"] >= 1 and status["hit_tokens"] > 100
    assert 0 < status["hit_rate"] < 1


def test_the_budget_is_a_serve_option() -> None:
    from psionic.cli import build_parser
    from psionic.runtime import RuntimeConfig

    args = build_parser().parse_args(["serve", "--prefix-cache-mb", "64"])
    assert args.prefix_cache_mb == 64
    assert build_parser().parse_args(["serve"]).prefix_cache_mb == 256
    assert RuntimeConfig(models=(), device=torch.device("cpu")).prefix_cache_mb == 256
