"""Device and precision choice.

Defaults are the fastest precision measured per device and model kind (figures in
docs/benchmarks.md): on CUDA, bf16; on x86 CPUs the decoder uses int8 weights (fbgemm's
int8 kernels beat bf16, which AVX2 CPUs only emulate, and fp32, which reads 4x the bytes;
CPUs without fbgemm get bf16), and
the encoder stays fp32 unless the CPU has native bf16 instructions (int8 costs it accuracy).
"""

from __future__ import annotations

from pathlib import Path

import torch

from psionic.precision import Precision
from psionic.quant import has_fbgemm
from psionic.registry import ModelKind


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; anything else is taken as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but CUDA is not available")
    return device


def cpu_has_native_bf16() -> bool:
    """True when the CPU advertises AVX512-BF16 or AMX-BF16 (Linux only; else False)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def default_precision(device: torch.device, kind: ModelKind) -> Precision:
    """The fastest precision for ``kind`` on ``device`` (see the module docstring)."""
    if device.type == "cuda":
        return Precision.BF16 if torch.cuda.is_bf16_supported() else Precision.FP32
    if kind is ModelKind.CHAT:
        return Precision.INT8 if has_fbgemm() else Precision.BF16
    return Precision.BF16 if cpu_has_native_bf16() else Precision.FP32
