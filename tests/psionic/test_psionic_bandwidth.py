"""The bandwidth bound's parts (bench/bandwidth.py): weight bytes per token, read bandwidth."""

from __future__ import annotations

import torch
from torch import nn

from bench.bandwidth import gguf_bytes_per_token, module_bytes_per_token, read_bandwidth
from psionic.quant import Int8Linear
from psionic.registry import smollm2_gguf


def test_module_bytes_count_weights_once_and_one_embedding_row() -> None:
    model = nn.Sequential(nn.Embedding(100, 8), nn.Linear(8, 4), nn.LayerNorm(4))
    floats = 8 + (8 * 4 + 4) + (4 + 4)
    assert module_bytes_per_token(model) == 4 * floats


def test_int8_linear_counts_one_byte_per_weight() -> None:
    layer = Int8Linear(torch.randn(16, 32), torch.float32)
    per_row_scale = 4 * 16
    assert module_bytes_per_token(layer) == 16 * 32 + per_row_scale
    weight_only = Int8Linear(torch.randn(16, 32), torch.float32, dynamic=False)
    assert module_bytes_per_token(weight_only) == 16 * 32 + per_row_scale


def test_gguf_bytes_are_the_tensor_data() -> None:
    path = smollm2_gguf()
    size = gguf_bytes_per_token(path)
    assert 0.9 * path.stat().st_size < size <= path.stat().st_size


def test_read_bandwidth_is_positive() -> None:
    assert read_bandwidth(1, mib=16, repeats=2) > 0
