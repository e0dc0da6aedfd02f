"""The precisions psionic runs models in, and the activation dtype each implies."""

from __future__ import annotations

import enum

import torch


class Precision(enum.StrEnum):
    """Weight precision. ``int8`` weights run with fp32 activations on CPU, bf16 on CUDA."""

    FP32 = "fp32"
    BF16 = "bf16"
    INT8 = "int8"

    def activation_dtype(self, device: torch.device) -> torch.dtype:
        """fp32 and CPU int8 (fbgemm takes fp32 activations) compute in fp32; others in bf16."""
        if self is Precision.FP32 or (self is Precision.INT8 and device.type == "cpu"):
            return torch.float32
        return torch.bfloat16
