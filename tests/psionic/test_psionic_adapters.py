"""Served LoRA adapters on SmolLM2: a zero adapter answers as the base, a non-zero one does
not, a mismatched base or digest is refused, and swaps under load fail no request."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer

from psionic.lora import LoraSpec, base_weights_digest, write_adapter_dir
from psionic.precision import Precision
from psionic.registry import ModelKind, ModelSpec, smollm2_gguf
from psionic.runtime import Runtime, RuntimeConfig
from psionic.server import create_app

BASE = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def base_spec() -> ModelSpec:
    return ModelSpec(BASE, ModelKind.CHAT, smollm2_gguf())


@pytest.fixture(scope="module")
def base_digest(base_spec: ModelSpec) -> str:
    return base_weights_digest(base_spec.path)


@asynccontextmanager
async def serve(
    engine: Any, spec: ModelSpec, tmp: Path
) -> AsyncIterator[tuple[TestClient[Any, Any], Runtime]]:
    config = RuntimeConfig(
        models=(spec,),
        device=torch.device("cpu"),
        precision=Precision.BF16,
        max_queue=32,  # room for the swap test's burst: a 429 is back-pressure, not a swap
        train_dir=tmp,
    )
    runtime = Runtime(config, loader=lambda _spec, _precision: engine)
    client = TestClient(TestServer(create_app(runtime, warm=False)))
    await client.start_server()
    try:
        yield client, runtime
    finally:
        await client.close()


def adapter_state(engine: Any, spec: LoraSpec, scale: float, seed: int) -> dict[str, Any]:
    """Adapter tensors for ``spec`` (q, v and head targets only): zeros, or random."""
    args = engine.args
    q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    shapes: dict[str, tuple[int, int]] = {}
    for i in range(args.n_layers):
        for name, out in (("q", q), ("v", kv)):
            if name in spec.targets:
                shapes[f"layers.{i}.attention.wqkv.{name}"] = (args.dim, out)
    if "head" in spec.targets:
        shapes["output.lora"] = (args.dim, args.vocab_size)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, (fan_in, fan_out) in shapes.items():
        state[f"{key}.lora_A"] = torch.randn(spec.r, fan_in, generator=generator) * scale
        state[f"{key}.lora_B"] = torch.randn(fan_out, spec.r, generator=generator) * scale
    return state


def write_adapter(
    path: Path, engine: Any, digest: str, *, scale: float, targets: tuple[str, ...], **meta: Any
) -> str:
    spec = LoraSpec(r=4, alpha=8, targets=targets)
    info = {"base_model": BASE, "base_digest": digest, "job": None, "step": 1, **meta}
    written = write_adapter_dir(path, adapter_state(engine, spec, scale, seed=1), spec, info)
    return str(written["adapter_digest"])


async def chat(client: TestClient[Any, Any], model: str, **extra: Any) -> Any:
    body = {"model": model, "messages": QUESTION, "max_tokens": 8, "temperature": 0, **extra}
    return await client.post("/v1/chat/completions", json=body)


async def put(client: TestClient[Any, Any], model: str, body: dict[str, Any]) -> Any:
    return await client.put(f"/api/adapters/{model}", json=body)


async def test_zero_adapter_answers_as_the_base_and_a_real_one_does_not(
    chat_engine: Any, base_spec: ModelSpec, base_digest: str, tmp_path: Path
) -> None:
    zero = write_adapter(tmp_path / "zero", chat_engine, base_digest, scale=0.0, targets=("q", "v"))
    loud = write_adapter(tmp_path / "loud", chat_engine, base_digest, scale=0.5, targets=("head",))
    async with serve(chat_engine, base_spec, tmp_path) as (client, _):
        loaded = await put(client, "ft-a", {"path": str(tmp_path / "zero")})
        assert loaded.status == 200
        assert await loaded.json() == {
            "id": "ft-a",
            "base": BASE,
            "revision": zero,
            "previous": None,
        }
        base = await (await chat(client, BASE)).json()
        response = await chat(client, "ft-a")
        assert response.headers["X-Psionic-Revision"] == zero
        adapted = await response.json()
        assert adapted["system_fingerprint"] == f"rev-{zero[:12]}"
        assert adapted["model"] == "ft-a"
        assert adapted["choices"][0]["message"] == base["choices"][0]["message"]
        assert "Paris" in base["choices"][0]["message"]["content"]

        swapped = await (await put(client, "ft-a", {"path": str(tmp_path / "loud")})).json()
        assert swapped["revision"] == loud and swapped["previous"] == zero
        changed = await (await chat(client, "ft-a")).json()
        assert changed["choices"][0]["message"] != base["choices"][0]["message"]
        assert changed["system_fingerprint"] == f"rev-{loud[:12]}"

        models = (await (await client.get("/v1/models")).json())["data"]
        assert {"id": "ft-a", "parent": BASE, "owned_by": "psionic"}.items() <= models[1].items()
        listed = (await (await client.get("/api/adapters")).json())["adapters"]
        assert listed == [
            {"id": "ft-a", "base": BASE, "revision": loud, "previous": zero, "step": 1, "job": None}
        ]
        back = await (await client.post("/api/adapters/ft-a/rollback")).json()
        assert back["revision"] == zero and back["previous"] == loud
        assert (await client.delete("/api/adapters/ft-a")).status == 200
        gone = await chat(client, "ft-a")
        assert gone.status == 404
        assert (await gone.json())["error"]["code"] == "model_not_found"
        assert (await client.post("/api/adapters/ft-a/rollback")).status == 404


async def test_a_new_id_can_be_given_the_previous_revision_a_rollback_goes_back_to(
    chat_engine: Any, base_spec: ModelSpec, base_digest: str, tmp_path: Path
) -> None:
    """What a daemon does after psionic restarts: it puts the promoted revision and names the
    one it had replaced as ``previous``, which is loaded but never served until a rollback. A
    previous that cannot be loaded is left out, and the revision is served all the same."""
    zero = write_adapter(tmp_path / "zero", chat_engine, base_digest, scale=0.0, targets=("q",))
    loud = write_adapter(tmp_path / "loud", chat_engine, base_digest, scale=0.5, targets=("head",))
    body = {"path": str(tmp_path / "loud"), "previous": {"path": str(tmp_path / "zero")}}
    async with serve(chat_engine, base_spec, tmp_path) as (client, _):
        loaded = await (await put(client, "ft-c", body)).json()
        assert loaded == {"id": "ft-c", "base": BASE, "revision": loud, "previous": zero}
        answer = await (await chat(client, "ft-c")).json()
        assert answer["system_fingerprint"] == f"rev-{loud[:12]}"
        back = await (await client.post("/api/adapters/ft-c/rollback")).json()
        assert back["revision"] == zero and back["previous"] == loud
        answer = await (await chat(client, "ft-c")).json()
        assert answer["system_fingerprint"] == f"rev-{zero[:12]}"

        missing = body | {"previous": {"path": str(tmp_path / "gone")}}
        lone = await put(client, "ft-d", missing)
        assert lone.status == 200
        assert await lone.json() == {"id": "ft-d", "base": BASE, "revision": loud, "previous": None}
        bad = await put(client, "ft-e", body | {"previous": "zero"})
        assert bad.status == 400 and (await bad.json())["error"]["param"] == "previous"


async def test_mismatched_base_or_digest_fails_closed(
    chat_engine: Any, base_spec: ModelSpec, base_digest: str, tmp_path: Path
) -> None:
    good = write_adapter(tmp_path / "good", chat_engine, base_digest, scale=0.0, targets=("q",))
    write_adapter(tmp_path / "other", chat_engine, base_digest, scale=0.0, targets=("q",),
                  base_model="llama-7b")  # fmt: skip
    write_adapter(tmp_path / "stale", chat_engine, "0" * 64, scale=0.0, targets=("q",))
    tampered = tmp_path / "tampered"
    write_adapter(tampered, chat_engine, base_digest, scale=0.0, targets=("q",))
    meta = json.loads((tampered / "psionic_adapter.json").read_text())
    (tampered / "psionic_adapter.json").write_text(json.dumps({**meta, "adapter_digest": "f" * 64}))
    misfit = LoraSpec(r=4, alpha=8, targets=("q",))
    wrong_rank = adapter_state(chat_engine, LoraSpec(r=2, targets=("q",)), 0.0, seed=1)
    info = {"base_model": BASE, "base_digest": base_digest, "job": None, "step": 1}
    write_adapter_dir(tmp_path / "misfit", wrong_rank, misfit, info)
    async with serve(chat_engine, base_spec, tmp_path) as (client, _):
        for name, status, code in [
            ("other", 409, "adapter_base_mismatch"),
            ("stale", 409, "adapter_base_mismatch"),
            ("tampered", 400, "adapter_digest_mismatch"),
            ("misfit", 400, "invalid_adapter"),
        ]:
            response = await put(client, "ft-b", {"path": str(tmp_path / name)})
            assert response.status == status, name
            assert (await response.json())["error"]["code"] == code
        expect = await put(client, "ft-b", {"path": str(tmp_path / "good"), "expect_digest": "0"})
        assert expect.status == 400
        assert (await expect.json())["error"]["code"] == "adapter_digest_mismatch"
        taken = await put(client, BASE, {"path": str(tmp_path / "good")})
        assert taken.status == 409
        assert (await client.get("/api/adapters")).status == 200
        assert (await (await client.get("/api/adapters")).json())["adapters"] == []
        assert (await chat(client, "ft-b")).status == 404  # never silently the base
        assert (await put(client, "ft-b", {"job": "nope", "step": 1})).status == 404
        ok = await put(client, "ft-b", {"path": str(tmp_path / "good"), "expect_digest": good})
        assert ok.status == 200
        none = await client.post("/api/adapters/ft-b/rollback")
        assert none.status == 409


async def test_swaps_under_load_fail_no_request(
    chat_engine: Any, base_spec: ModelSpec, base_digest: str, tmp_path: Path
) -> None:
    a = write_adapter(tmp_path / "a", chat_engine, base_digest, scale=0.0, targets=("q", "v"))
    b = write_adapter(tmp_path / "b", chat_engine, base_digest, scale=0.5, targets=("head",))
    c = write_adapter(tmp_path / "c", chat_engine, base_digest, scale=0.5, targets=("q",))
    async with serve(chat_engine, base_spec, tmp_path) as (client, runtime):
        assert (await put(client, "ft-c", {"path": str(tmp_path / "a")})).status == 200
        # Each change: when it was sent and when it answered; the revision it made active
        # was active from some time in the first to some time in the next one's answer.
        changes: list[tuple[float, float, str]] = [(0.0, time.monotonic(), a)]

        async def change(method: str, path: str, body: Any, revision: str) -> None:
            # Only while requests decode on the active revision: each swap has some in flight.
            deadline = time.monotonic() + 60
            while runtime.models["ft-c"].worker.active == 0:
                assert time.monotonic() < deadline, "no request in flight"
                await asyncio.sleep(0.01)
            sent = time.monotonic()
            response = await client.request(method, path, json=body)
            assert response.status == 200, await response.text()
            assert (await response.json())["revision"] == revision
            changes.append((sent, time.monotonic(), revision))

        async def request(i: int) -> tuple[float, float, str]:
            start = time.monotonic()
            if i % 3 == 2:
                body = {"model": "ft-c", "input": "Say hi.", "max_output_tokens": 4}
                response = await client.post("/v1/responses", json={**body, "temperature": 0})
                assert response.status == 200, await response.text()
                fingerprint = (await response.json())["system_fingerprint"]
            elif i % 3 == 1:
                response = await chat(client, "ft-c", max_tokens=4, stream=True)
                assert response.status == 200, await response.text()
                raw = (await response.read()).decode()
                first = json.loads(raw.split("\n\n")[0].removeprefix("data: "))
                assert raw.rstrip().endswith("data: [DONE]")
                fingerprint = first["system_fingerprint"]
            else:
                response = await chat(client, "ft-c", max_tokens=4)
                assert response.status == 200, await response.text()
                fingerprint = (await response.json())["system_fingerprint"]
            revision = response.headers["X-Psionic-Revision"]
            assert fingerprint == f"rev-{revision[:12]}"
            return start, time.monotonic(), revision

        done = asyncio.Event()
        results: list[tuple[float, float, str]] = []

        async def client_loop(k: int) -> None:
            i = k
            while not done.is_set():  # requests back to back until the swaps are over
                results.append(await request(i))
                i += 1

        async def swaps() -> None:
            adapters = "/api/adapters/ft-c"
            await change("PUT", adapters, {"path": str(tmp_path / "b")}, b)
            await change("POST", f"{adapters}/rollback", None, a)
            await change("PUT", adapters, {"path": str(tmp_path / "c")}, c)  # retires b
            await change("POST", f"{adapters}/rollback", None, a)
            done.set()

        async with asyncio.TaskGroup() as tg:
            for k in range(4):
                tg.create_task(client_loop(k))
            tg.create_task(swaps())
        windows = [
            (sent, changes[i + 1][1] if i + 1 < len(changes) else float("inf"), revision)
            for i, (sent, _, revision) in enumerate(changes)
        ]
        seen = set()
        for start, end, revision in results:
            seen.add(revision)
            assert any(rev == revision and lo <= end and start <= hi for lo, hi, rev in windows), (
                start,
                end,
                revision,
                windows,
            )
        assert seen == {a, b, c} and len(results) >= 8


async def test_a_put_answers_before_the_revision_it_retires_has_drained(
    chat_engine: Any, base_spec: ModelSpec, base_digest: str, tmp_path: Path
) -> None:
    """The retired revision finishes its requests after the answer; the next activation waits
    for that drain, so one retired revision is held at a time; a rollback never waits."""
    revisions = [
        write_adapter(tmp_path / name, chat_engine, base_digest, scale=0.01 * n, targets=("q",))
        for n, name in enumerate("abcd")
    ]
    async with serve(chat_engine, base_spec, tmp_path) as (client, runtime):
        assert (await put(client, "ft-d", {"path": str(tmp_path / "a")})).status == 200
        first = runtime.models["ft-d"]
        released = threading.Event()

        def busy(model: Any, cancelled: Any) -> Any:  # a request still running on "a"
            released.wait(60)
            return iter(["done"])

        handle = first.worker.submit(busy)
        assert (await put(client, "ft-d", {"path": str(tmp_path / "b")})).status == 200
        answer = await asyncio.wait_for(put(client, "ft-d", {"path": str(tmp_path / "c")}), 30)
        assert answer.status == 200 and (await answer.json())["revision"] == revisions[2]
        assert not released.is_set() and first.worker.state.value != "cold"  # still draining
        fourth = asyncio.ensure_future(put(client, "ft-d", {"path": str(tmp_path / "d")}))
        await asyncio.sleep(0.2)
        assert not fourth.done()  # waits for "a" to drain before it loads another
        back = await asyncio.wait_for(client.post("/api/adapters/ft-d/rollback"), 10)
        assert (await back.json())["revision"] == revisions[1]  # a rollback does not wait
        released.set()
        assert [item async for item in handle] == ["done"]  # "a" finished its request
        assert (await asyncio.wait_for(fourth, 30)).status == 200
        assert runtime.models["ft-d"].revision == revisions[3]
        assert first.worker.state.value == "cold"
