"""The daemon runs a real psionic process, reports its models, and runs a real completion."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from support import DaemonFactory, DaemonProcess

from autopilotd.manifest import pid_alive


async def test_daemon_supervises_a_real_psionic(daemon_factory: DaemonFactory) -> None:
    d = await daemon_factory(
        runtime_mode="spawn", runtime_args="--threads 1", provider_max_inflight=12
    )
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
    from autopilotd.adapters.psionic_http import PsionicClient

    psionic = PsionicClient(status["url"])
    try:
        await psionic.status()
        async with aiohttp.ClientSession() as http:  # 12 jobs at once decode in one batch
            async with http.get(status["url"] + "/api/status") as r:
                served = (await r.json())["models"]
        assert [m["batch_slots"] for m in served if m["kind"] == "chat"] == [12]
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


def _pids_with(needle: str) -> list[int]:
    from pathlib import Path

    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if needle in cmdline:
                found.append(int(proc.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_psionic_dies_with_a_killed_daemon(
    daemon_process: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    d = daemon_process(tmp_path / "h", env={"AUTOPILOTD_RUNTIME_MODE": "spawn"})
    url = ""
    for _ in range(240):
        status = json.loads(d.ctl("--json", "runtime.status").stdout)
        url = status.get("url") or ""
        if url:
            break
        time.sleep(0.25)
    port = url.rsplit(":", 1)[1]
    deadline = time.monotonic() + 60
    while not (children := _pids_with(f"psionic serve --host 127.0.0.1 --port {port}")):
        assert time.monotonic() < deadline, "psionic never started"
        time.sleep(0.25)
    # Kill only once psionic is ready and idle: a busy one would also die of a broken pipe.
    assert d.ctl("wait", "runtime-ready", "--timeout", "240").returncode == 0
    time.sleep(3)
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(30)
    deadline = time.monotonic() + 30
    while any(pid_alive(pid) for pid in children):
        assert time.monotonic() < deadline, "psionic outlived its killed daemon"
        time.sleep(0.25)
