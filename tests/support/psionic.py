"""Helpers shared by psionic's HTTP tests: an in-process server over given models."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import torch
from aiohttp.test_utils import TestClient, TestServer

from psionic.engine import Finished, TextDelta
from psionic.precision import Precision
from psionic.registry import ModelKind, ModelSpec
from psionic.runtime import Runtime, RuntimeConfig
from psionic.sampling import SamplingParams
from psionic.server import create_app

CHAT = ModelSpec("smollm2-135m-instruct", ModelKind.CHAT, Path("smollm.gguf"))
EMBED = ModelSpec("all-minilm-l6-v2", ModelKind.EMBEDDINGS, Path("minilm"))


@asynccontextmanager
async def serve_models(
    models: dict[ModelSpec, Any],
    *,
    max_queue: int = 8,
    clock: Callable[[], float] | None = None,
    **config: Any,
) -> AsyncIterator[tuple[TestClient[Any, Any], Runtime]]:
    """Serve already-built models (keyed by spec) in-process; yield a client and runtime."""
    runtime_config = RuntimeConfig(
        models=tuple(models),
        device=torch.device("cpu"),
        precision=Precision.FP32,
        max_queue=max_queue,
        **config,
    )
    extra = {"clock": clock} if clock else {}
    runtime = Runtime(runtime_config, loader=lambda spec, _precision: models[spec], **extra)
    client = TestClient(TestServer(create_app(runtime, warm=False)))
    await client.start_server()
    try:
        yield client, runtime
    finally:
        await client.close()


class FakeEngine:
    """Stands in for ``Engine``: yields "tok " until cancelled or a gate says stop.

    ``stopped_early`` is set when generation ends before its budget, whether the engine saw
    the cancel flag itself or the worker saw it first and dropped the generator.
    """

    def __init__(self, gate: Any = None) -> None:
        self.gate = gate
        self.stopped_early = False
        self.started = 0
        self.tokenizer = self

    def render_chat(self, messages: Any) -> str:
        return "prompt"

    def encode(self, text: str) -> list[int]:
        return [1, 2, 3]

    def complete(
        self,
        prompt: list[int],
        params: SamplingParams,
        cancelled: Callable[[], bool],
        constraint: object = None,
        *,
        reuse_prefix: bool = True,
    ) -> Iterator[TextDelta | Finished]:
        """As the real engine's, whose constraint and prefix reuse this one ignores."""
        self.started += 1
        count = 0
        try:
            while count < params.max_tokens:
                if self.gate is not None:
                    self.gate.wait(10)
                time.sleep(0.002)  # a token takes time, as with a real model
                if cancelled():
                    yield Finished("cancelled", len(prompt), count)
                    return
                count += 1
                yield TextDelta("tok ")
            yield Finished("length", len(prompt), count)
        finally:
            self.stopped_early = count < params.max_tokens
