"""Embeddings throughput under concurrency: psionic's HTTP server, all-MiniLM-L6-v2, N clients
each sending one-sentence `/v1/embeddings` requests back to back, with coalescing (the
waiting requests share a forward pass) and without (each request its own pass).

    python bench/embed_concurrent.py --threads 2 --clients 8 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `psionic serve` sets it

import aiohttp
import torch
from serving import serving

import psionic.embeddings
from psionic.embeddings import Embedder
from psionic.precision import Precision
from psionic.registry import ModelKind, ModelSpec, minilm_folder
from psionic.runtime import Runtime, RuntimeConfig

WORDS = [
    "relay",
    "provider",
    "invoice",
    "model",
    "token",
    "request",
    "job",
    "payment",
    "market",
    "compute",
    "node",
]


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 24)))


async def measure(embedder: Embedder, clients: int, seconds: float, coalesce: bool) -> float:
    """Requests per second with ``clients`` concurrent clients."""
    psionic.embeddings.MAX_COALESCED_INPUTS = 256 if coalesce else 1
    spec = ModelSpec("all-minilm-l6-v2", ModelKind.EMBEDDINGS, minilm_folder())
    config = RuntimeConfig(models=(spec,), device=torch.device("cpu"), max_queue=clients)
    runtime = Runtime(config, loader=lambda _spec, _precision: embedder)
    done = 0
    async with serving(runtime, warm=False) as base, aiohttp.ClientSession() as session:
        url = f"{base}/v1/embeddings"

        async def client(seed: int, until: float) -> None:
            nonlocal done
            rng = random.Random(seed)
            while time.monotonic() < until:
                body = {"model": spec.id, "input": sentence(rng)}
                async with session.post(url, json=body) as response:
                    assert response.status == 200, await response.text()
                    await response.read()
                done += 1

        warm = time.monotonic() + 1.0
        async with asyncio.TaskGroup() as tg:
            for i in range(clients):
                tg.create_task(client(i, warm))
        done = 0
        started = time.monotonic()
        async with asyncio.TaskGroup() as tg:
            for i in range(clients):
                tg.create_task(client(100 + i, started + seconds))
        return done / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    embedder = Embedder(minilm_folder(), torch.device("cpu"), Precision.FP32)
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, fp32")
    for coalesce in (False, True, False, True):
        rate = asyncio.run(measure(embedder, args.clients, args.seconds, coalesce))
        label = "coalesced" if coalesce else "one pass per request"
        print(f"{args.clients} clients, {label}: {rate:.1f} requests/s")


if __name__ == "__main__":
    main()
