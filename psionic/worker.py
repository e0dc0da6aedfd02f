"""One thread per loaded model: it loads the model, owns it, and runs jobs from a queue.

Torch work never runs on the event loop. A job is a function of the model that yields
items; the worker hands each item to the asyncio side through ``call_soon_threadsafe``.
A job's cancel flag (set when its HTTP client goes away) is checked between items.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

M = TypeVar("M")
JobFn = Callable[[Any, Callable[[], bool]], Iterator[Any]]


class WorkerState(enum.StrEnum):
    COLD = "cold"
    LOADING = "loading"
    WARM = "warm"
    ERROR = "error"


class QueueFull(Exception):
    """The model's queue is full; the client should retry later."""


class JobFailed(Exception):
    """A job raised on the worker thread; ``__cause__`` is the original exception."""


_DONE = object()


@dataclass
class _Job:
    fn: JobFn | None  # None: unload
    loop: asyncio.AbstractEventLoop
    items: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)

    def post(self, item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening
            self.loop.call_soon_threadsafe(self.items.put_nowait, item)


class JobHandle:
    """The asyncio side of a queued job: iterate its items; ``cancel()`` stops it."""

    def __init__(self, job: _Job) -> None:
        self._job = job

    def cancel(self) -> None:
        self._job.cancel.set()

    async def __aiter__(self) -> AsyncIterator[Any]:
        while True:
            item = await self._job.items.get()
            if item is _DONE:
                return
            if isinstance(item, JobFailed):
                raise item
            yield item

    async def result(self) -> list[Any]:
        return [item async for item in self]


class ModelWorker(Generic[M]):
    """Owns one model on one thread. ``loader`` runs on that thread, on first need."""

    def __init__(self, name: str, loader: Callable[[], M], max_queue: int) -> None:
        self.name = name
        self._loader = loader
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self.max_queue = max_queue
        self.state = WorkerState.COLD
        self.last_error: str | None = None
        self.loaded_at: float | None = None
        self._model: M | None = None
        self._busy = False
        self._thread = threading.Thread(target=self._run, name=f"psionic-{name}", daemon=True)

    @property
    def queue_depth(self) -> int:
        """Jobs waiting plus the one running."""
        return self._queue.qsize() + (1 if self._busy else 0)

    @property
    def model(self) -> M | None:
        return self._model

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to finish after its current job and wait for it."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(queue.Empty):
            while True:  # drop waiting jobs; their clients get nothing more
                job = self._queue.get_nowait()
                if job is not None:
                    job.post(_DONE)
        self._queue.put(None)
        self._thread.join(timeout)

    def submit(self, fn: JobFn) -> JobHandle:
        """Queue ``fn(model, cancelled)``; raise ``QueueFull`` when the queue is full."""
        return self._put(fn)

    def submit_unload(self) -> JobHandle:
        return self._put(None)

    def _put(self, fn: JobFn | None) -> JobHandle:
        job = _Job(fn, asyncio.get_running_loop())
        try:
            self._queue.put_nowait(job)
        except queue.Full as exc:
            raise QueueFull(self.name) from exc
        return JobHandle(job)

    def _ensure_loaded(self) -> M:
        if self._model is None:
            self.state = WorkerState.LOADING
            started = time.monotonic()
            try:
                self._model = self._loader()
            except Exception as exc:
                self.state = WorkerState.ERROR
                self.last_error = f"load failed: {exc}"
                raise
            self.loaded_at = time.time()
            self.state = WorkerState.WARM
            logger.info("%s loaded in %.1fs", self.name, time.monotonic() - started)
        return self._model

    def _unload(self) -> None:
        self._model = None
        self.loaded_at = None
        self.state = WorkerState.COLD
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        logger.info("%s unloaded", self.name)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            self._busy = True
            try:
                if job.fn is None:
                    self._unload()
                elif not job.cancel.is_set():
                    model = self._ensure_loaded()
                    for item in job.fn(model, job.cancel.is_set):
                        job.post(item)
                        if job.cancel.is_set():
                            break
            except Exception as exc:
                # ValueError means the request was bad (e.g. too long): not a model fault.
                if self.state is not WorkerState.ERROR and not isinstance(exc, ValueError):
                    logger.exception("%s: job failed", self.name)
                    self.last_error = f"{type(exc).__name__}: {exc}"
                failure = JobFailed(str(exc))
                failure.__cause__ = exc
                job.post(failure)
            finally:
                self._busy = False
                job.post(_DONE)
