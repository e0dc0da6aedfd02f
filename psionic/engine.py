"""The generation engine: prefill then decode on token ids, plus text-level stopping.

``Engine.generate_ids`` is the whole decode loop; ``Engine.complete`` wraps it with
detokenisation, stop sequences and the finish reason the OpenAI API reports.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from psionic.args import LlamaArgs
from psionic.grammar import Constraint, GrammarTokenizer
from psionic.model import KVCache, Transformer, fuse_weights
from psionic.precision import Precision
from psionic.prefix_cache import DEFAULT_BUDGET_MB, PrefixCache
from psionic.quant import Int8Linear, quantize_linears
from psionic.sampling import Sampler, SamplingParams
from psionic.tokenizer import ChatTokenizer, StreamDecoder
from psionic.weights import LlamaWeights

logger = logging.getLogger(__name__)


def default_decode_threads(args: LlamaArgs) -> int | None:
    """CPU threads for the decode steps of a model this size; None means all of them.

    A decode step of a small model is a chain of tiny matrix-vector products, where waking
    a second thread costs more than it saves: SmolLM2-135M decodes at ~42 tok/s on one thread
    and ~31 on two (docs/benchmarks.md). Prefill stays on every thread.
    """
    params = args.vocab_size * args.dim + args.n_layers * (
        args.dim * (args.n_heads + 2 * args.n_kv_heads) * args.head_dim
        + args.n_heads * args.head_dim * args.dim
        + 3 * args.dim * args.ffn_dim
    )
    return 1 if params < 500_000_000 else None


class ContextTooLong(ValueError):
    """The prompt does not fit in the model's context window."""


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Finished:
    """The last event of a completion. ``reason`` is ``stop``, ``length`` or ``cancelled``."""

    reason: str
    prompt_tokens: int
    completion_tokens: int


def build_model(weights: LlamaWeights, device: torch.device, precision: Precision) -> Transformer:
    """Instantiate the decoder on ``device`` with weights in ``precision``."""
    with torch.device("meta"):
        model = Transformer(weights.args)
    state = dict(weights.state_dict)
    if weights.args.tie_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    model.load_state_dict(fuse_weights(state, weights.args.n_layers), strict=True, assign=True)
    model.set_rope_tables(torch.device("cpu"))
    dtype = precision.activation_dtype(device)
    model = model.to(device=device, dtype=dtype)
    model.set_rope_tables(device, dtype)
    if precision is Precision.INT8:
        quantize_linears(model.layers, dtype)
        model.output = Int8Linear(state["output.weight"].to(device), dtype)
    return model.eval()


class Engine:
    """A loaded decoder and its tokenizer. Not thread-safe: one worker thread owns it."""

    def __init__(
        self,
        weights: LlamaWeights,
        device: torch.device,
        precision: Precision,
        decode_threads: int | None = None,
        prefix_cache_bytes: int = DEFAULT_BUDGET_MB << 20,
    ) -> None:
        self.args = weights.args
        self.name = weights.name
        self.tokenizer: ChatTokenizer = weights.tokenizer
        self.device = device
        self.precision = precision
        self.model = build_model(weights, device, precision)
        if decode_threads is None and device.type == "cpu":
            decode_threads = default_decode_threads(weights.args)
        self.decode_threads = decode_threads
        self._grammar_tokenizer: GrammarTokenizer | None = None
        self.prefix_cache = PrefixCache(prefix_cache_bytes)  # psionic/prefix_cache.py
        self.reused_tokens = 0  # of the last prompt, what came from the prefix cache

    def derived(self, model: Transformer) -> Engine:
        """An engine running ``model`` (an adapter's view of this engine's module:
        psionic/adapters.py) with this engine's tokenizer and settings. Its prefix cache is its
        own, since its keys and values differ; it may run on another thread than this one."""
        engine = copy.copy(self)
        engine.model = model
        engine.prefix_cache = PrefixCache(self.prefix_cache.budget_bytes)
        engine.reused_tokens = 0
        engine._grammar_tokenizer = None
        return engine

    def constraint(self, grammar: str) -> Constraint:
        """A constraint for one generation under `grammar` (psionic/grammar.py)."""
        if self._grammar_tokenizer is None:
            self._grammar_tokenizer = GrammarTokenizer(self.tokenizer, self.args.vocab_size)
        return self._grammar_tokenizer.constraint(grammar)

    @torch.inference_mode()
    def generate_ids(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        sampler: Callable[[torch.Tensor], int],
        stop_ids: frozenset[int] = frozenset(),
        cancelled: Callable[[], bool] = lambda: False,
        reuse_prefix: bool = True,
    ) -> Iterator[int]:
        """Yield new token ids, ending after a stop id (yielded), the budget, or cancel.

        With ``reuse_prefix`` (the default) the prompt goes through the prefix cache: the
        keys and values of its longest kept prefix are copied rather than computed again (a
        system message, the conversation so far), and its own are kept for later prompts.
        """
        self.check_prompt(prompt)
        budget = min(max_new_tokens, self.args.max_seq_len - len(prompt))
        cache = KVCache.allocate(
            self.args,
            len(prompt) + budget,
            self.precision.activation_dtype(self.device),
            self.device,
        )
        logits = self.prefill(prompt, cache, reuse_prefix)
        pos = len(prompt)
        prefill_threads = torch.get_num_threads()
        if self.decode_threads:
            torch.set_num_threads(min(self.decode_threads, prefill_threads))
        try:
            for i in range(budget):
                if cancelled():
                    return
                token = sampler(logits[0])
                yield token
                if token in stop_ids or i == budget - 1:
                    return
                logits = self.model(
                    torch.tensor([[token]], dtype=torch.long, device=self.device), pos, cache
                )
                pos += 1
        finally:
            torch.set_num_threads(prefill_threads)

    def prefill(
        self, prompt: Sequence[int], cache: KVCache, reuse_prefix: bool = True
    ) -> torch.Tensor:
        """Fill slot 0 of ``cache`` with ``prompt``'s keys and values and return the logits of
        its last token (shape (1, vocab)); with ``reuse_prefix`` the kept prefix is copied
        from the prefix cache and only the rest computed, and the prompt's blocks are kept."""
        reused = self.prefix_cache.load(prompt, cache) if reuse_prefix else 0
        self.reused_tokens = reused
        tokens = torch.tensor([list(prompt[reused:])], dtype=torch.long, device=self.device)
        logits: torch.Tensor = self.model(tokens, reused, cache)
        if reuse_prefix:
            self.prefix_cache.store(prompt, cache)
        return logits

    def clear_prefix(self) -> None:
        """Empty the prefix cache: the next prompt is computed whole."""
        self.prefix_cache.clear()

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """The token ids of ``messages`` under the model's chat template."""
        return self.tokenizer.encode(self.tokenizer.render_chat(messages))

    def check_prompt(self, prompt: Sequence[int]) -> None:
        """Refuse an empty prompt, or one that leaves no room in the context to answer."""
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) >= self.args.max_seq_len:
            raise ContextTooLong(
                f"prompt has {len(prompt)} tokens; the context is {self.args.max_seq_len}"
            )

    def complete(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        cancelled: Callable[[], bool] = lambda: False,
        constraint: Constraint | None = None,
        reuse_prefix: bool = True,
    ) -> Iterator[TextDelta | Finished]:
        """Stream text deltas for ``prompt``, honouring stop ids and stop sequences; under
        ``constraint`` only the tokens its grammar allows are picked."""
        sampler: Callable[[torch.Tensor], int] = Sampler(params, self.device)
        if constraint is not None:
            sampler = constraint.wrap(sampler)
        text = TextStream(self.tokenizer, params.stop, len(prompt))
        reason = "length"
        for token in self.generate_ids(
            prompt, params.max_tokens, sampler, self.tokenizer.stop_ids, cancelled, reuse_prefix
        ):
            delta = text.push(token)
            if delta:
                yield TextDelta(delta)
            if text.stopped:
                break
        else:
            if cancelled():
                reason = "cancelled"
        yield from text.finish(reason)


class TextStream:
    """One completion's token ids turned into text deltas: it stops at a stop id or a stop
    sequence (text that could still start one is held back), and counts the tokens.

    ``Engine.complete`` and the decode batch (psionic/batch.py) both stop this way.
    """

    def __init__(self, tokenizer: ChatTokenizer, stops: Sequence[str], prompt_tokens: int):
        self._decoder = StreamDecoder(tokenizer)
        self._stop_ids = tokenizer.stop_ids
        self._stops = stops
        self._pending = ""
        self.prompt_tokens = prompt_tokens
        self.count = 0
        self.stopped = False

    def push(self, token: int) -> str:
        """Take the next token; return the text that can now be sent (maybe none)."""
        self.count += 1
        if token in self._stop_ids:
            self.stopped = True
            return ""
        self._pending += self._decoder.push(token)
        cut = _first_stop(self._pending, self._stops)
        if cut is not None:
            self._pending = self._pending[:cut]
            self.stopped = True
            return ""
        hold = _held_back(self._pending, self._stops)
        ready = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(self._pending) - hold :]
        return ready

    def finish(self, reason: str) -> list[TextDelta | Finished]:
        """The held-back text and the finish event; ``reason`` applies unless a stop was hit."""
        events: list[TextDelta | Finished] = []
        if self._pending:
            events.append(TextDelta(self._pending))
            self._pending = ""
        events.append(Finished("stop" if self.stopped else reason, self.prompt_tokens, self.count))
        return events


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that could still start a stop sequence."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best
