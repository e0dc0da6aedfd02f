"""A BERT encoder (as used by sentence-transformers), loading Hugging Face tensor names.

The query, key and value projections are one fused linear layer. ``BertEncoder.packed``
runs the encoder on the real tokens only: every linear layer, LayerNorm and GELU sees the
tokens of all inputs packed end to end, and only attention scatters them into a padded
(batch, longest input) block. A batch of inputs of mixed lengths therefore spends no matmul
time on padding, and a single input (or inputs of one length) runs unmasked attention.
"""

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
        self.qkv = nn.Linear(args.dim, 3 * args.dim)
        self.attn_out = nn.Linear(args.dim, args.dim)
        self.attn_norm = nn.LayerNorm(args.dim, eps=args.norm_eps)
        self.up = nn.Linear(args.dim, args.ffn_dim)
        self.down = nn.Linear(args.ffn_dim, args.dim)
        self.out_norm = nn.LayerNorm(args.dim, eps=args.norm_eps)

    def forward(self, x: Tensor, mask: Tensor | None, index: Tensor | None, shape: Shape) -> Tensor:
        """``x``: (tokens, dim), the real tokens packed. ``index``: where each sits in the
        flattened (batch, width) block; None when ``x`` is that whole block (no padding, or
        padded inputs, ``mask`` then telling the real keys)."""
        bsz, width = shape
        dim = x.shape[-1]
        qkv = self.qkv(x)
        if index is not None:
            block = qkv.new_zeros(bsz * width, qkv.shape[-1])
            block.index_copy_(0, index, qkv)
            qkv = block
        q, k, v = qkv.view(bsz, width, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        attn = attn.transpose(1, 2).reshape(bsz * width, dim)
        if index is not None:
            attn = attn.index_select(0, index)
        h = self.attn_norm(x + self.attn_out(attn))
        return cast(Tensor, self.out_norm(h + self.down(F.gelu(self.up(h)))))


Shape = tuple[int, int]


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
        """Padded (batch, width) ids and 0/1 mask → (batch, width, dim) hidden states."""
        bsz, width = ids.shape
        positions = torch.arange(width, device=ids.device).expand(bsz, width)
        h = self._embed(ids.reshape(-1), positions.reshape(-1))
        # Boolean mask broadcast over heads and query positions: True means "attend".
        mask = attention_mask.bool()[:, None, None, :]
        for layer in self.layers:
            h = layer(h, mask, None, (bsz, width))
        return h.view(bsz, width, -1)

    def packed(self, ids: list[list[int]]) -> tuple[Tensor, Tensor]:
        """Hidden states of the real tokens of each input, packed: (tokens, dim), and the
        input each token belongs to: (tokens,). No input may be empty."""
        device = self.word_embeddings.weight.device
        lengths = [len(seq) for seq in ids]
        bsz, width = len(ids), max(lengths)
        flat = torch.tensor([t for seq in ids for t in seq], dtype=torch.long, device=device)
        lens = torch.tensor(lengths, device=device)
        owner = torch.repeat_interleave(torch.arange(bsz, device=device), lens)
        starts = torch.cumsum(lens, 0) - lens
        positions = torch.arange(flat.shape[0], device=device) - starts[owner]
        h = self._embed(flat, positions)
        mask: Tensor | None = None
        index: Tensor | None = None
        if min(lengths) != width:
            index = owner * width + positions
            mask = (torch.arange(width, device=device) < lens[:, None])[:, None, None, :]
        for layer in self.layers:
            h = layer(h, mask, index, (bsz, width))
        return h, owner

    def _embed(self, ids: Tensor, positions: Tensor) -> Tensor:
        h = (
            self.word_embeddings(ids)
            + self.token_type_embeddings.weight[0]
            + self.position_embeddings(positions)
        )
        return cast(Tensor, self.embed_norm(h))


_LAYER_PARTS = {
    "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "up",
    "output.dense": "down",
    "output.LayerNorm": "out_norm",
}
_QKV = ("attention.self.query", "attention.self.key", "attention.self.value")
_TOP_PARTS = {
    "embeddings.word_embeddings": "word_embeddings",
    "embeddings.position_embeddings": "position_embeddings",
    "embeddings.token_type_embeddings": "token_type_embeddings",
    "embeddings.LayerNorm": "embed_norm",
}


def from_hf_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face ``BertModel`` tensor names → this module's names (pooler dropped;
    query, key and value concatenated into ``qkv``)."""
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        key = key.removeprefix("bert.")
        module, _, param = key.rpartition(".")
        if param == "gamma":
            param = "weight"
        elif param == "beta":
            param = "bias"
        if module.startswith("encoder.layer."):
            _, _, index, inner = module.split(".", 3)
            if inner in _QKV:
                qkv.setdefault((index, param), {})[inner] = value
            else:
                out[f"layers.{index}.{_LAYER_PARTS[inner]}.{param}"] = value
        elif module in _TOP_PARTS:
            out[f"{_TOP_PARTS[module]}.{param}"] = value
    for (index, param), parts in qkv.items():
        out[f"layers.{index}.qkv.{param}"] = torch.cat([parts[name] for name in _QKV])
    return out
