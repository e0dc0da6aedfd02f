"""Continuous batching benchmark: aggregate decode tok/s and per-request latency against the
number of concurrent streams, through psionic's HTTP server (in process, over a socket).

    python bench/batch.py --threads 2 --streams 1,4,8,16 --new-tokens 128 \
        [--llama-server "$(scripts/build-llama-server.sh .venv/bin/python)"]

With --llama-server, the same levels run against llama.cpp's server on the same GGUF, with
as many parallel slots as streams (`--parallel N`, continuous batching) and the same thread
count, after psionic's levels. Each of N clients sends ``--rounds`` chat completions back to
back (greedy, ``max_tokens`` = --new-tokens, a different prompt each). Aggregate tok/s is
every completion token (``usage``) over the wall time of the level; latency is one
request's, send to last byte.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `psionic serve` sets it

import aiohttp
import torch
from aiohttp.test_utils import TestServer

from psionic.engine import Engine
from psionic.precision import Precision
from psionic.registry import DEFAULT_CHAT_ID, ModelKind, ModelSpec, smollm2_gguf
from psionic.runtime import Runtime, RuntimeConfig
from psionic.server import create_app
from psionic.weights import load_gguf

TOPICS = ["a lighthouse", "a dragon", "the sea", "a robot", "a city", "a forest", "a clock"]


def _body(i: int, new_tokens: int, model: str = DEFAULT_CHAT_ID) -> dict[str, Any]:
    topic = TOPICS[i % len(TOPICS)]
    prompt = f"Write a long, detailed story about {topic} (story number {i})."
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": new_tokens,
        "temperature": 0,
    }


async def level(
    url: str, streams: int, rounds: int, new_tokens: int, model: str = DEFAULT_CHAT_ID
) -> dict[str, float]:
    latencies: list[float] = []
    tokens = 0

    async def client(session: aiohttp.ClientSession, n: int) -> None:
        nonlocal tokens
        for r in range(rounds):
            started = time.perf_counter()
            async with session.post(url, json=_body(n * rounds + r, new_tokens, model)) as response:
                body = await response.json()
                assert response.status == 200, body
            latencies.append(time.perf_counter() - started)
            tokens += body["usage"]["completion_tokens"]

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session, n) for n in range(streams)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {
        "tok_s": tokens / wall,
        "tokens": tokens,
        "p50": statistics.median(latencies),
        "p95": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
    }


@contextlib.contextmanager
def llama_server(binary: str, streams: int, args: argparse.Namespace) -> Iterator[str]:
    """llama.cpp's server on the packaged GGUF with `streams` slots; its completions URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = streams * (args.new_tokens + 128)  # split evenly between the slots
    proc = subprocess.Popen(
        [binary, "-m", str(smollm2_gguf()), "--host", "127.0.0.1", "--port", str(port),
         "--parallel", str(streams), "-c", str(context), "-t", str(args.threads),
         "-tb", str(args.threads), "--no-webui"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=1),
            ):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("llama-server did not start")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1/chat/completions"
    finally:
        proc.terminate()
        proc.wait(30)


async def _ready(url: str) -> None:
    """Wait until the server answers a completion (llama-server loads the model first)."""
    for _ in range(240):
        with contextlib.suppress(aiohttp.ClientError, AssertionError):
            await level(url, 1, 1, 8)
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"{url} never answered")


def print_row(engine: str, streams: int, r: dict[str, float], base: float) -> None:
    """One level's row of the table `main` heads; `base` is the 1-stream tok/s."""
    print(
        f"| {engine} | {streams} | {r['tokens']:.0f} | {r['tok_s']:.1f} "
        f"| {r['tok_s'] / base:.1f}× | {r['p50']:.2f} | {r['p95']:.2f} |",
        flush=True,
    )


async def bench_llama(binary: str, args: argparse.Namespace) -> None:
    base = None
    for n in [int(s) for s in args.streams.split(",")]:
        with llama_server(binary, n, args) as url:
            await _ready(url)
            r = await level(url, n, args.rounds, args.new_tokens)
        base = base or r["tok_s"]
        print_row("llama.cpp Q4_1", n, r, base)


async def bench(precision: Precision, args: argparse.Namespace) -> None:
    weights = load_gguf(smollm2_gguf(), args.cache)
    engine = Engine(weights, torch.device("cpu"), precision)
    spec = ModelSpec(DEFAULT_CHAT_ID, ModelKind.CHAT, Path("smollm.gguf"))
    streams = [int(s) for s in args.streams.split(",")]
    config = RuntimeConfig(
        models=(spec,),
        device=torch.device("cpu"),
        precision=precision,
        max_queue=max(streams),
        batch_slots=args.slots or max(streams),
    )
    runtime = Runtime(config, loader=lambda _spec, _precision: engine)
    server = TestServer(create_app(runtime, warm=True))
    await server.start_server()
    url = str(server.make_url("/v1/chat/completions"))
    try:
        await level(url, 1, 1, 8)  # warm-up
        base = None
        for n in streams:
            r = await level(url, n, args.rounds, args.new_tokens)
            base = base or r["tok_s"]
            print_row(str(precision), n, r, base)
    finally:
        await server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--streams", default="1,4,8,16")
    parser.add_argument("--rounds", type=int, default=2, help="requests per client")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--precisions", default="int8,fp32")
    parser.add_argument("--slots", type=int, default=0, help="batch slots (0: most streams)")
    parser.add_argument("--cache", type=Path, default=None, help="converted weights")
    parser.add_argument("--llama-server", default="", help="llama.cpp's server binary")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} threads, {args.new_tokens} new tokens, {args.rounds} rounds"
    )
    print("| precision | streams | tokens | aggregate tok/s | vs 1 stream | p50 s | p95 s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.precisions.split(","):
        asyncio.run(bench(Precision(name), args))
    if args.llama_server:
        asyncio.run(bench_llama(args.llama_server, args))


if __name__ == "__main__":
    main()
