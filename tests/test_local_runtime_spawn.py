"""The daemon runs a real psionic process, reports its models, and runs a real completion."""

from __future__ import annotations

import asyncio

from support import DaemonFactory


async def test_daemon_supervises_a_real_psionic(daemon_factory: DaemonFactory) -> None:
    d = await daemon_factory(runtime_mode="spawn", runtime_args="--threads 1")
    for _ in range(24):  # first start converts the GGUF (cached afterwards)
        met = await d.call("wait.until", {"condition": "runtime-ready", "timeout_s": 10})
        if met["met"]:
            break
    for _ in range(240):  # each model warms on its own; jobs check the kind they need
        status = await d.call("runtime.status")
        if {m["kind"] for m in status["models"] if m["warm"]} == {"chat", "embeddings"}:
            break
        await asyncio.sleep(0.5)
    assert status["state"] == "ready", status
    assert status["managed"] and status["url"].startswith("http://127.0.0.1:")
    kinds = {m["kind"] for m in status["models"] if m["warm"]}
    assert kinds == {"chat", "embeddings"}, status["models"]
    assert status["device"] == "cpu" and status["dtype"] in ("fp32", "bf16", "int8")

    # The job flow's client runs a real completion through it.
    client = d.task  # keep the daemon referenced while we use its runtime over HTTP
    assert not client.done()
    from autopilotd.inference.psionic_http import PsionicClient

    psionic = PsionicClient(status["url"])
    try:
        await psionic.status()
        done = await psionic.chat(
            [{"role": "user", "content": "Say hi."}],
            model=None,
            max_tokens=8,
            temperature=0,
            top_p=1,
        )
        assert done.completion_tokens > 0 and done.text
        vectors = await psionic.embed(["hello", "world"], model=None)
        assert len(vectors) == 2 and len(vectors[0]) == 384
    finally:
        await psionic.close()

    model = next(m["id"] for m in status["models"] if m["kind"] == "embeddings")
    assert (await d.call("runtime.unload", {"model": model}))["warm"] is False
    for _ in range(20):
        status = await d.call("runtime.status")
        if not any(m["id"] == model and m["warm"] for m in status["models"]):
            break
        await asyncio.sleep(0.5)
    assert not any(m["id"] == model and m["warm"] for m in status["models"])
    assert await d.stop() == 0
