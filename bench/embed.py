"""Embeddings benchmark: psionic vs sentence-transformers vs onnxruntime, batch 1 and 32.

All three run all-MiniLM-L6-v2 from the packaged files, with the same thread count, on the
same synthetic sentences (8–48 words). onnxruntime runs psionic's encoder exported to ONNX
(checked against torch before timing), and is skipped when onnxruntime/onnx are missing.

    python bench/embed.py --threads 2
"""

from __future__ import annotations

import argparse
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


def onnx_runner(
    embedder: Embedder, threads: int, folder: Path
) -> Callable[[list[str]], Any] | None:
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime: not installed (pip install '.[bench]'); skipped")
        return None
    path = folder / "minilm.onnx"
    ids = torch.ones(2, 8, dtype=torch.long)
    dynamic = {0: "batch", 1: "seq"}
    torch.onnx.export(
        embedder.model,
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
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--precisions", default="fp32,bf16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(folder), device="cpu")
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        base = Embedder(folder, torch.device("cpu"), Precision.FP32)
        ort_run = onnx_runner(base, args.threads, Path(tmp))
        if ort_run:
            runners["onnxruntime fp32"] = ort_run
        figures: dict[tuple[str, int], float] = {}
        for batch in batches:
            runners_for_batch = dict(runners)
            runners_for_batch["sentence-transformers fp32"] = lambda t, b=batch: st.encode(
                t, batch_size=b
            )
            for name, run in runners_for_batch.items():
                figures[(name, batch)] = rate(run, texts, batch, args.seconds)
                print(f"batch {batch:3d}  {name:28s} {figures[(name, batch)]:8.1f} sentences/s")
    for batch in batches:
        ours = max(v for (n, b), v in figures.items() if b == batch and n.startswith("psionic"))
        for other in ("onnxruntime fp32", "sentence-transformers fp32"):
            if (other, batch) in figures:
                print(
                    f"batch {batch}: best psionic / {other} = {ours / figures[(other, batch)]:.2f}x"
                )


if __name__ == "__main__":
    main()
