"""``psionic serve`` as a real process: starts offline with the packaged models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def _post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def test_serve_starts_offline_and_answers(psionic_cache: Path, smollm: Any) -> None:
    env = {
        **os.environ,
        "PSIONIC_CACHE": str(psionic_cache),
        "HF_HUB_OFFLINE": "1",
        # Any attempt to reach the network fails fast.
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    cmd = [
        sys.executable,
        "-m",
        "psionic.cli",
        "serve",
        "--port",
        "0",
        "--threads",
        "1",
        "--log-level",
        "WARNING",
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "listening on" not in line:
            assert time.monotonic() < deadline and proc.poll() is None, line
            line = proc.stdout.readline()
        base = line.split("listening on ", 1)[1].strip()
        assert _get(f"{base}/health")["status"] == "ok"
        ids = [m["id"] for m in _get(f"{base}/v1/models")["data"]]
        assert ids == ["smollm2-135m-instruct", "all-minilm-l6-v2"]
        chat = _post(
            f"{base}/v1/chat/completions",
            {
                "model": "smollm2-135m-instruct",
                "messages": [{"role": "user", "content": "Say hello."}],
                "max_tokens": 4,
            },
        )
        assert chat["usage"]["completion_tokens"] >= 1
        emb = _post(f"{base}/v1/embeddings", {"model": "all-minilm-l6-v2", "input": "hello"})
        assert len(emb["data"][0]["embedding"]) == 384
        status = _get(f"{base}/api/status")
        assert status["ready"] is True
        assert {m["state"] for m in status["models"]} == {"warm"}
        assert status["device"] == "cpu"
        assert {m["precision"] for m in status["models"]} <= {"fp32", "bf16", "int8"}
    finally:
        proc.terminate()
        proc.stdout.close()
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("psionic serve did not stop on SIGTERM")
    assert code == 0  # SIGTERM is a clean shutdown


def test_model_arguments_pick_the_kind_from_the_files(minilm_dir: Path) -> None:
    import argparse

    from psionic.cli import _model_arg
    from psionic.registry import ModelKind, smollm2_gguf

    chat = _model_arg(f"mine={smollm2_gguf()}")
    assert (chat.id, chat.kind) == ("mine", ModelKind.CHAT)
    embed = _model_arg(f"enc={minilm_dir}")
    assert embed.kind is ModelKind.EMBEDDINGS
    for bad in ("no-equals-sign", "x=/does/not/exist"):
        with pytest.raises(argparse.ArgumentTypeError):
            _model_arg(bad)
