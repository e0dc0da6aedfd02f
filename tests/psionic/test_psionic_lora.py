"""LoRA adapters on a tiny random decoder: attach, view, save and load (psionic/lora.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from psionic.args import LlamaArgs
from psionic.lora import (
    AdapterError,
    LoraSpec,
    adapter_state,
    attach_lora,
    load_adapter_state,
    lora_view,
    read_adapter_dir,
    write_adapter_dir,
)
from psionic.model import KVCache, Transformer
from psionic.quant import quantize_linears

TINY = LlamaArgs(
    dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, ffn_dim=48, max_seq_len=64
)
ALL = LoraSpec(r=4, alpha=8, targets=("q", "k", "v", "o", "mlp", "head"))


def tiny_model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(TINY)
    model.set_rope_tables(torch.device("cpu"))
    return model.eval()


def logits(model: Transformer, tokens: list[int]) -> torch.Tensor:
    cache = KVCache.allocate(TINY, 16, torch.float32, torch.device("cpu"))
    with torch.no_grad():
        return model(torch.tensor([tokens]), 0, cache)


def randomize_b(model: Transformer, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, tensor in adapter_state(model).items():
            if key.endswith("lora_B"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)


TOKENS = [1, 5, 9, 3, 7]


def test_zero_b_equals_base() -> None:
    base = tiny_model()
    expected = logits(base, TOKENS)
    attach_lora(base, ALL, seed=0)
    assert torch.equal(logits(base, TOKENS), expected)
    trainable = {n for n, p in base.named_parameters() if p.requires_grad}
    assert trainable == set(adapter_state(base))
    assert "layers.1.attention.wqkv.q.lora_A" in trainable
    assert "layers.0.feed_forward.w13.up.lora_B" in trainable
    assert "output.lora.lora_A" in trainable


def test_view_equals_attached_and_leaves_base_unchanged() -> None:
    trained = tiny_model()
    attach_lora(trained, ALL, seed=3)
    randomize_b(trained)
    expected = logits(trained, TOKENS)
    base = tiny_model()
    before = logits(base, TOKENS)
    view = lora_view(base, ALL, adapter_state(trained))
    assert torch.allclose(logits(view, TOKENS), expected, atol=1e-6)
    assert not torch.allclose(expected, before)
    assert torch.equal(logits(base, TOKENS), before)
    assert view.layers[0].attention.wqkv.base.weight is base.layers[0].attention.wqkv.weight
    assert not any(isinstance(m, type(view.output)) for m in base.modules() if m is not base.output)


def test_view_over_int8_and_bf16_bases() -> None:
    trained = tiny_model()
    attach_lora(trained, ALL, seed=3)
    randomize_b(trained)
    expected = logits(trained, TOKENS)
    state = adapter_state(trained)
    quantized = tiny_model()
    quantize_linears(quantized.layers, torch.float32)
    view = lora_view(quantized, ALL, state)
    assert (logits(view, TOKENS) - expected).abs().max() < 0.05
    half = tiny_model().to(torch.bfloat16)
    half.set_rope_tables(torch.device("cpu"), torch.bfloat16)
    cache = KVCache.allocate(TINY, 16, torch.bfloat16, torch.device("cpu"))
    with torch.no_grad():
        out = lora_view(half, ALL, state)(torch.tensor([TOKENS]), 0, cache)
    assert out.dtype == torch.bfloat16
    assert (out.float() - expected).abs().max() < 0.1


def test_adapter_dir_round_trip_and_digest(tmp_path: Path) -> None:
    model = tiny_model()
    spec = LoraSpec(r=4, alpha=8, targets=("q", "v", "head"))
    attach_lora(model, spec, seed=0)
    randomize_b(model)
    meta = write_adapter_dir(tmp_path / "a", model, spec, {"base_model": "tiny", "step": 3})
    assert meta["step"] == 3
    read_meta, state = read_adapter_dir(tmp_path / "a")
    assert read_meta == meta and LoraSpec.from_json(read_meta["spec"]) == spec
    own = adapter_state(model)
    assert set(state) == set(own)
    assert all(torch.equal(state[k], own[k]) for k in own)
    other = tiny_model()
    attach_lora(other, spec, seed=9)
    load_adapter_state(other, state)
    assert torch.equal(logits(other, TOKENS), logits(model, TOKENS))
    weights = tmp_path / "a" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(AdapterError, match="digest mismatch"):
        read_adapter_dir(tmp_path / "a")


def test_peft_names(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model = tiny_model()
    attach_lora(model, ALL, seed=0)
    write_adapter_dir(tmp_path / "a", model, ALL, {"base_model": "tiny"})
    keys = set(load_file(str(tmp_path / "a" / "adapter_model.safetensors")))
    assert "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.model.layers.0.mlp.gate_proj.lora_B.weight" in keys
    assert "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight" in keys
    assert "base_model.model.lm_head.lora_A.weight" in keys
    assert len(keys) == 2 * (2 * 7 + 1)
