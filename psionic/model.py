"""A llama-family decoder with a preallocated KV cache, written to be read in one sitting.

The numerics follow the reference implementation closely (RMSNorm in fp32, rotary tables in
fp32 cast to the activation dtype, rotate-half RoPE) so that greedy decoding is
token-identical to ``transformers`` on the same weights in fp32 and bf16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from psionic.args import LlamaArgs


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in fp32, scaled in the activation dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


@dataclass
class KVCache:
    """Keys and values for every layer, shape (layers, 1, kv_heads, capacity, head_dim)."""

    k: Tensor
    v: Tensor

    @classmethod
    def allocate(
        cls, args: LlamaArgs, capacity: int, dtype: torch.dtype, device: torch.device
    ) -> KVCache:
        shape = (args.n_layers, 1, args.n_kv_heads, capacity, args.head_dim)
        return cls(
            torch.zeros(shape, dtype=dtype, device=device),
            torch.zeros(shape, dtype=dtype, device=device),
        )

    @property
    def capacity(self) -> int:
        return int(self.k.shape[3])


def rope_tables(args: LlamaArgs, device: torch.device) -> tuple[Tensor, Tensor]:
    """Cos and sin tables of shape (max_seq_len, head_dim), in fp32."""
    exponents = torch.arange(0, args.head_dim, 2, dtype=torch.int64).float() / args.head_dim
    inv_freq = 1.0 / (args.rope_theta**exponents)
    positions = torch.arange(args.max_seq_len, dtype=torch.float32)
    freqs = torch.outer(positions, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(device), emb.sin().to(device)


def fuse_weights(state: dict[str, Tensor], n_layers: int) -> dict[str, Tensor]:
    """Stack wq/wk/wv into wqkv and w1/w3 into w13 (file names stay the reference's)."""
    out = dict(state)
    for i in range(n_layers):
        a, f = f"layers.{i}.attention", f"layers.{i}.feed_forward"
        parts = [out.pop(f"{a}.{name}.weight") for name in ("wq", "wk", "wv")]
        out[f"{a}.wqkv.weight"] = torch.cat(parts)
        out[f"{f}.w13.weight"] = torch.cat([out.pop(f"{f}.w1.weight"), out.pop(f"{f}.w3.weight")])
    return out


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    """Grouped-query self-attention that writes into and reads from the KV cache."""

    def __init__(self, args: LlamaArgs) -> None:
        super().__init__()
        self.n_heads = args.n_heads
        self.n_kv_heads = args.n_kv_heads
        self.head_dim = args.head_dim
        # Q, K and V in one matmul: one call per layer instead of three (see fuse_weights).
        self.q_size = args.n_heads * args.head_dim
        self.kv_size = args.n_kv_heads * args.head_dim
        self.wqkv = nn.Linear(args.dim, self.q_size + 2 * self.kv_size, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        start_pos: int,
    ) -> Tensor:
        bsz, seqlen, _ = x.shape
        q, k, v = self.wqkv(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(bsz, seqlen, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(bsz, seqlen, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(bsz, seqlen, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        end = start_pos + seqlen
        k_cache[:, :, start_pos:end] = k
        v_cache[:, :, start_pos:end] = v
        keys = k_cache[:, :, :end]
        values = v_cache[:, :, :end]
        gqa = self.n_heads != self.n_kv_heads
        if seqlen == 1:
            out = F.scaled_dot_product_attention(q, keys, values, enable_gqa=gqa)
        elif start_pos == 0:
            out = F.scaled_dot_product_attention(q, keys, values, is_causal=True, enable_gqa=gqa)
        else:
            mask = torch.ones(seqlen, end, dtype=torch.bool, device=x.device).tril(start_pos)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=gqa)
        out = out.transpose(1, 2).reshape(bsz, seqlen, self.n_heads * self.head_dim)
        return cast(Tensor, self.wo(out))


class FeedForward(nn.Module):
    """SwiGLU MLP: w2(silu(w1 x) * w3 x), with w1 and w3 stacked into one matmul (w13)."""

    def __init__(self, args: LlamaArgs) -> None:
        super().__init__()
        self.ffn_dim = args.ffn_dim
        self.w13 = nn.Linear(args.dim, 2 * args.ffn_dim, bias=False)
        self.w2 = nn.Linear(args.ffn_dim, args.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).split(self.ffn_dim, dim=-1)
        return cast(Tensor, self.w2(F.silu(gate) * up))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, args: LlamaArgs) -> None:
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        start_pos: int,
    ) -> Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, k_cache, v_cache, start_pos)
        return cast(Tensor, h + self.feed_forward(self.ffn_norm(h)))


class Transformer(nn.Module):
    """The decoder: token ids in, next-token logits out, state kept in a ``KVCache``."""

    def __init__(self, args: LlamaArgs) -> None:
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output: nn.Module = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)

    def set_rope_tables(self, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        """(Re)compute the rotary tables on ``device``; they are never saved.

        Computed in fp32 and then cast to the activation dtype, as the reference does.
        """
        cos, sin = rope_tables(self.args, device)
        cos, sin = cos.to(dtype), sin.to(dtype)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, tokens: Tensor, start_pos: int, cache: KVCache) -> Tensor:
        """Run ``tokens`` (shape (1, T)) at positions start_pos.. and return the last logits.

        Only the final position's logits are computed (shape (1, vocab)): prefill never
        needs the others, and the output projection is the single largest matmul.
        """
        seqlen = tokens.shape[1]
        h = self.tok_embeddings(tokens)
        rope_cos = cast(Tensor, self.rope_cos)
        rope_sin = cast(Tensor, self.rope_sin)
        cos = rope_cos[start_pos : start_pos + seqlen]
        sin = rope_sin[start_pos : start_pos + seqlen]
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, cache.k[i], cache.v[i], start_pos)
        h = self.norm(h[:, -1, :])
        return cast(Tensor, self.output(h))
