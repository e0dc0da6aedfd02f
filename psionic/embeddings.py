"""Sentence embeddings: BERT encoder, mean pooling over real tokens, L2 normalisation.

Inputs are sorted by token length and batched; within a batch the encoder runs on the real
tokens only (padding is confined to attention, see ``BertEncoder.packed``). Results come back
in the caller's order.

Concurrent requests are coalesced (``Coalescer``): each request still holds its own job in
the model's queue, but the first of them to run embeds the inputs of every request waiting
behind it (up to ``MAX_COALESCED_INPUTS``) in one call, and the later jobs find their result
ready. Nothing waits for a batch to fill: a batch is what is queued when the worker gets to it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer

from psionic.args import BertArgs
from psionic.bert import BertEncoder, from_hf_state_dict
from psionic.precision import Precision
from psionic.quant import quantize_linears

MAX_COALESCED_INPUTS = 256


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: list[list[float]]
    prompt_tokens: int
    tokens: list[int] = field(default_factory=list)  # per input


def _args_from_config(config: dict[str, object]) -> BertArgs:
    def num(key: str) -> int:
        return int(str(config[key]))

    return BertArgs(
        dim=num("hidden_size"),
        n_layers=num("num_hidden_layers"),
        n_heads=num("num_attention_heads"),
        ffn_dim=num("intermediate_size"),
        vocab_size=num("vocab_size"),
        max_positions=num("max_position_embeddings"),
        type_vocab_size=num("type_vocab_size"),
        norm_eps=float(str(config.get("layer_norm_eps", 1e-12))),
    )


class Embedder:
    """A loaded sentence-embedding model. Not thread-safe: one worker thread owns it."""

    def __init__(
        self,
        folder: Path,
        device: torch.device,
        precision: Precision,
        batch_size: int = 32,
    ) -> None:
        config = json.loads((folder / "config.json").read_text())
        self.args = _args_from_config(config)
        self.name = folder.name
        self.device = device
        self.precision = precision
        self.batch_size = batch_size
        st_config = folder / "sentence_bert_config.json"
        max_len = self.args.max_positions
        if st_config.exists():
            max_len = int(json.loads(st_config.read_text()).get("max_seq_length", max_len))
        self.max_tokens = min(max_len, self.args.max_positions)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_tokens)
        state = from_hf_state_dict(load_file(str(folder / "model.safetensors")))
        with torch.device("meta"):
            model = BertEncoder(self.args)
        model.load_state_dict(state, strict=True, assign=True)
        dtype = precision.activation_dtype(device)
        model = model.to(device=device, dtype=dtype)
        if precision is Precision.INT8:
            for layer in model.layers:
                quantize_linears(layer, dtype, dynamic=False)
        self.model = model.eval()

    @torch.inference_mode()
    def embed(
        self, texts: Sequence[str], cancelled: Callable[[], bool] = lambda: False
    ) -> EmbeddingResult:
        """Unit-length embeddings of ``texts`` in input order, and the token count used."""
        encodings = self.tokenizer.encode_batch(list(texts))
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        out: list[list[float]] = [[] for _ in texts]
        for start in range(0, len(order), self.batch_size):
            if cancelled():
                break
            chunk = order[start : start + self.batch_size]
            hidden, owner = self.model.packed([encodings[i].ids for i in chunk])
            lengths = torch.tensor([len(encodings[i].ids) for i in chunk], device=self.device)
            pooled = torch.zeros(len(chunk), hidden.shape[-1], device=self.device)
            pooled.index_add_(0, owner, hidden.float())
            pooled /= lengths[:, None].clamp(min=1)
            vectors = F.normalize(pooled, p=2, dim=1).cpu().tolist()
            for row, i in enumerate(chunk):
                out[i] = vectors[row]
        tokens = [len(e.ids) for e in encodings]
        return EmbeddingResult(out, sum(tokens), tokens)


class _Entry:
    """One request's inputs, waiting for a batch; ``abandoned`` when its client left."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.abandoned = False
        self.result: EmbeddingResult | None = None
        self.error: BaseException | None = None
        self.taken = False


class Coalescer:
    """Merges the waiting embedding requests of one model into one ``embed`` call.

    ``add`` registers a request's inputs (on the event loop, before its job is queued);
    ``run`` is its job's body on the worker thread: unless an earlier job already embedded
    them, it takes this request and the ones waiting after it (clients still there, up to
    ``max_inputs`` inputs in all), embeds them together and hands each its share.
    """

    def __init__(self, max_inputs: int | None = None) -> None:
        self.max_inputs = max_inputs or MAX_COALESCED_INPUTS  # 1: no coalescing
        self._lock = threading.Lock()
        self._pending: list[_Entry] = []

    def add(self, texts: list[str]) -> _Entry:
        entry = _Entry(texts)
        with self._lock:
            self._pending.append(entry)
        return entry

    def abandon(self, entry: _Entry) -> None:
        with self._lock:
            entry.abandoned = True
            if not entry.taken:
                self._pending.remove(entry)
                entry.taken = True

    def _take(self, entry: _Entry) -> list[_Entry]:
        with self._lock:
            if entry.taken:
                return []
            batch, total, rest = [entry], len(entry.texts), []
            for other in self._pending:
                if other is entry:
                    continue
                if total + len(other.texts) <= self.max_inputs and other.texts:
                    batch.append(other)
                    total += len(other.texts)
                else:
                    rest.append(other)
            for taken in batch:
                taken.taken = True
            self._pending = rest
            return batch

    def run(self, embedder: Embedder, entry: _Entry) -> EmbeddingResult:
        batch = self._take(entry)
        if batch:
            texts = [text for taken in batch for text in taken.texts]
            try:
                merged = embedder.embed(texts, lambda: all(e.abandoned for e in batch))
            except Exception as exc:
                for taken in batch:
                    taken.error = exc
            else:
                start = 0
                for taken in batch:
                    end = start + len(taken.texts)
                    tokens = merged.tokens[start:end]
                    taken.result = EmbeddingResult(merged.vectors[start:end], sum(tokens), tokens)
                    start = end
        if entry.error is not None:
            raise entry.error
        # None: its client left before a batch took it; nobody waits for the answer.
        return entry.result or EmbeddingResult([], 0, [])
