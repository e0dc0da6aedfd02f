"""Prefix cache: time to first token with a ~700-token shared system prompt, cold vs warm.

psionic's HTTP server runs in this process (the chat model only, on the CPU unless
``--device``) and is asked for streaming chat completions over HTTP; the time is from
sending the request to the first content chunk. A cold request's system prompt starts with
a word no other prompt has, so none of its blocks is kept; a warm one sends the system prompt
a first (priming) request sent, with a question of its own, so all of its blocks but the
question's come from the prefix cache. Cold and warm requests alternate.

    python bench/prefix.py --threads 2 --runs 6
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `psionic serve` sets it

import aiohttp
import torch
from chat_local import QUESTIONS  # the same questions as the local engine's benchmark
from serving import serving

from psionic.device import resolve_device
from psionic.precision import Precision
from psionic.registry import ModelKind, ModelSpec, smollm2_gguf
from psionic.runtime import Runtime, RuntimeConfig

MODEL = "smollm2-135m-instruct"
RULES = [
    "Answer in plain English and keep every answer short.",
    "Never invent a file name; ask when you are not sure which file is meant.",
    "Quote commands exactly as they must be typed, one to a line.",
    "Say which tool you would use before you use it, and why.",
    "Prefer reading a file to guessing what it holds.",
    "When a test fails, show the failing assertion and the line it is on.",
    "Do not change files outside the workspace you were given.",
    "Keep secrets out of answers: never print keys, tokens or passwords.",
]


def system_prompt(tag: str, rules: int) -> str:
    lines = [f"{tag}. You are a careful coding assistant working in a user's repository."]
    lines += [f"Rule {i + 1}: {RULES[i % len(RULES)]}" for i in range(rules)]
    return "\n".join(lines)


async def first_token_s(session: aiohttp.ClientSession, url: str, system: str, q: str) -> float:
    body = {
        "model": MODEL,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": q}],
        "max_tokens": 4,
        "temperature": 0,
        "stream": True,
    }
    started = time.perf_counter()
    first: float | None = None
    async with session.post(f"{url}/v1/chat/completions", json=body) as response:
        assert response.status == 200, await response.text()
        async for line in response.content:
            text = line.decode().strip()
            if first is not None or not text.startswith("data: {"):
                continue
            choice = json.loads(text[6:])["choices"][0]
            if choice["delta"].get("content") or choice["finish_reason"]:
                first = time.perf_counter() - started
    assert first is not None
    return first


async def run(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    precision = None if args.precision == "auto" else Precision(args.precision)
    config = RuntimeConfig(
        models=(ModelSpec(MODEL, ModelKind.CHAT, smollm2_gguf()),),
        device=device,
        precision=precision,
        threads=torch.get_num_threads(),
    )
    runtime = Runtime(config)
    async with serving(runtime, warm=False) as url, aiohttp.ClientSession() as session:
        warm_system = system_prompt("Warm", args.rules)
        await first_token_s(session, url, system_prompt("Load", args.rules), "hi")  # load
        served = runtime.models[MODEL]
        tok = served.worker.model.tokenizer
        prompt_tokens = len(
            tok.encode(
                tok.render_chat(
                    [
                        {"role": "system", "content": warm_system},
                        {"role": "user", "content": QUESTIONS[0]},
                    ]
                )
            )
        )
        await first_token_s(session, url, warm_system, "Hello")  # primes the warm prefix
        cold: list[float] = []
        warm: list[float] = []
        for i in range(args.runs):
            question = QUESTIONS[i % len(QUESTIONS)]
            cold.append(
                await first_token_s(session, url, system_prompt(f"Cold {i}", args.rules), question)
            )
            warm.append(await first_token_s(session, url, warm_system, question))
        status = served.status()
    print(
        f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, {device}, "
        f"{status['precision']}; SmolLM2-135M-Instruct; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(f"prompt: {prompt_tokens} tokens (system prompt plus a question)")
    c, w = statistics.median(cold), statistics.median(warm)
    print(
        f"time to first token, median of {args.runs}: cold {c * 1000:.0f} ms, warm "
        f"{w * 1000:.0f} ms (warm/cold {w / c:.2f})"
    )
    print(f"  cold: {', '.join(f'{t * 1000:.0f}' for t in cold)} ms")
    print(f"  warm: {', '.join(f'{t * 1000:.0f}' for t in warm)} ms")
    print(f"prefix_cache: {json.dumps(status['prefix_cache'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--rules", type=int, default=34, help="system prompt length, in rules")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "int8"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
