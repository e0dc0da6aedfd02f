"""Int8 weights: per-output-channel symmetric scales.

On CPU the layer runs fbgemm's dynamic quantized linear: int8 weights packed once, fp32
activations quantised per call, int8 dot products. Decode of a small model is bound by the
matmuls, and on AVX2 this kernel is the fastest torch has (bf16 GEMV is emulated there and
``_weight_int8pack_mm`` is slower still; figures in docs/benchmarks.md). On CUDA the weights
are dequantised on the fly under bf16 activations: correct, saves memory, not faster.
Dynamic activation quantisation costs accuracy: fine for the decoder (greedy output matches
fp32 on the test prompts' first tokens), too much for the sentence encoder, which therefore
uses the weight-only path (``dynamic=False``).
"""

from __future__ import annotations

import warnings
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def quantize_per_channel(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Return (int8 weight, fp32 scale per output row) with ``w ≈ q * scale[:, None]``."""
    w = weight.float()
    scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    q = torch.clamp(torch.round(w / scales[:, None]), -127, 127).to(torch.int8)
    return q, scales


def has_fbgemm() -> bool:
    """True where torch ships the x86 quantized engine (fbgemm); not on ARM builds."""
    return bool({"fbgemm", "x86"} & set(torch.backends.quantized.supported_engines))


def _fbgemm_pack(q: Tensor, scales: Tensor, bias: Tensor | None) -> Any:
    zero_points = torch.zeros(q.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        # Creating quantized tensors warns that the quantized-tensor API is deprecated; the
        # packed weight below is all that is kept.
        warnings.simplefilter("ignore", UserWarning)
        qweight = torch._make_per_channel_quantized_tensor(q, scales.double(), zero_points, 0)
        return torch.ops.quantized.linear_prepack(qweight, bias)


class Int8Linear(nn.Module):
    """A linear layer holding int8 weights and per-channel scales (and an optional bias)."""

    def __init__(
        self,
        weight: Tensor,
        dtype: torch.dtype,
        bias: Tensor | None = None,
        dynamic: bool = True,
    ) -> None:
        super().__init__()
        q, scales = quantize_per_channel(weight)
        self.in_features = int(weight.shape[1])
        self.out_features = int(weight.shape[0])
        self._packed: Any = None
        if dynamic and weight.device.type == "cpu" and dtype == torch.float32 and has_fbgemm():
            self._packed = _fbgemm_pack(q, scales, None if bias is None else bias.float())
            self.bias = None
            return
        self.register_buffer("weight", q.to(weight.device))
        self.register_buffer("scales", scales.to(device=weight.device, dtype=dtype))
        self.bias = None if bias is None else nn.Parameter(bias.to(dtype), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        if self._packed is not None:
            return cast(Tensor, torch.ops.quantized.linear_dynamic(x, self._packed, True))
        weight = cast(Tensor, self.weight)
        scales = cast(Tensor, self.scales)
        out = F.linear(x, weight.to(x.dtype)) * scales.to(x.dtype)
        return out if self.bias is None else out + self.bias


def quantize_linears(module: nn.Module, dtype: torch.dtype, dynamic: bool = True) -> None:
    """Replace every ``nn.Linear`` under ``module`` by an ``Int8Linear``, in place.

    ``dynamic=False`` keeps activations unquantised (weight-only) even on CPU: slower, but
    the right trade for encoders, whose outputs are compared by cosine.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            bias = None if child.bias is None else child.bias.detach()
            setattr(module, name, Int8Linear(child.weight.detach(), dtype, bias, dynamic))
        else:
            quantize_linears(child, dtype, dynamic)
