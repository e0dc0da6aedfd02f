"""A BERT encoder (as used by sentence-transformers), loading Hugging Face tensor names."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from psionic.args import BertArgs


class BertLayer(nn.Module):
    """Post-norm encoder layer: self-attention, then a GELU MLP, each with a residual."""

    def __init__(self, args: BertArgs) -> None:
        super().__init__()
        self.n_heads = args.n_heads
        self.head_dim = args.head_dim
        self.query = nn.Linear(args.dim, args.dim)
        self.key = nn.Linear(args.dim, args.dim)
        self.value = nn.Linear(args.dim, args.dim)
        self.attn_out = nn.Linear(args.dim, args.dim)
        self.attn_norm = nn.LayerNorm(args.dim, eps=args.norm_eps)
        self.up = nn.Linear(args.dim, args.ffn_dim)
        self.down = nn.Linear(args.ffn_dim, args.dim)
        self.out_norm = nn.LayerNorm(args.dim, eps=args.norm_eps)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        bsz, seqlen, dim = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(bsz, seqlen, self.n_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        attn = attn.transpose(1, 2).reshape(bsz, seqlen, dim)
        h = self.attn_norm(x + self.attn_out(attn))
        return cast(Tensor, self.out_norm(h + self.down(F.gelu(self.up(h)))))


class BertEncoder(nn.Module):
    """Token ids and an attention mask in, last hidden states out."""

    def __init__(self, args: BertArgs) -> None:
        super().__init__()
        self.args = args
        self.word_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.position_embeddings = nn.Embedding(args.max_positions, args.dim)
        self.token_type_embeddings = nn.Embedding(args.type_vocab_size, args.dim)
        self.embed_norm = nn.LayerNorm(args.dim, eps=args.norm_eps)
        self.layers = nn.ModuleList(BertLayer(args) for _ in range(args.n_layers))

    def forward(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        seqlen = ids.shape[1]
        positions = torch.arange(seqlen, device=ids.device)
        h = (
            self.word_embeddings(ids)
            + self.token_type_embeddings(torch.zeros_like(ids))
            + self.position_embeddings(positions)[None]
        )
        h = self.embed_norm(h)
        # Boolean mask broadcast over heads and query positions: True means "attend".
        mask = attention_mask.bool()[:, None, None, :]
        for layer in self.layers:
            h = layer(h, mask)
        return cast(Tensor, h)


_LAYER_PARTS = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "up",
    "output.dense": "down",
    "output.LayerNorm": "out_norm",
}
_TOP_PARTS = {
    "embeddings.word_embeddings": "word_embeddings",
    "embeddings.position_embeddings": "position_embeddings",
    "embeddings.token_type_embeddings": "token_type_embeddings",
    "embeddings.LayerNorm": "embed_norm",
}


def from_hf_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face ``BertModel`` tensor names → this module's names (pooler dropped)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("bert.")
        module, _, param = key.rpartition(".")
        if param == "gamma":
            param = "weight"
        elif param == "beta":
            param = "bias"
        if module.startswith("encoder.layer."):
            _, _, index, inner = module.split(".", 3)
            out[f"layers.{index}.{_LAYER_PARTS[inner]}.{param}"] = value
        elif module in _TOP_PARTS:
            out[f"{_TOP_PARTS[module]}.{param}"] = value
    return out
