"""Decode benchmark: psionic vs transformers generate() vs llama.cpp on the same GGUF.

Greedy, a fixed number of new tokens (end-of-turn ignored), the same thread count for all.
Prints time to first token (prefill), prefill and decode tokens/s, and the ratios.

    python bench/decode.py --threads 1,2 --new-tokens 128

With several thread counts every engine runs at each, side by side, and the ratios compare
each engine at its best. Each decode figure is also given as a fraction of the bandwidth
bound: the machine's memory read bandwidth (best over the thread counts, bench/bandwidth.py)
over the bytes of weights the engine reads per token, counted from the weights it holds.

transformers runs on the very weights psionic dequantised from the GGUF; llama.cpp
(llama-cpp-python, the `bench` extra) runs the GGUF itself and is skipped when missing.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `psionic serve` sets it

import torch
from bandwidth import gguf_bytes_per_token, module_bytes_per_token, read_bandwidth

from psionic.engine import Engine
from psionic.precision import Precision
from psionic.reference import hf_llama
from psionic.registry import smollm2_gguf
from psionic.sampling import Sampler, SamplingParams
from psionic.weights import LlamaWeights, load_gguf

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


@dataclass
class Result:
    name: str
    prompt_tokens: int
    ttft_s: float
    decode_tok_s: float
    threads: int = 0
    bytes_per_token: int = 0  # weights read per decode step

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.ttft_s


def _timed(generate: Callable[[], Any], new_tokens: int) -> tuple[float, float]:
    """Run a token iterator; return (time to first token, decode tok/s after it)."""
    started = time.perf_counter()
    first = None
    count = 0
    for _ in generate():
        count += 1
        if first is None:
            first = time.perf_counter()
        if count == new_tokens:
            break
    end = time.perf_counter()
    assert first is not None and count == new_tokens, count
    return first - started, (count - 1) / (end - first)


def bench_psionic(weights: LlamaWeights, prompt: list[int], precision: Precision, n: int) -> Result:
    engine = Engine(weights, torch.device("cpu"), precision)
    greedy = SamplingParams(temperature=0)

    def run(tokens: int) -> Any:
        return engine.generate_ids(prompt, tokens, Sampler(greedy, engine.device))

    list(run(8))  # warm-up
    ttft, rate = _timed(lambda: run(n), n)
    threads = torch.get_num_threads()
    return Result(
        f"psionic {precision}",
        len(prompt),
        ttft,
        rate,
        threads,
        module_bytes_per_token(engine.model),
    )


def bench_transformers(
    weights: LlamaWeights, prompt: list[int], dtype: torch.dtype, n: int
) -> Result:
    model = hf_llama(weights, dtype)
    ids = torch.tensor([prompt])
    mask = torch.ones_like(ids)

    def generate(tokens: int) -> Any:
        return model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=0,
        )

    with torch.inference_mode():
        generate(8)  # warm-up
        started = time.perf_counter()
        model(ids, attention_mask=mask)  # prefill alone, for time to first token
        ttft = time.perf_counter() - started
        started = time.perf_counter()
        generate(n)
        total = time.perf_counter() - started
    name = "transformers " + ("bf16" if dtype == torch.bfloat16 else "fp32")
    size = module_bytes_per_token(model)
    return Result(name, len(prompt), ttft, (n - 1) / (total - ttft), torch.get_num_threads(), size)


def bench_llama_cpp(text: str, threads: int, n: int) -> Result | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        print("llama.cpp: llama-cpp-python is not installed (pip install '.[bench]'); skipped")
        return None
    llm = Llama(
        model_path=str(smollm2_gguf()),
        n_ctx=1024,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    tokens = llm.tokenize(text.encode(), add_bos=False, special=True)

    def run() -> Any:
        llm.reset()  # forget the previous run, or its prompt prefix is reused (no prefill)
        return llm.generate(tokens, temp=0.0, top_k=1, reset=True)

    _timed(run, 8)  # warm-up
    ttft, rate = _timed(run, n)
    size = gguf_bytes_per_token(smollm2_gguf())
    return Result("llama.cpp (Q4_1 GGUF)", len(tokens), ttft, rate, threads, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="2", help="one count, or several: 1,2")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--precisions", default="fp32,bf16,int8")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--skip-llama-cpp", action="store_true")
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]
    weights = load_gguf(smollm2_gguf())
    text = weights.tokenizer.render_chat([{"role": "user", "content": PROMPT}])
    prompt = weights.tokenizer.encode(text)
    n = args.new_tokens
    bandwidth = {t: read_bandwidth(t) for t in thread_counts}
    bound_gbs = max(bandwidth.values())
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus; "
        f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}); "
        f"threads {args.threads}; prompt {len(prompt)} tokens; {n} new tokens, greedy; "
        "read bandwidth "
        + ", ".join(f"{bw:.1f} GB/s at {t} thread(s)" for t, bw in bandwidth.items())
    )
    results: list[Result] = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for name in args.precisions.split(","):
            results.append(bench_psionic(weights, prompt, Precision(name), n))
            print(_row(results[-1], bound_gbs), flush=True)
        if not args.skip_transformers:
            for dtype in (torch.float32, torch.bfloat16):
                results.append(bench_transformers(weights, prompt, dtype, n))
                print(_row(results[-1], bound_gbs), flush=True)
        if not args.skip_llama_cpp:
            llama = bench_llama_cpp(text, threads, n)
            if llama:
                results.append(llama)
                print(_row(llama, bound_gbs), flush=True)
    best: dict[str, Result] = {}
    for r in results:
        if r.name not in best or r.decode_tok_s > best[r.name].decode_tok_s:
            best[r.name] = r
    ours = max((r for r in best.values() if r.name.startswith("psionic")), key=_rate)
    print(
        f"best psionic: {ours.name} at {ours.decode_tok_s:.1f} tok/s ({ours.threads} threads), "
        f"{_fraction(ours, bound_gbs):.0%} of its bandwidth bound"
    )
    for other in ("llama.cpp (Q4_1 GGUF)", "transformers bf16", "transformers fp32"):
        if other in best:
            theirs = best[other]
            ratio = ours.decode_tok_s / theirs.decode_tok_s
            print(
                f"  decode ratio vs {other} at its best ({theirs.threads} threads): "
                f"{ratio:.2f}x; it runs at {_fraction(theirs, bound_gbs):.0%} of its bound"
            )
    if "psionic bf16" in best and "transformers bf16" in best:
        ratio = best["psionic bf16"].decode_tok_s / best["transformers bf16"].decode_tok_s
        print(f"  psionic bf16 vs transformers bf16: {ratio:.2f}x")


def _rate(r: Result) -> float:
    return r.decode_tok_s


def _fraction(r: Result, bound_gbs: float) -> float:
    """Decode tok/s over the bandwidth bound (bandwidth / weight bytes per token)."""
    return r.decode_tok_s * r.bytes_per_token / (bound_gbs * 1e9)


def _row(r: Result, bound_gbs: float) -> str:
    return (
        f"{r.threads}t {r.name:24s} ttft {r.ttft_s * 1000:7.1f} ms  "
        f"prefill {r.prefill_tok_s:7.1f} tok/s  decode {r.decode_tok_s:6.1f} tok/s  "
        f"weights {r.bytes_per_token / 1e6:6.1f} MB/token  "
        f"{r.decode_tok_s * r.bytes_per_token / 1e9:4.1f} GB/s  "
        f"{_fraction(r, bound_gbs):4.0%} of bound"
    )


if __name__ == "__main__":
    main()
