"""Int8 weight-only quantisation: per-output-channel symmetric scales.

On CPU the matmul runs in ``torch._weight_int8pack_mm`` (int8 weights, bf16 activations),
which reads a quarter of the fp32 bytes per token; decode on a small model is bound by memory
bandwidth, so this is the fastest CPU precision. Elsewhere the weights are dequantised on the
fly, which is still correct, just not faster.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def quantize_per_channel(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Return (int8 weight, fp32 scale per output row) with ``w ≈ q * scale[:, None]``."""
    w = weight.float()
    scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    q = torch.clamp(torch.round(w / scales[:, None]), -127, 127).to(torch.int8)
    return q, scales


class Int8Linear(nn.Module):
    """A bias-free linear layer holding int8 weights and per-channel scales."""

    def __init__(self, weight: Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        q, scales = quantize_per_channel(weight)
        self.in_features = int(weight.shape[1])
        self.out_features = int(weight.shape[0])
        self.register_buffer("weight", q.to(weight.device))
        self.register_buffer("scales", scales.to(device=weight.device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        weight = cast(Tensor, self.weight)
        scales = cast(Tensor, self.scales)
        if x.device.type == "cpu" and x.dtype == torch.bfloat16:
            flat = x.reshape(-1, self.in_features)
            out = torch._weight_int8pack_mm(flat, weight, scales)
            return out.reshape(*x.shape[:-1], self.out_features)
        return F.linear(x, weight.to(x.dtype)) * scales.to(x.dtype)


def quantize_linears(module: nn.Module, dtype: torch.dtype) -> None:
    """Replace every bias-free ``nn.Linear`` under ``module`` by an ``Int8Linear``, in place."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear) and child.bias is None:
            setattr(module, name, Int8Linear(child.weight.detach(), dtype))
        else:
            quantize_linears(child, dtype)
