"""The transformers model these weights are, for comparing psionic against (tests, benches).

transformers is a test and bench extra, imported only when this is called.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from psionic.weights import LlamaWeights, to_hf_state_dict


def hf_llama(weights: LlamaWeights, dtype: torch.dtype, device: str = "cpu") -> Any:
    """A transformers LlamaForCausalLM with `weights`, as from_pretrained would build it."""
    transformers: Any = importlib.import_module("transformers")  # untyped: a test extra
    a = weights.args
    config = transformers.LlamaConfig(
        vocab_size=a.vocab_size,
        hidden_size=a.dim,
        intermediate_size=a.ffn_dim,
        num_hidden_layers=a.n_layers,
        num_attention_heads=a.n_heads,
        num_key_value_heads=a.n_kv_heads,
        rms_norm_eps=a.norm_eps,
        rope_theta=a.rope_theta,
        max_position_embeddings=a.max_seq_len,
        tie_word_embeddings=a.tie_embeddings,
        attn_implementation="sdpa",
    )
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    state = to_hf_state_dict(weights.state_dict)
    if a.tie_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    # As from_pretrained(dtype=...) leaves it: the rotary frequencies stay fp32.
    exponents = torch.arange(0, a.head_dim, 2, dtype=torch.int64).float() / a.head_dim
    inv_freq = 1.0 / (a.rope_theta**exponents)
    rotary = model.model.rotary_emb
    for name in ("inv_freq", "original_inv_freq"):
        rotary.register_buffer(name, inv_freq, persistent=False)
    model = model.to(device=device, dtype=dtype).eval()
    for name in ("inv_freq", "original_inv_freq"):
        rotary.register_buffer(name, inv_freq.to(device), persistent=False)
    return model
