"""Local engine: time to first token with a ~700-token tool prompt, with and without the
cached tool prefix (psionic's prefix cache keeps the keys and values of the prompts it has
prefilled, in blocks of 32 tokens: psionic/prefix_cache.py; "without" empties it first).

The prompt is what the local engine sends on a turn's first step: its system message, the
eight workspace tools rendered by psionic, and a user message (a different one each time, so
only the system message and the tools are shared). The time is from the request to the first
token out of the constrained decoder (prefill, the grammar's mask, the first pick).

    python bench/chat_local.py --threads 2 --runs 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `psionic serve` sets it

import torch

from autopilotd.chat.local_engine import SYSTEM, TOOLS
from psionic.engine import Engine
from psionic.openai_routes import chat_job
from psionic.precision import Precision
from psionic.registry import smollm2_gguf
from psionic.sampling import SamplingParams
from psionic.tools import parse_tools, render_tools
from psionic.weights import load_gguf

QUESTIONS = [
    "Show me the file README.md",
    "Which files are in src?",
    "Find where main is defined",
    "Run the tests",
    "What changed in this chat?",
    "Read pyproject.toml",
    "List the docs folder",
    "Search for TODO in src",
]


def _first_token_s(engine: Engine, question: str, *, reuse: bool) -> float:
    if not reuse:
        engine.clear_prefix()
    tools = parse_tools({"tools": TOOLS, "tool_choice": "required"})
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    started = time.perf_counter()
    events = chat_job(engine, messages, tools, SamplingParams(max_tokens=1, temperature=0))
    next(iter(events))  # the first event comes once the first token is picked
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--precision", default="int8", choices=["fp32", "bf16", "int8"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    weights = load_gguf(smollm2_gguf())
    engine = Engine(weights, torch.device("cpu"), Precision(args.precision))
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[0]}]
    render_tools(messages, [t["function"] for t in TOOLS])
    tok = engine.tokenizer
    prompt_tokens = len(tok.encode(tok.render_chat(messages)))
    started = time.perf_counter()
    first = _first_token_s(engine, QUESTIONS[0], reuse=False)
    build = time.perf_counter() - started
    print(
        f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {args.threads} threads, {args.precision}; SmolLM2-135M-Instruct"
    )
    print(f"tool prompt: {prompt_tokens} tokens ({len(TOOLS)} tools)")
    print(f"first request ever (builds the grammar's tokenizer view too): {build * 1000:.0f} ms")
    del first
    cold, warm = [], []
    for i in range(args.runs):
        cold.append(_first_token_s(engine, QUESTIONS[i % len(QUESTIONS)], reuse=False))
        _first_token_s(engine, QUESTIONS[(i + 1) % len(QUESTIONS)], reuse=False)  # prime
        warm.append(_first_token_s(engine, QUESTIONS[i % len(QUESTIONS)], reuse=True))
        reused = engine.reused_tokens
    print(
        f"time to first token, median of {args.runs}: without the cached prefix "
        f"{statistics.median(cold) * 1000:.0f} ms, with it {statistics.median(warm) * 1000:.0f} "
        f"ms ({reused} of {prompt_tokens} tokens reused)"
    )
    print(f"  without: {', '.join(f'{t * 1000:.0f}' for t in cold)} ms")
    print(f"  with:    {', '.join(f'{t * 1000:.0f}' for t in warm)} ms")


if __name__ == "__main__":
    main()
