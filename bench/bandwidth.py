"""Memory read bandwidth, and the bytes of weights a decode step reads: the bandwidth bound.

A decode step of a small model multiplies one activation vector by every weight matrix, so
it must stream all of them from memory once per token: tokens/s can be at most
``read bandwidth / weight bytes per token``. ``read_bandwidth`` measures the first term (a
sum over a tensor far larger than the caches, best of several); the other two functions
count the second from the weights as each engine holds them.

    python bench/bandwidth.py --threads 1,2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from psionic.quant import Int8Linear


def read_bandwidth(threads: int, mib: int = 512, repeats: int = 7) -> float:
    """GB/s (10^9 bytes) at which ``threads`` torch threads read a ``mib``-MiB fp32 tensor."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
        x.sum()  # fault the pages in
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            x.sum()
            best = min(best, time.perf_counter() - started)
        return x.nbytes / best / 1e9
    finally:
        torch.set_num_threads(previous)


def module_bytes_per_token(model: nn.Module) -> int:
    """Bytes of weights one decode step of ``model`` reads: every parameter and int8 weight,
    one row of each embedding table (a table tied to the output layer is counted there)."""
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            total += module.weight[0].nbytes
            continue
        if isinstance(module, Int8Linear):
            if module._packed is not None:  # fbgemm: int8 weights, fp32 scale per row
                total += module.in_features * module.out_features + 4 * module.out_features
            else:
                total += sum(t.nbytes for t in module.buffers(recurse=False))
        total += sum(p.nbytes for p in module.parameters(recurse=False))
    return total


def gguf_bytes_per_token(path: Path) -> int:
    """Bytes of weights a llama.cpp decode step reads from the GGUF at ``path``: all tensors,
    but one row of the token embeddings unless they double as the output layer."""
    from gguf import GGUFReader

    tensors = {t.name: t for t in GGUFReader(path).tensors}
    total = sum(int(t.n_bytes) for t in tensors.values())
    embd = tensors.get("token_embd.weight")
    if embd is not None and "output.weight" in tensors:
        rows = int(embd.shape[-1])  # GGUF lists dimensions innermost first
        total -= int(embd.n_bytes) - int(embd.n_bytes) // rows
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    for threads in (int(t) for t in args.threads.split(",")):
        print(f"threads {threads}: read bandwidth {read_bandwidth(threads):.1f} GB/s")


if __name__ == "__main__":
    main()
