"""Sentence embeddings: BERT encoder, mean pooling over real tokens, L2 normalisation.

Inputs are sorted by token length and batched, so each batch pads only to its own longest
input; results come back in the caller's order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer

from psionic.args import BertArgs
from psionic.bert import BertEncoder, from_hf_state_dict
from psionic.precision import Precision
from psionic.quant import quantize_linears


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: list[list[float]]
    prompt_tokens: int


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
            width = max(len(encodings[i].ids) for i in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, i in enumerate(chunk):
                n = len(encodings[i].ids)
                ids[row, :n] = torch.tensor(encodings[i].ids)
                mask[row, :n] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            hidden = self.model(ids, mask).float()
            weights = mask.unsqueeze(-1).float()
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            vectors = F.normalize(pooled, p=2, dim=1).cpu().tolist()
            for row, i in enumerate(chunk):
                out[i] = vectors[row]
        return EmbeddingResult(out, sum(len(e.ids) for e in encodings))
