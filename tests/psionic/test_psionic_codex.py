"""The real Codex CLI (installed by `make codex`) with psionic as its model provider: one
`codex exec` turn over the Responses API, whose answer is the packaged model's."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from support.psionic import CHAT, serve_models

from autopilotd.adapters.codex_engine import find_codex
from psionic.engine import Engine, TextDelta
from psionic.precision import Precision
from psionic.sampling import SamplingParams

CACHE = Path(os.environ.get("AUTOPILOTD_BUILD_CACHE") or Path.home() / ".cache" / "autopilotd")
CODEX = find_codex("", CACHE)
pytestmark = pytest.mark.skipif(
    CODEX is None, reason="Codex is not installed here (`make codex` installs it from npm)"
)


class Recording:
    """The engine, keeping the text of each completion it makes, and answering in words: one
    sentence, greedy, unconstrained, whatever the request says. Given Codex's prompt (some
    5,700 tokens, with ids and dates that change each run) the small model otherwise rambles
    until its 512 tokens run out or calls a tool with an integer that never ends, and Codex
    takes an `incomplete` response for a failed turn. What is tested is the wire, not the
    model."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.texts: list[str] = []

    def constraint(self, grammar: str) -> Any:
        return None

    def complete(self, prompt: Any, params: SamplingParams, *args: Any, **kwargs: Any) -> Any:
        self.texts.append("")
        words = dataclasses.replace(params, temperature=0.0, stop=(".", "\n", "<"))
        for event in self.engine.complete(prompt, words, *args, **kwargs):
            if isinstance(event, TextDelta):
                self.texts[-1] += event.text
            yield event


@pytest.fixture
def codex_home() -> Iterator[Path]:
    """Outside /tmp: Codex refuses to make its helper programs under a temporary directory."""
    parent = CACHE / "test-homes"
    parent.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="codex-psionic-", dir=parent))
    yield home
    shutil.rmtree(home, ignore_errors=True)


async def test_codex_exec_answers_from_psionic(
    smollm: Any, codex_home: Path, tmp_path: Path
) -> None:
    # int8: Codex's prompt is some 5,700 tokens, whose prefill bf16 on a CPU takes too long.
    engine = Recording(Engine(smollm, torch.device("cpu"), Precision.INT8))
    last = tmp_path / "last.txt"
    async with serve_models({CHAT: engine}) as (client, _runtime):
        provider = "model_providers.psionic"
        config = {
            "model": f'"{CHAT.id}"',
            "model_provider": '"psionic"',
            f"{provider}.name": '"psionic"',
            f"{provider}.base_url": f'"{client.make_url("/v1")}"',
            f"{provider}.wire_api": '"responses"',
            f"{provider}.request_max_retries": "0",
            f"{provider}.stream_max_retries": "0",
            # Tools psionic has no counterpart for (other tool types are a 400).
            "web_search": '"disabled"',
            "features.multi_agent": "false",
            "features.goals": "false",
        }
        args = [str(CODEX), "exec", "--skip-git-repo-check", "--output-last-message", str(last)]
        for key, value in config.items():
            args += ["-c", f"{key}={value}"]
        proc = await asyncio.create_subprocess_exec(
            *args,
            "Say hi.",
            cwd=tmp_path,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "CODEX_HOME": str(codex_home)},
        )
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), 300)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, output.decode(errors="replace")[-3000:]
    assert engine.texts, "Codex never reached psionic"
    assert last.read_text().strip() == engine.texts[-1].strip()
