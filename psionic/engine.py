"""The generation engine: prefill then decode on token ids, plus text-level stopping.

``Engine.generate_ids`` is the whole decode loop; ``Engine.complete`` wraps it with
detokenisation, stop sequences and the finish reason the OpenAI API reports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from psionic.args import LlamaArgs
from psionic.grammar import Constraint, GrammarTokenizer
from psionic.model import KVCache, Transformer, fuse_weights
from psionic.precision import Precision
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
        self._prefix: tuple[list[int], KVCache] | None = None  # the last reusable prompt
        self.reused_tokens = 0  # of the last prompt, what came from the prefix cache

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
        reuse_prefix: bool = False,
    ) -> Iterator[int]:
        """Yield new token ids, ending after a stop id (yielded), the budget, or cancel.

        With ``reuse_prefix`` the keys and values of the longest prefix this prompt shares
        with the last such prompt are copied rather than computed again (a tool prompt's
        system message, the conversation so far), and this prompt's are kept for the next.
        """
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) >= self.args.max_seq_len:
            raise ContextTooLong(
                f"prompt has {len(prompt)} tokens; the context is {self.args.max_seq_len}"
            )
        budget = min(max_new_tokens, self.args.max_seq_len - len(prompt))
        cache = KVCache.allocate(
            self.args,
            len(prompt) + budget,
            self.precision.activation_dtype(self.device),
            self.device,
        )
        reused = self._reuse(prompt, cache) if reuse_prefix else 0
        self.reused_tokens = reused
        tokens = torch.tensor([list(prompt[reused:])], dtype=torch.long, device=self.device)
        logits = self.model(tokens, reused, cache)
        if reuse_prefix:
            self._prefix = (list(prompt), cache)  # decode writes only past the prompt
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

    def clear_prefix(self) -> None:
        """Forget the cached prefix: the next prompt is computed whole."""
        self._prefix = None

    def _reuse(self, prompt: Sequence[int], cache: KVCache) -> int:
        """Copy the cached keys and values of the prefix shared with the last prompt (all
        but the last token at most, whose logits are needed); how many tokens that is."""
        if self._prefix is None:
            return 0
        old, old_cache = self._prefix
        n = 0
        for a, b in zip(old, prompt[: len(prompt) - 1], strict=False):
            if a != b:
                break
            n += 1
        if n:
            cache.k[:, :, :, :n] = old_cache.k[:, :, :, :n]
            cache.v[:, :, :, :n] = old_cache.v[:, :, :, :n]
        return n

    def complete(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        cancelled: Callable[[], bool] = lambda: False,
        constraint: Constraint | None = None,
        reuse_prefix: bool = False,
    ) -> Iterator[TextDelta | Finished]:
        """Stream text deltas for ``prompt``, honouring stop ids and stop sequences; under
        ``constraint`` only the tokens its grammar allows are picked."""
        sampler: Callable[[torch.Tensor], int] = Sampler(params, self.device)
        if constraint is not None:
            sampler = constraint.wrap(sampler)
        decoder = StreamDecoder(self.tokenizer)
        pending = ""
        count = 0
        reason = "length"
        for token in self.generate_ids(
            prompt, params.max_tokens, sampler, self.tokenizer.stop_ids, cancelled, reuse_prefix
        ):
            count += 1
            if token in self.tokenizer.stop_ids:
                reason = "stop"
                break
            pending += decoder.push(token)
            cut = _first_stop(pending, params.stop)
            if cut is not None:
                pending = pending[:cut]
                reason = "stop"
                break
            hold = _held_back(pending, params.stop)
            if len(pending) > hold:
                yield TextDelta(pending[: len(pending) - hold])
                pending = pending[len(pending) - hold :]
        else:
            if cancelled():
                reason = "cancelled"
        if pending:
            yield TextDelta(pending)
        yield Finished(reason, len(prompt), count)


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
