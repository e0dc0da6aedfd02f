"""Served LoRA adapters: decode tok/s of an unmerged adapter against its base, the latency of a
hot refresh (PUT of a new revision, rollback), and failed requests while revisions swap.

psionic's HTTP server runs in this process (the packaged SmolLM2-135M-Instruct, CPU) and is
asked over a local socket, as in bench/batch.py and bench/prefix.py. The adapter is LoRA
r=8, alpha=16 on q, k, v and o, with random non-zero A and B (so its matmuls change the
answer), written by ``psionic.lora.write_adapter_dir`` as the tests write theirs.

1. Decode: bench/batch.py's clients (greedy, ``--new-tokens``, a different story prompt
   each, non-streamed) at 1 and at 8 streams, base and adapter alternating (ABAB...) so
   the machine's other load falls on both; tok/s is completion tokens over wall time.
2. Hot refresh: ``PUT /api/adapters/{id}`` of a revision never loaded before (read, digest
   checks, view over the base's weights, its worker warmed, the swap) and the rollback,
   from sending to the answer; first with nothing in flight, then during part 3.
3. Swaps under load: ``--clients`` clients send chat completions (every other one streamed)
   to the adapter back to back while the bench makes ``--swaps`` changes (a new revision,
   a rollback, in turn), each once a request is decoding. A failure is a non-200 answer, an
   error chunk or a stream without ``[DONE]``; every answer's revision must have been active
   at some time during the request.

    python bench/adapters.py --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `psionic serve` sets it

import aiohttp
import torch
from batch import level  # the same clients and prompts as the batching benchmark
from serving import serving

from psionic.lora import LoraSpec, base_weights_digest, write_adapter_dir
from psionic.precision import Precision
from psionic.registry import DEFAULT_CHAT_ID, ModelKind, ModelSpec, smollm2_gguf
from psionic.runtime import Runtime, RuntimeConfig

ADAPTER = "ft-bench"
SPEC = LoraSpec(r=8, alpha=16, targets=("q", "k", "v", "o"))


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def random_adapter(args: Any, seed: int, scale: float) -> dict[str, torch.Tensor]:
    """Adapter tensors for SPEC on a model of shape ``args``: A, B ~ N(0, scale²)."""
    q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    shapes: dict[str, tuple[int, int]] = {}  # adapter → (in, out)
    for i in range(args.n_layers):
        for name, out in (("q", q), ("k", kv), ("v", kv)):
            shapes[f"layers.{i}.attention.wqkv.{name}"] = (args.dim, out)
        shapes[f"layers.{i}.attention.wo.lora"] = (q, args.dim)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, (fan_in, fan_out) in shapes.items():
        state[f"{key}.lora_A"] = torch.randn(SPEC.r, fan_in, generator=generator) * scale
        state[f"{key}.lora_B"] = torch.randn(fan_out, SPEC.r, generator=generator) * scale
    return state


def write_adapters(root: Path, model_args: Any, digest: str, count: int) -> list[Path]:
    """``count`` adapter directories of different weights (so each PUT loads a new revision)."""
    meta = {"base_model": DEFAULT_CHAT_ID, "base_digest": digest, "job": None, "step": 1}
    paths = []
    for seed in range(count):
        path = root / f"adapter-{seed}"
        write_adapter_dir(path, random_adapter(model_args, seed, scale=0.05), SPEC, meta)
        paths.append(path)
    return paths


@dataclass
class Changes:
    """Each change of the active revision: (sent, answered, revision made active)."""

    log: list[tuple[float, float, str]] = field(default_factory=list)
    put_s: list[float] = field(default_factory=list)
    active_s: list[float] = field(default_factory=list)  # a PUT's time to active
    rollback_s: list[float] = field(default_factory=list)

    def windows(self) -> list[tuple[float, float, str]]:
        """When each revision may have been active: from sending the change that made it
        active to the answer of the change after it."""
        return [
            (sent, self.log[i + 1][1] if i + 1 < len(self.log) else float("inf"), revision)
            for i, (sent, _, revision) in enumerate(self.log)
        ]


async def change(
    session: aiohttp.ClientSession, url: str, runtime: Runtime, path: Path | None, log: Changes
) -> None:
    """PUT of the adapter at ``path``, or (None) a rollback; timed, and logged. A PUT's time
    to active is when the runtime's model map first holds the new revision (watched on the
    event loop, where the swap happens); its answer may come later (it drains the revision
    it drops)."""
    before = runtime.models.get(ADAPTER)

    async def swapped() -> float:
        while runtime.models.get(ADAPTER) is before:
            await asyncio.sleep(0.001)
        return time.monotonic()

    async with asyncio.TaskGroup() as tg:
        watch = tg.create_task(swapped())
        sent = time.monotonic()
        if path is None:
            request = session.post(f"{url}/api/adapters/{ADAPTER}/rollback")
        else:
            request = session.put(f"{url}/api/adapters/{ADAPTER}", json={"path": str(path)})
        async with request as response:
            body = await response.json()
            assert response.status == 200, body
        answered = time.monotonic()
    active = watch.result()
    log.log.append((sent, answered, body["revision"]))
    if path is None:
        log.rollback_s.append(answered - sent)
    else:
        log.put_s.append(answered - sent)
        log.active_s.append(active - sent)


async def decode(url: str, args: argparse.Namespace) -> list[tuple[int, float, float]]:
    """(streams, base tok/s, adapter tok/s) at each level, over ``--pairs`` ABAB pairs."""
    rows = []
    for streams in (1, 8):
        tokens = {DEFAULT_CHAT_ID: 0.0, ADAPTER: 0.0}
        seconds = {DEFAULT_CHAT_ID: 0.0, ADAPTER: 0.0}
        for _ in range(args.pairs):
            for model in (DEFAULT_CHAT_ID, ADAPTER):
                r = await level(url, streams, 1, args.new_tokens, model)
                tokens[model] += r["tokens"]
                seconds[model] += r["tokens"] / r["tok_s"]
        base, adapted = (tokens[m] / seconds[m] for m in (DEFAULT_CHAT_ID, ADAPTER))
        rows.append((streams, base, adapted))
    return rows


@dataclass
class Load:
    requests: int = 0
    streamed: int = 0
    failures: list[str] = field(default_factory=list)
    answers: list[tuple[float, float, str]] = field(default_factory=list)  # start, end, rev


def _fingerprints(raw: str, stream: bool) -> set[str]:
    """The system_fingerprint of each chunk of an answer; ValueError for a broken stream."""
    if not stream:
        return {json.loads(raw)["system_fingerprint"]}
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e.strip()]
    chunks = [json.loads(e) for e in events[:-1]]
    if events[-1] != "[DONE]" or any("error" in c for c in chunks):
        raise ValueError("no [DONE], or an error chunk")
    return {c["system_fingerprint"] for c in chunks}


async def one_request(session: aiohttp.ClientSession, url: str, i: int, load: Load) -> None:
    stream = i % 2 == 1
    body = {
        "model": ADAPTER,
        "messages": [{"role": "user", "content": f"Tell me about the number {i}."}],
        "max_tokens": 16,
        "temperature": 0,
        "stream": stream,
    }
    start = time.monotonic()
    load.requests += 1
    load.streamed += stream
    try:
        async with session.post(f"{url}/v1/chat/completions", json=body) as response:
            raw = await response.text()
            if response.status != 200:
                load.failures.append(f"{response.status}: {raw[:200]}")
                return
            revision = response.headers.get("X-Psionic-Revision", "")
    except aiohttp.ClientError as exc:
        load.failures.append(f"{type(exc).__name__}: {exc}")
        return
    try:
        fingerprints = _fingerprints(raw, stream)
    except (ValueError, KeyError, IndexError) as exc:
        load.failures.append(f"broken answer ({exc!r}): {raw[-200:]}")
        return
    if fingerprints != {f"rev-{revision[:12]}"}:
        load.failures.append(f"fingerprints {fingerprints} with revision {revision}")
        return
    load.answers.append((start, time.monotonic(), revision))


async def swaps_under_load(
    session: aiohttp.ClientSession,
    url: str,
    runtime: Runtime,
    adapters: list[Path],
    log: Changes,
    args: argparse.Namespace,
) -> Load:
    load = Load()
    done = asyncio.Event()

    async def client(k: int) -> None:
        i = k
        while not done.is_set():
            await one_request(session, url, i, load)
            i += args.clients

    async def swaps() -> None:
        for n in range(args.swaps):
            deadline = time.monotonic() + 60  # each change while a request decodes
            while runtime.models[ADAPTER].worker.active == 0:
                assert time.monotonic() < deadline, "no request in flight"
                await asyncio.sleep(0.005)
            path = adapters[n // 2] if n % 2 == 0 else None
            await change(session, url, runtime, path, log)
        done.set()

    async with asyncio.TaskGroup() as tg:
        for k in range(args.clients):
            tg.create_task(client(k))
        tg.create_task(swaps())
    windows = log.windows()
    for start, end, revision in load.answers:
        if not any(rev == revision and lo <= end and start <= hi for lo, hi, rev in windows):
            load.failures.append(f"revision {revision[:12]} not active during its request")
    return load


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f} ms / {max(values) * 1000:.0f} ms"


async def run(precision: Precision, args: argparse.Namespace) -> None:
    spec = ModelSpec(DEFAULT_CHAT_ID, ModelKind.CHAT, smollm2_gguf())
    with tempfile.TemporaryDirectory() as tmp:
        config = RuntimeConfig(
            models=(spec,),
            device=torch.device("cpu"),
            precision=precision,
            max_queue=16,
            batch_slots=8,
            threads=torch.get_num_threads(),
            train_dir=Path(tmp) / "train",
        )
        runtime = Runtime(config)
        async with serving(runtime, warm=True) as url, aiohttp.ClientSession() as session:
            chat_url = f"{url}/v1/chat/completions"
            await level(chat_url, 1, 1, 8)  # the base is loaded and warm
            model_args = runtime.models[DEFAULT_CHAT_ID].worker.model.args
            count = 1 + args.refreshes + (args.swaps + 1) // 2
            adapters = write_adapters(Path(tmp), model_args, base_weights_digest(spec.path), count)
            await change(session, url, runtime, adapters[0], Changes())  # the first revision
            await level(chat_url, 1, 1, 8, ADAPTER)
            load_before = load_average()
            rows = await decode(chat_url, args)
            idle = Changes()
            for path in adapters[1 : 1 + args.refreshes]:
                await change(session, url, runtime, path, idle)
                await change(session, url, runtime, None, idle)
            busy = Changes(log=[(0.0, time.monotonic(), idle.log[-1][2])])
            load = await swaps_under_load(
                session, url, runtime, adapters[1 + args.refreshes :], busy, args
            )
            load_after = load_average()
    print(
        f"\n{precision}: load average {load_before} before the decode runs, {load_after} at the end"
    )
    print("| streams | base tok/s | adapter tok/s | adapter / base |")
    print("|---|---:|---:|---:|")
    for streams, base, adapted in rows:
        print(f"| {streams} | {base:.1f} | {adapted:.1f} | {adapted / base:.2f}× |")
    print("\n| hot refresh, median / max | PUT: new revision active | PUT answered | rollback |")
    print("|---|---:|---:|---:|")
    for name, log in (
        (f"idle, {len(idle.put_s)} + {len(idle.rollback_s)}", idle),
        (f"{args.clients} clients in flight, {len(busy.put_s)} + {len(busy.rollback_s)}", busy),
    ):
        print(f"| {name} | {ms(log.active_s)} | {ms(log.put_s)} | {ms(log.rollback_s)} |")
    revisions = {revision for _, _, revision in load.answers}
    print(
        f"\nswaps under load: {args.swaps} changes, {load.requests} requests "
        f"({load.streamed} streamed) from {args.clients} clients, "
        f"**{len(load.failures)} failed**; the answers came from {len(revisions)} revisions"
    )
    for failure in load.failures[:10]:
        print(f"  failure: {failure}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", default="int8")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=2, help="base/adapter pairs per level")
    parser.add_argument("--refreshes", type=int, default=5, help="idle PUTs and rollbacks")
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--swaps", type=int, default=10, help="changes under load")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} {platform.machine()}, "
        f"torch {torch.__version__}, {args.threads} threads; SmolLM2-135M-Instruct, adapter "
        f"LoRA r={SPEC.r} alpha={SPEC.alpha:g} on {','.join(SPEC.targets)}; "
        f"{args.new_tokens} new tokens, greedy, {args.pairs} ABAB pairs per level"
    )
    for name in args.precisions.split(","):
        asyncio.run(run(Precision(name), args))


if __name__ == "__main__":
    main()
