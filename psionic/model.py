"""A llama-family decoder with a preallocated KV cache, written to be read in one sitting.

The numerics follow the reference implementation closely (RMSNorm in fp32, rotary tables in
fp32 cast to the activation dtype, rotate-half RoPE) so that greedy decoding is
token-identical to ``transformers`` on the same weights in fp32 and bf16.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    """Keys and values for every layer, shape (layers, slots, kv_heads, capacity, head_dim).

    One sequence uses one slot; a batch (psionic/batch.py) gives each of its sequences a slot.
    Zeros, not garbage, past a sequence's end: attention masks those positions, and a masked
    weight of 0 times a NaN would still be NaN.
    """

    k: Tensor
    v: Tensor

    @classmethod
    def allocate(
        cls,
        args: LlamaArgs,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device,
        slots: int = 1,
    ) -> KVCache:
        shape = (args.n_layers, slots, args.n_kv_heads, capacity, args.head_dim)
        return cls(
            torch.zeros(shape, dtype=dtype, device=device),
            torch.zeros(shape, dtype=dtype, device=device),
        )

    @property
    def capacity(self) -> int:
        return int(self.k.shape[3])

    @property
    def slots(self) -> int:
        return int(self.k.shape[1])

    def slot(self, i: int) -> KVCache:
        """Slot ``i`` as a one-slot cache that shares this one's memory (for its prefill)."""
        return KVCache(self.k[:, i : i + 1], self.v[:, i : i + 1])


@dataclass(frozen=True)
class DecodeRows:
    """What every layer of a batched decode step needs about its rows, computed once."""

    positions: Tensor  # (B,) where each row's new token goes
    slots: Tensor  # (B,) 0..B-1: row b is cache slot b
    end: int  # keys to read: up to the furthest row's position
    mask: Tensor  # (B, 1, 1, end): row b sees positions 0..positions[b]

    @classmethod
    def of(cls, positions: Tensor) -> DecodeRows:
        end = int(positions.max()) + 1  # one device sync per step, not per layer
        mask = torch.arange(end, device=positions.device) <= positions[:, None]
        slots = torch.arange(positions.shape[0], device=positions.device)
        return cls(positions, slots, end, mask[:, None, None, :])


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

    def _qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values of ``x`` (B, T, dim) as (B, heads, T, head_dim), with
        the rotary embedding applied to queries and keys."""
        bsz, seqlen, _ = x.shape
        q, k, v = self.wqkv(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(bsz, seqlen, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(bsz, seqlen, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(bsz, seqlen, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        k_cache: Tensor | None,
        v_cache: Tensor | None,
        start_pos: int,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Attend over the cache up to ``start_pos + T``; with no cache (training, scoring a
        whole sequence) over ``x``'s own keys and values, causally, from position 0, or
        where ``mask`` (T, T), true where a query may see a key, allows (packed sequences)."""
        bsz, seqlen, _ = x.shape
        q, k, v = self._qkv(x, cos, sin)
        end = start_pos + seqlen
        if k_cache is None or v_cache is None:
            keys, values = k, v
        else:
            k_cache[:, :, start_pos:end] = k
            v_cache[:, :, start_pos:end] = v
            keys = k_cache[:, :, :end]
            values = v_cache[:, :, :end]
        gqa = self.n_heads != self.n_kv_heads
        if mask is not None:
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=gqa)
        elif seqlen == 1:
            out = F.scaled_dot_product_attention(q, keys, values, enable_gqa=gqa)
        elif start_pos == 0:
            out = F.scaled_dot_product_attention(q, keys, values, is_causal=True, enable_gqa=gqa)
        else:
            mask = torch.ones(seqlen, end, dtype=torch.bool, device=x.device).tril(start_pos)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=gqa)
        out = out.transpose(1, 2).reshape(bsz, seqlen, self.n_heads * self.head_dim)
        return cast(Tensor, self.wo(out))

    def decode(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        rows: DecodeRows,
    ) -> Tensor:
        """One new token for each of B sequences, row b at its own position in cache slot b.

        ``x`` is (B, 1, dim), ``cos``/``sin`` (B, 1, 1, head_dim) gathered at each row's
        position; each row attends to its own slot up to its own position.
        """
        bsz = x.shape[0]
        q, k, v = self._qkv(x, cos, sin)
        k_cache[rows.slots, :, rows.positions] = k[:, :, 0]
        v_cache[rows.slots, :, rows.positions] = v[:, :, 0]
        keys = k_cache[:bsz, :, : rows.end]
        values = v_cache[:bsz, :, : rows.end]
        gqa = self.n_heads != self.n_kv_heads
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=rows.mask, enable_gqa=gqa)
        out = out.transpose(1, 2).reshape(bsz, 1, self.n_heads * self.head_dim)
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
        k_cache: Tensor | None,
        v_cache: Tensor | None,
        start_pos: int,
        mask: Tensor | None = None,
    ) -> Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, k_cache, v_cache, start_pos, mask)
        return cast(Tensor, h + self.feed_forward(self.ffn_norm(h)))

    def decode(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        rows: DecodeRows,
    ) -> Tensor:
        """As ``forward`` for one token per sequence at per-sequence positions."""
        h = x + self.attention.decode(self.attention_norm(x), cos, sin, k_cache, v_cache, rows)
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

    def hidden_states(self, tokens: Tensor, lengths: Sequence[int] | None = None) -> Tensor:
        """Final (normed) hidden states of whole sequences ``tokens`` (B, T), shape (B, T, dim).

        The training and scoring forward: causal attention from position 0 and no KV cache;
        the output projection is left to ``masked_token_loss``, which applies it only where a
        loss is taken. A shorter sequence padded on the right is unaffected by its padding.

        With ``lengths``, ``tokens`` is one packed row (1, sum(lengths)): sequences of those
        lengths laid end to end, no padding. Each attends only to itself (a block-diagonal
        causal mask) and its rotary positions restart at 0, so its hidden states are those it
        would have alone, while the linear layers run over real tokens only.
        """
        seqlen = tokens.shape[1]
        h = self.tok_embeddings(tokens)
        rope_cos, rope_sin = cast(Tensor, self.rope_cos), cast(Tensor, self.rope_sin)
        mask: Tensor | None = None
        if lengths is None:
            cos, sin = rope_cos[:seqlen], rope_sin[:seqlen]
        else:
            positions, mask = packed_positions(lengths, tokens.device)
            cos, sin = rope_cos[positions], rope_sin[positions]
        for layer in self.layers:
            h = layer(h, cos, sin, None, None, 0, mask)
        return cast(Tensor, self.norm(h))

    def decode(self, tokens: Tensor, positions: Tensor, cache: KVCache) -> Tensor:
        """One decode step for B sequences: ``tokens[b]`` at ``positions[b]`` in cache slot b
        (slots 0..B-1); return their next-token logits, shape (B, vocab)."""
        h = self.tok_embeddings(tokens[:, None])
        cos = cast(Tensor, self.rope_cos)[positions][:, None, None, :]
        sin = cast(Tensor, self.rope_sin)[positions][:, None, None, :]
        rows = DecodeRows.of(positions)
        for i, layer in enumerate(self.layers):
            h = cast(Block, layer).decode(h, cos, sin, cache.k[i], cache.v[i], rows)
        h = self.norm(h[:, -1, :])
        return cast(Tensor, self.output(h))


def packed_positions(lengths: Sequence[int], device: torch.device) -> tuple[Tensor, Tensor]:
    """For sequences of ``lengths`` packed end to end: each token's position within its own
    sequence, shape (T,), and the attention mask, (T, T), true where query i may see key j:
    same sequence and j <= i (block-diagonal causal)."""
    segment = torch.repeat_interleave(
        torch.arange(len(lengths), device=device), torch.tensor(list(lengths), device=device)
    )
    starts = torch.tensor([0, *lengths[:-1]], device=device).cumsum(0)
    positions = torch.arange(segment.shape[0], device=device) - starts[segment]
    causal = torch.ones(segment.shape[0], segment.shape[0], dtype=torch.bool, device=device)
    mask = (segment[:, None] == segment[None, :]) & causal.tril()
    return positions, mask


def _chunk_loss(output: nn.Module, hidden: Tensor, targets: Tensor) -> Tensor:
    logits = cast(Tensor, output(hidden)).float()
    return F.cross_entropy(logits, targets, reduction="sum")


def masked_token_loss(
    output: nn.Module, hidden: Tensor, tokens: Tensor, mask: Tensor, chunk: int = 1024
) -> tuple[Tensor, int]:
    """Summed cross-entropy of predicting ``tokens[:, t]`` from ``hidden[:, t - 1]`` wherever
    ``mask[:, t]`` is true, and the number of such tokens.

    Only the masked positions go through the output projection, ``chunk`` rows at a time in
    fp32; under autograd each chunk is recomputed in the backward pass (activation
    checkpointing), so a (tokens x vocab) logits tensor is never held for the whole batch.
    """
    from torch.utils.checkpoint import checkpoint

    select = mask[:, 1:]
    rows = hidden[:, :-1][select]
    targets = tokens[:, 1:][select]
    count = int(targets.shape[0])
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, count, chunk):
        h, t = rows[start : start + chunk], targets[start : start + chunk]
        if torch.is_grad_enabled() and count > chunk:
            part = checkpoint(_chunk_loss, output, h, t, use_reentrant=False)
        else:
            part = _chunk_loss(output, h, t)
        total = total + part
    return total, count
