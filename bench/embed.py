"""Embeddings benchmark: psionic vs sentence-transformers vs onnxruntime, batch 1 and 32.

All three run all-MiniLM-L6-v2 from the packaged files, with the same thread count, on the
same synthetic sentences (8–48 words). onnxruntime runs psionic's encoder exported to ONNX,
with q, k and v as three matmuls as in a plain BERT export (checked against torch before
timing), and is skipped when onnxruntime/onnx are missing.

    python bench/embed.py --threads 2
    python bench/embed.py --threads 1,2 --skip-sentence-transformers

With several thread counts every engine runs at each, side by side, and the ratios compare
each engine at its best.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `psionic serve` sets it

import numpy as np
import torch

from psionic.embeddings import Embedder
from psionic.precision import Precision
from psionic.registry import minilm_folder

WORDS = [
    "relay",
    "provider",
    "lightning",
    "invoice",
    "model",
    "token",
    "request",
    "job",
    "payment",
    "market",
    "compute",
    "node",
    "network",
    "embedding",
    "sentence",
    "vector",
    "cache",
    "thread",
    "queue",
    "server",
    "client",
    "stream",
    "latency",
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "with",
    "on",
    "that",
    "by",
    "this",
    "be",
    "are",
    "from",
]


def sentences(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(8, 48))) + "." for _ in range(count)]


def rate(run: Callable[[list[str]], Any], texts: list[str], batch: int, seconds: float) -> float:
    """Sentences per second, calling ``run`` on consecutive batches for about ``seconds``."""
    run(texts[:batch])  # warm-up
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        start = (done % len(texts)) // batch * batch
        run(texts[start : start + batch])
        done += batch
    return done / (time.perf_counter() - started)


class _SplitQKV(torch.nn.Module):
    """psionic's fused QKV projection as three matmuls, as a plain BERT export has them."""

    def __init__(self, qkv: torch.nn.Linear) -> None:
        super().__init__()
        self.parts = torch.nn.ModuleList()
        for w, b in zip(qkv.weight.chunk(3), qkv.bias.chunk(3), strict=True):
            part = torch.nn.Linear(w.shape[1], w.shape[0])
            part.weight.data, part.bias.data = w.clone(), b.clone()
            self.parts.append(part)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x) for part in self.parts], dim=-1)


def onnx_runner(
    embedder: Embedder, threads: int, folder: Path
) -> Callable[[list[str]], Any] | None:
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime: not installed (pip install '.[bench]'); skipped")
        return None
    path = folder / "minilm.onnx"
    model = copy.deepcopy(embedder.model)
    for layer in model.layers:  # the graph onnxruntime is usually given: q, k, v apart
        layer.qkv = _SplitQKV(layer.qkv)
    ids = torch.ones(2, 8, dtype=torch.long)
    dynamic = {0: "batch", 1: "seq"}
    torch.onnx.export(
        model,
        (ids, torch.ones_like(ids)),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["hidden"],
        dynamic_axes={"input_ids": dynamic, "attention_mask": dynamic, "hidden": dynamic},
        opset_version=17,
        dynamo=False,
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":  # the same policy for all
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    tokenizer = embedder.tokenizer

    def run(texts: list[str]) -> np.ndarray:
        encodings = tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, e in enumerate(encodings):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1
        hidden = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    check = sentences(4, seed=1)
    expected = np.array(embedder.embed(check).vectors)
    assert np.abs(run(check) - expected).max() < 1e-4, "ONNX export disagrees with torch"
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="2", help="one count, or several: 1,2")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--skip-sentence-transformers", action="store_true")
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]
    folder = minilm_folder()
    texts = sentences(256)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus; "
        f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}); "
        f"threads {args.threads}; {len(texts)} sentences of 8-48 words"
    )
    runners: dict[str, Callable[[list[str]], Any]] = {}
    for name in args.precisions.split(","):
        embedder = Embedder(folder, torch.device("cpu"), Precision(name))
        runners[f"psionic {name}"] = embedder.embed
    st: Any = None
    if not args.skip_sentence_transformers:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(folder), device="cpu")
    batches = [int(b) for b in args.batches.split(",")]
    figures: dict[tuple[str, int, int], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Embedder(folder, torch.device("cpu"), Precision.FP32)
        ort_runs = {t: onnx_runner(base, t, Path(tmp)) for t in thread_counts}
        for threads in thread_counts:
            torch.set_num_threads(threads)
            for batch in batches:
                runners_for_batch = dict(runners)
                ort_run = ort_runs[threads]
                if ort_run:
                    runners_for_batch["onnxruntime fp32"] = ort_run
                if st is not None:
                    runners_for_batch["sentence-transformers fp32"] = lambda t, b=batch: st.encode(
                        t, batch_size=b
                    )
                for name, run in runners_for_batch.items():
                    figure = rate(run, texts, batch, args.seconds)
                    figures[(name, batch, threads)] = figure
                    print(
                        f"{threads}t batch {batch:3d}  {name:28s} {figure:8.1f} sentences/s",
                        flush=True,
                    )
    for batch in batches:
        here = {k: v for k, v in figures.items() if k[1] == batch}
        ours_key = max((k for k in here if k[0].startswith("psionic")), key=here.__getitem__)
        for other in ("onnxruntime fp32", "sentence-transformers fp32"):
            theirs = [k for k in here if k[0] == other]
            if theirs:
                best = max(theirs, key=here.__getitem__)
                print(
                    f"batch {batch}: best psionic ({ours_key[0]}, {ours_key[2]}t) / {other} "
                    f"at its best ({best[2]}t) = {here[ours_key] / here[best]:.2f}x"
                )


if __name__ == "__main__":
    main()
