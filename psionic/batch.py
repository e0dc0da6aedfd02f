"""Continuous batching: the chat completions of one model decoded together, a step at a time.

A ``DecodeBatch`` lives on the model's worker thread (psionic/worker.py), which alternates
between admitting a waiting request and running one decode step. A request joins by its
prefill (batch 1, into a free slot of the shared ``KVCache``; the part of its prompt that
the model's prefix cache holds is copied into the slot, and only the rest computed); each
step then feeds every running sequence its last token at its own position
(``Transformer.decode``). A sequence
leaves when it stops (stop id, stop string, its budget) or is cancelled, and its slot is
free for the next step. Sampling and stopping are per request, as ``Engine.complete`` does.

Running sequence i always sits in slot i: when one leaves, the last one's keys and values
move into its slot, so a step reads slots 0..n-1 and never a hole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from psionic.engine import Engine, TextDelta, TextStream
from psionic.model import KVCache
from psionic.sampling import Sampler, SamplingParams

_CAPACITY_STEP = 256  # slot capacity grows in multiples of this (never past the context)


class Output(Protocol):
    """Where a sequence's events go: the worker's side of its HTTP request."""

    def post(self, item: Any) -> None: ...

    def close(self) -> None: ...

    def cancelled(self) -> bool: ...


@dataclass(frozen=True)
class ChatRequest:
    """A chat completion without tools, as the batch takes it."""

    messages: list[dict[str, str]]
    params: SamplingParams


@dataclass
class _Sequence:
    out: Output
    sampler: Callable[[torch.Tensor], int]
    text: TextStream
    token: int  # the last token picked, fed at ``pos`` by the next step
    pos: int
    left: int  # tokens it may still pick
    done: bool = False


class DecodeBatch:
    """Up to ``slots`` sequences of one engine decoded together. Worker thread only."""

    def __init__(self, engine: Engine, slots: int) -> None:
        self.engine = engine
        self.slots = slots
        self._seqs: list[_Sequence] = []
        self._cache: KVCache | None = None  # allocated while sequences run
        self._threads = torch.get_num_threads()  # prefill's

    def __len__(self) -> int:
        return len(self._seqs)

    @property
    def full(self) -> bool:
        return len(self._seqs) >= self.slots

    def outputs(self) -> list[Output]:
        return [s.out for s in self._seqs]

    def clear(self) -> None:
        """Forget every sequence (after a failed step; their outputs are the caller's)."""
        self._seqs = []
        self._cache = None

    @torch.inference_mode()
    def join(self, request: ChatRequest, out: Output) -> None:
        """Prefill ``request`` into a free slot and pick its first token (it may finish at
        once). Raises ``ContextTooLong`` for a prompt that does not fit, before any work."""
        if self.full:
            raise RuntimeError("no free slot")
        engine = self.engine
        prompt = engine.chat_prompt(request.messages)
        engine.check_prompt(prompt)
        params = request.params
        budget = min(params.max_tokens, engine.args.max_seq_len - len(prompt))
        cache = self._reserve(len(prompt) + budget)
        slot = len(self._seqs)
        logits = engine.prefill(prompt, cache.slot(slot))  # through the prefix cache
        seq = _Sequence(
            out=out,
            sampler=Sampler(params, engine.device),
            text=TextStream(engine.tokenizer, params.stop, len(prompt)),
            token=-1,
            pos=len(prompt),
            left=budget,
        )
        self._seqs.append(seq)
        self._advance(seq, logits[0])
        self._drop_finished()

    @torch.inference_mode()
    def step(self) -> None:
        """One decode step for every running sequence; cancelled ones leave first."""
        for seq in self._seqs:
            if seq.out.cancelled():
                self._finish(seq, "cancelled")
        self._drop_finished()
        if not self._seqs or self._cache is None:
            return
        device = self.engine.device
        tokens = torch.tensor([s.token for s in self._seqs], dtype=torch.long, device=device)
        positions = torch.tensor([s.pos for s in self._seqs], dtype=torch.long, device=device)
        # Decode threads as for one sequence (default_decode_threads): for a small model, a
        # second thread makes a step of 8 rows ~1.5× faster on an idle 2-core machine, but
        # several times slower while other work holds a core (docs/benchmarks.md).
        torch.set_num_threads(min(self.engine.decode_threads or self._threads, self._threads))
        try:
            logits = self.engine.model.decode(tokens, positions, self._cache)
        finally:
            torch.set_num_threads(self._threads)
        for seq, row in zip(self._seqs, logits, strict=True):
            seq.pos += 1
            self._advance(seq, row)
        self._drop_finished()

    def _advance(self, seq: _Sequence, logits: torch.Tensor) -> None:
        """Pick the sequence's next token from ``logits``, send its text, maybe finish it."""
        if seq.out.cancelled():
            self._finish(seq, "cancelled")
            return
        seq.token = seq.sampler(logits)
        seq.left -= 1
        delta = seq.text.push(seq.token)
        if delta:
            seq.out.post(TextDelta(delta))
        if seq.text.stopped or seq.left == 0:
            self._finish(seq, "length")

    def _finish(self, seq: _Sequence, reason: str) -> None:
        for event in seq.text.finish(reason):
            seq.out.post(event)
        seq.out.close()
        seq.done = True

    def _drop_finished(self) -> None:
        """Free the slots of finished sequences, moving the last running ones into them."""
        i = 0
        while i < len(self._seqs):
            if not self._seqs[i].done:
                i += 1
                continue
            last = self._seqs.pop()
            if i < len(self._seqs):
                self._move(len(self._seqs), i, last.pos)
                self._seqs[i] = last
        if not self._seqs:
            self._cache = None  # an idle model holds no batch memory

    def _move(self, src: int, dst: int, length: int) -> None:
        cache = self._cache
        assert cache is not None
        cache.k[:, dst, :, :length] = cache.k[:, src, :, :length]
        cache.v[:, dst, :, :length] = cache.v[:, src, :, :length]

    def _reserve(self, length: int) -> KVCache:
        """The shared cache, grown (keeping what it holds) so that a slot fits ``length``."""
        if self._cache is not None and self._cache.capacity >= length:
            return self._cache
        engine = self.engine
        old = self._cache
        capacity = -(-length // _CAPACITY_STEP) * _CAPACITY_STEP
        if old is not None:
            capacity = max(capacity, 2 * old.capacity)
        capacity = min(capacity, engine.args.max_seq_len)
        dtype = engine.precision.activation_dtype(engine.device)
        cache = KVCache.allocate(engine.args, capacity, dtype, engine.device, self.slots)
        if old is not None:
            cache.k[:, :, :, : old.capacity] = old.k
            cache.v[:, :, :, : old.capacity] = old.v
        self._cache = cache
        return cache
