"""The served models: one ``ModelWorker`` each, plus the arbiter, and their status.

This is what the HTTP layer talks to; it holds no HTTP types.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from psionic import __version__
from psionic.arbiter import ScheduleRegistry, SwapLock, SwapWebhook
from psionic.batch import DecodeBatch
from psionic.device import default_precision
from psionic.embeddings import Embedder
from psionic.engine import Engine
from psionic.precision import Precision
from psionic.prefix_cache import DEFAULT_BUDGET_MB, PrefixCache
from psionic.registry import ModelKind, ModelSpec
from psionic.weights import load_gguf, load_hf_folder
from psionic.worker import ModelWorker

logger = logging.getLogger(__name__)

REVISION_HEADER = "X-Psionic-Revision"


@dataclass(frozen=True)
class RuntimeConfig:
    """Everything ``psionic serve`` is told; passed explicitly, never global."""

    models: tuple[ModelSpec, ...]
    device: torch.device
    precision: Precision | None = None  # None: per-model default for the device
    max_queue: int = 8
    batch_slots: int = 8  # chat completions decoded together per chat model
    prefix_cache_mb: int = DEFAULT_BUDGET_MB  # each chat model's prefix cache (prefix_cache.py)
    cache_dir: Path | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None
    api_key: str | None = None
    threads: int | None = None  # torch CPU threads, as set at start (None: torch's default)
    train_dir: Path | None = None  # training jobs (psionic/train_jobs.py); None: the default


def load_model(
    spec: ModelSpec,
    device: torch.device,
    precision: Precision,
    cache: Path | None,
    prefix_cache_mb: int = DEFAULT_BUDGET_MB,
) -> Any:
    """Build the engine or embedder for ``spec`` (runs on its worker thread)."""
    if spec.kind is ModelKind.EMBEDDINGS:
        return Embedder(spec.path, device, precision)
    weights = load_hf_folder(spec.path) if spec.path.is_dir() else load_gguf(spec.path, cache)
    return Engine(weights, device, precision, prefix_cache_bytes=max(0, prefix_cache_mb) << 20)


def decode_batch(model: Any, slots: int) -> DecodeBatch | None:
    """The decode batch of a chat engine (psionic/batch.py); None for a model that is not an
    `Engine` (a test's stand-in), whose jobs then run alone."""
    return DecodeBatch(model, slots) if isinstance(model, Engine) else None


@dataclass
class ServedModel:
    spec: ModelSpec
    precision: Precision
    device: torch.device
    worker: ModelWorker[Any]
    prefix_cache_mb: int = DEFAULT_BUDGET_MB
    # An adapter model (psionic/adapters.py): its base model's id, and the adapter's digest.
    parent: str | None = None
    revision: str | None = None

    def status(self) -> dict[str, Any]:
        w = self.worker
        extra: dict[str, Any] = {}
        if self.spec.kind is ModelKind.CHAT:
            extra["prefix_cache"] = self._prefix_cache()
        if self.parent is not None:
            extra.update(parent=self.parent, revision=self.revision)
        return {
            "id": self.spec.id,
            "kind": str(self.spec.kind),
            "path": str(self.spec.path),
            "state": str(w.state),
            "precision": str(self.precision),
            "dtype": str(self.precision.activation_dtype(self.device)).removeprefix("torch."),
            "queue_depth": w.queue_depth,
            "max_queue": w.max_queue,
            "batch_slots": w.batch_slots,
            "active_sequences": w.active,
            "loaded_at": w.loaded_at,
            "last_error": w.last_error,
            **extra,
        }

    def fingerprint(self) -> dict[str, Any]:
        """What an adapter model's chat and responses answers carry: the revision they ran
        on (psionic/adapters.py). Nothing for a base model."""
        if self.revision is None:
            return {}
        return {"system_fingerprint": f"rev-{self.revision[:12]}"}

    def revision_headers(self) -> dict[str, str]:
        return {} if self.revision is None else {REVISION_HEADER: self.revision}

    def _prefix_cache(self) -> dict[str, Any]:
        """The loaded engine's prefix cache figures; an unloaded model's are empty."""
        cache: PrefixCache | None = getattr(self.worker.model, "prefix_cache", None)
        if cache is None:
            cache = PrefixCache(max(0, self.prefix_cache_mb) << 20)
        return cache.stats()


@dataclass
class Runtime:
    """Workers for every configured model, the swap arbiter, and the status they make."""

    config: RuntimeConfig
    clock: Callable[[], float] = time.time
    # Builds a model for a spec; the default loads from disk. Tests pass already-built ones.
    loader: Callable[[ModelSpec, Precision], Any] | None = None
    models: dict[str, ServedModel] = field(init=False)
    lock: SwapLock = field(init=False)
    webhook: SwapWebhook = field(init=False)
    schedule: ScheduleRegistry = field(init=False)
    swap_mutex: asyncio.Lock = field(init=False)
    last_swap: dict[str, Any] | None = field(init=False, default=None)
    started_at: float = field(init=False)

    def __post_init__(self) -> None:
        c = self.config
        self.models = {}
        for spec in c.models:
            precision = c.precision or default_precision(c.device, spec.kind)

            def loader(spec: ModelSpec = spec, precision: Precision = precision) -> Any:
                if self.loader is not None:
                    return self.loader(spec, precision)
                return load_model(spec, c.device, precision, c.cache_dir, c.prefix_cache_mb)

            self.models[spec.id] = self.serve(spec, precision, loader)
        self.lock = SwapLock(self.clock)
        self.webhook = SwapWebhook(c.webhook_url, c.webhook_secret, self.clock)
        self.schedule = ScheduleRegistry(self.clock)
        self.swap_mutex = asyncio.Lock()
        self.started_at = self.clock()

    def serve(
        self,
        spec: ModelSpec,
        precision: Precision,
        loader: Callable[[], Any],
        parent: str | None = None,
        revision: str | None = None,
    ) -> ServedModel:
        """A model with its own worker (not started), loaded by ``loader`` on first need;
        an adapter model (psionic/adapters.py) is a chat model with a parent and revision."""
        c = self.config
        chat = spec.kind is ModelKind.CHAT
        name = spec.id if revision is None else f"{spec.id}@{revision[:12]}"
        worker: ModelWorker[Any] = ModelWorker(
            name,
            loader,
            c.max_queue,
            c.batch_slots if chat else 1,
            open_batch=decode_batch if chat else None,
        )
        return ServedModel(spec, precision, c.device, worker, c.prefix_cache_mb, parent, revision)

    def start(self) -> None:
        for model in self.models.values():
            model.worker.start()

    def stop(self) -> None:
        for model in self.models.values():
            model.worker.stop()

    def of_kind(self, kind: ModelKind) -> list[ServedModel]:
        return [m for m in self.models.values() if m.spec.kind is kind]

    def status(self) -> dict[str, Any]:
        """The management status document (shape documented in docs/psionic.md)."""
        lock = self.lock.current()
        errors = [m.worker.last_error for m in self.models.values() if m.worker.last_error]
        device = self.config.device
        return {
            "version": __version__,
            "device": str(device),
            "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
            "threads": self.config.threads or torch.get_num_threads(),
            "ready": any(m.worker.state == "warm" for m in self.models.values()),
            "models": [m.status() for m in self.models.values()],
            "last_error": errors[-1] if errors else None,
            "swap_lock": lock.public() if lock else None,
            "last_swap": self.last_swap,
            "schedule": self.schedule.list(),
            "uptime_s": round(self.clock() - self.started_at, 3),
        }
