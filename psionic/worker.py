"""One thread per loaded model: it loads the model, owns it, and runs jobs from a queue.

Torch work never runs on the event loop. A job is a function of the model that yields
items; the worker hands each item to the asyncio side through ``call_soon_threadsafe``.
A job's cancel flag (set when its HTTP client goes away) is checked between items.

A job may also carry a request for the model's batch (psionic/batch.py), when the worker was
given a way to open one for its model (``open_batch``, from psionic/runtime.py): then the
worker runs the batch's decode steps, and between two steps
lets the next waiting job join it while a slot is free: one per step, so a prefill never
holds the running sequences up for more than one prompt. Jobs start in queue order: one that
cannot join waits, and holds the queue behind it, until the batch has drained.
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
from typing import Any, Generic, Protocol, TypeVar

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


class Batch(Protocol):
    """What ``open_batch(model, slots)`` returns (psionic/batch.DecodeBatch)."""

    slots: int

    def __len__(self) -> int: ...

    @property
    def full(self) -> bool: ...

    def join(self, request: Any, out: Any) -> None: ...

    def step(self) -> None: ...

    def outputs(self) -> list[Any]: ...

    def clear(self) -> None: ...


@dataclass
class _Job:
    fn: JobFn | None  # None: unload
    loop: asyncio.AbstractEventLoop
    request: Any = None  # for the model's batch, which runs it instead of ``fn`` if it can
    items: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)

    def post(self, item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening
            self.loop.call_soon_threadsafe(self.items.put_nowait, item)

    # The batch's view of a job (psionic/batch.Output).
    def close(self) -> None:
        self.post(_DONE)

    def cancelled(self) -> bool:
        return self.cancel.is_set()


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

    def __init__(
        self,
        name: str,
        loader: Callable[[], M],
        max_queue: int,
        batch_slots: int = 1,
        open_batch: Callable[[M, int], Batch | None] | None = None,
    ) -> None:
        """`open_batch(model, slots)`: the model's decode batch, or None when it has none
        (then every job runs alone)."""
        self.name = name
        self._loader = loader
        self._open = open_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self.max_queue = max_queue
        self.batch_slots = batch_slots
        self.state = WorkerState.COLD
        self.last_error: str | None = None
        self.loaded_at: float | None = None
        self._model: M | None = None
        self._batch: Batch | None = None
        self._busy = False
        self._held: list[_Job | None] = []  # taken from the queue, waiting for the batch
        self._thread = threading.Thread(target=self._run, name=f"psionic-{name}", daemon=True)

    @property
    def queue_depth(self) -> int:
        """Jobs waiting plus those running (each sequence of a batch counts)."""
        held = sum(1 for job in self._held if job is not None)
        return self._queue.qsize() + held + (1 if self._busy else 0) + self.active

    @property
    def active(self) -> int:
        """Sequences in the running batch."""
        batch = self._batch
        return len(batch) if batch is not None else 0

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

    def retire(self) -> None:
        """Finish every job already queued or running, then end the thread and drop the
        model. Blocks (call it off the event loop); nothing may be submitted after it."""
        if self._thread.is_alive():
            self._queue.put(None)  # after the jobs before it; waits for room in a full queue
            self._thread.join()
        self._model = None
        self._batch = None
        self.state = WorkerState.COLD

    def submit(self, fn: JobFn, request: Any = None) -> JobHandle:
        """Queue ``fn(model, cancelled)``; raise ``QueueFull`` when the queue is full.

        With ``request``, the model's batch runs that instead where the model has one.
        """
        return self._put(fn, request)

    def submit_unload(self) -> JobHandle:
        return self._put(None)

    def _put(self, fn: JobFn | None, request: Any = None) -> JobHandle:
        job = _Job(fn, asyncio.get_running_loop(), request)
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
        self._batch = None
        self.loaded_at = None
        self.state = WorkerState.COLD
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        logger.info("%s unloaded", self.name)

    def _run(self) -> None:
        while True:
            if self.active:
                self._admit()
                self._step()
                continue
            job = self._held.pop() if self._held else self._queue.get()
            if job is None:
                return
            self._busy = True
            try:
                self._start(job)
            except Exception as exc:
                self._fail(job, exc)
            finally:
                self._busy = False

    def _start(self, job: _Job) -> None:
        """Run ``job`` to its end, or, when it joins a batch, until its prefill is done."""
        if job.fn is None:
            self._unload()
            job.close()
            return
        if job.cancel.is_set():
            job.close()
            return
        model = self._ensure_loaded()
        batch = self._open_batch(model) if job.request is not None else None
        if batch is not None:
            batch.join(job.request, job)  # the batch closes the job when it finishes
            return
        for item in job.fn(model, job.cancel.is_set):
            job.post(item)
            if job.cancel.is_set():
                break
        job.close()

    def _open_batch(self, model: M) -> Batch | None:
        if self._batch is None and self._open is not None:
            self._batch = self._open(model, self.batch_slots)
        return self._batch

    def _admit(self) -> None:
        """Let the next waiting job join the running batch, if it can and a slot is free."""
        batch = self._batch
        if self._held or batch is None or batch.full:
            return
        try:
            job = self._queue.get_nowait()
        except queue.Empty:
            return
        if job is None or job.request is None:
            self._held.append(job)  # it runs once the batch has drained
            return
        if job.cancel.is_set():
            job.close()
            return
        try:
            batch.join(job.request, job)
        except Exception as exc:
            self._fail(job, exc)

    def _step(self) -> None:
        batch = self._batch
        assert batch is not None
        try:
            batch.step()
        except Exception as exc:
            outputs = batch.outputs()
            batch.clear()
            for job in outputs:
                self._fail(job, exc)

    def _fail(self, job: _Job, exc: Exception) -> None:
        """Hand ``exc`` to the job's client, and end the job."""
        # ValueError means the request was bad (e.g. too long): not a model fault.
        if self.state is not WorkerState.ERROR and not isinstance(exc, ValueError):
            logger.exception("%s: job failed", self.name, exc_info=exc)
            self.last_error = f"{type(exc).__name__}: {exc}"
        failure = JobFailed(str(exc))
        failure.__cause__ = exc
        job.post(failure)
        job.close()
