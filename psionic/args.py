"""Model hyper-parameters as frozen dataclasses, with named presets.

A preset is the whole description of an architecture's shape; weights come from a GGUF or
safetensors file and the loader checks that their shapes match the arguments.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LlamaArgs:
    """Shape of a llama-family decoder (Llama 2/3, SmolLM, Mistral without sliding window)."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    ffn_dim: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    tie_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


@dataclass(frozen=True)
class BertArgs:
    """Shape of a BERT encoder as used by sentence-transformers models."""

    dim: int
    n_layers: int
    n_heads: int
    ffn_dim: int
    vocab_size: int
    max_positions: int = 512
    type_vocab_size: int = 2
    norm_eps: float = 1e-12

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


LLAMA_PRESETS: dict[str, LlamaArgs] = {
    "smollm2-135m": LlamaArgs(
        dim=576,
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        vocab_size=49152,
        ffn_dim=1536,
        rope_theta=100000.0,
        max_seq_len=8192,
        tie_embeddings=True,
    ),
    "smollm2-360m": LlamaArgs(
        dim=960,
        n_layers=32,
        n_heads=15,
        n_kv_heads=5,
        vocab_size=49152,
        ffn_dim=2560,
        rope_theta=100000.0,
        max_seq_len=8192,
        tie_embeddings=True,
    ),
}

BERT_PRESETS: dict[str, BertArgs] = {
    "minilm-l6": BertArgs(dim=384, n_layers=6, n_heads=12, ffn_dim=1536, vocab_size=30522),
    "bert-base": BertArgs(dim=768, n_layers=12, n_heads=12, ffn_dim=3072, vocab_size=30522),
}
