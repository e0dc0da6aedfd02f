"""Training jobs: one directory each under the train dir, one trainer child at a time.

A job is created by writing its directory (``job.json``, the dataset files, ``manager.json``)
and is then run by the scheduler as a child process, ``psionic train --job-dir DIR``
(psionic/cli.py), which writes ``progress.jsonl`` and ``result.json`` there. The job's state
is always read back from those files and the child's exit, never kept on the side, so a
psionic restart finds the same jobs: unfinished ones (queued, or running when psionic
stopped) are queued again in their creation order, and the trainer resumes from its last
checkpoint.

While a child runs it holds the arbiter's swap lock as ``train:<id>`` (extended while it
runs, released after), so no swap or warm moves models onto the device under it; a job does
not start while someone else holds the lock.

Cancel sends SIGTERM: the trainer stops at its next step and writes ``cancelled``. A child
that exits without a final status line (killed, crashed) fails the job with an error naming
its exit code; it is not re-run, since a crash is usually repeatable (out of memory, a bad
file). ``manager.json`` records what only this side knows: when the job was created and
whether a person cancelled it; a ``cancelled`` written because psionic itself was stopping
is an interruption, and the job resumes at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from psionic.arbiter import BadToken, LockHeld, SwapLock

logger = logging.getLogger(__name__)

JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
HYPERPARAMETERS = frozenset(
    {
        "n_epochs",
        "max_steps",
        "batch_size",
        "learning_rate_multiplier",
        "learning_rate",
        "warmup_steps",
        "schedule",
        "weight_decay",
        "clip",
        "grad_accum",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "targets",
        "mode",
        "precision",
        "seed",
        "max_seq_len",
        "checkpoint_every",
        "keep_checkpoints",
        "threads",
        "eval_every_checkpoint",
        "eval_max_tokens",
    }
)
LOCK_TTL_S = 300.0
STOP_GRACE_S = 30.0  # how long a stopping psionic waits for the trainer to reach a step end

# The trainer's command for a job directory; tests pass a fake trainer.
Command = Callable[[Path], Sequence[str]]


def trainer_command(job_dir: Path) -> list[str]:
    return [sys.executable, "-m", "psionic.cli", "train", "--job-dir", str(job_dir)]


def default_train_dir() -> Path:
    """``$PSIONIC_HOME/train`` if set, else the platform's user data dir for psionic."""
    home = os.environ.get("PSIONIC_HOME")
    base = Path(home) if home else Path(platformdirs.user_data_dir("psionic"))
    return base / "train"


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class JobError(ValueError):
    """A create request that cannot be a job (HTTP 400); ``param`` names the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def read_events(job_dir: Path) -> list[dict[str, Any]]:
    """The lines of ``progress.jsonl``; a last line cut short by a crash is skipped."""
    try:
        text = (job_dir / "progress.jsonl").read_text()
    except FileNotFoundError:
        return []
    events = []
    for line in text.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            event = json.loads(line)
            if isinstance(event, dict):
                events.append(event)
    return events


@dataclass
class JobView:
    """A job as the API shows it, read from its directory."""

    id: str
    status: JobStatus
    created_at: float
    step: int = 0
    total_steps: int | None = None
    error: dict[str, Any] | None = None
    base_eval: dict[str, Any] | None = None
    checkpoints: list[dict[str, Any]] = field(default_factory=list)

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": str(self.status),
            "step": self.step,
            "total_steps": self.total_steps,
            "error": self.error,
            "base_eval": self.base_eval,
            "checkpoints": self.checkpoints,
            "created_at": self.created_at,
        }


def _eval(event: dict[str, Any]) -> dict[str, Any]:
    return {"loss": event.get("loss"), "pass_rate": event.get("pass_rate"), "n": event.get("n")}


def summarize(job_id: str, events: list[dict[str, Any]], manager: dict[str, Any]) -> JobView:
    """The job's state from its progress lines (the last line for a step wins) and what
    ``manager.json`` says; ``running`` is decided by the caller, who knows the child."""
    view = JobView(job_id, JobStatus.QUEUED, float(manager.get("created_at", 0.0)))
    checkpoints: dict[int, dict[str, Any]] = {}
    status: str | None = None
    for event in events:
        kind = event.get("type")
        if kind == "status":
            status = event.get("status")
            view.error = event.get("error") if status == JobStatus.FAILED else None
        elif kind == "step":
            view.step = int(event.get("step", 0))
            view.total_steps = event.get("total_steps")
        elif kind == "checkpoint":
            step = int(event.get("step", 0))
            old = checkpoints.get(step, {})
            checkpoints[step] = {
                "step": step,
                "digest": event.get("digest"),
                "train_loss": event.get("train_loss"),
                "validation_loss": event.get("validation_loss"),
                "eval": old.get("eval"),
            }
        elif kind == "eval" and event.get("subject") == "base":
            view.base_eval = _eval(event)
        elif kind == "eval" and isinstance(event.get("step"), int):
            entry = checkpoints.setdefault(
                event["step"],
                {
                    "step": event["step"],
                    "digest": None,
                    "train_loss": None,
                    "validation_loss": None,
                    "eval": None,
                },
            )
            entry["eval"] = _eval(event)
    view.checkpoints = [checkpoints[s] for s in sorted(checkpoints)]
    if status in FINAL and not (status == JobStatus.CANCELLED and not manager.get("cancelled")):
        view.status = JobStatus(status)
    # Otherwise queued: not started, or interrupted (psionic stopped) and to be resumed.
    return view


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


class TrainJobs:
    """The jobs under ``root`` and the scheduler that runs them, one at a time, in order."""

    def __init__(
        self,
        root: Path,
        lock: SwapLock,
        command: Command = trainer_command,
        clock: Callable[[], float] = time.time,
        cache_dir: Path | None = None,
    ) -> None:
        """``cache_dir``: where the trainer finds converted weights (``PSIONIC_CACHE``), when
        psionic was given one; otherwise the trainer inherits psionic's environment."""
        self.root = root
        self._env = None if cache_dir is None else {**os.environ, "PSIONIC_CACHE": str(cache_dir)}
        self._lock = lock
        self._command = command
        self._clock = clock
        self._queue: list[str] = []
        self._current: str | None = None  # the job being started or run
        self._process: asyncio.subprocess.Process | None = None  # its trainer, once started
        self._wake = asyncio.Event()

    # --- reading

    def job_dir(self, job_id: str) -> Path | None:
        """The directory of a known job, or None (never a path outside ``root``)."""
        if not JOB_ID.match(job_id):
            return None
        path = self.root / job_id
        return path if (path / "job.json").is_file() else None

    def _manager(self, job_dir: Path) -> dict[str, Any]:
        try:
            data = json.loads((job_dir / "manager.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, job_id: str) -> JobView | None:
        job_dir = self.job_dir(job_id)
        if job_dir is None:
            return None
        view = summarize(job_id, read_events(job_dir), self._manager(job_dir))
        if self._current == job_id:
            view.status = JobStatus.RUNNING
        return view

    def jobs(self) -> list[JobView]:
        views = [self.get(p.parent.name) for p in self.root.glob("*/job.json")]
        return sorted((v for v in views if v is not None), key=lambda v: (v.created_at, v.id))

    def events(self, job_id: str, after: int) -> tuple[list[dict[str, Any]], int] | None:
        """Progress lines with ``seq`` > ``after``, and the last seq so far."""
        job_dir = self.job_dir(job_id)
        if job_dir is None:
            return None
        events = read_events(job_dir)
        last = max((int(e.get("seq", 0)) for e in events), default=0)
        return [e for e in events if int(e.get("seq", 0)) > after], last

    # --- changing

    def create(self, body: dict[str, Any]) -> tuple[JobView, bool]:
        """Write a new job and queue it; the existing job for a known id (False: not new).

        ``body`` is the API's: id, base_model (already resolved by the caller to what the
        trainer loads), train/validation/holdout as JSONL text, hyperparameters."""
        job_id = body.get("id")
        if not isinstance(job_id, str) or not JOB_ID.match(job_id):
            raise JobError("id", "'id' must be 1-128 letters, digits, '.', '_' or '-'.")
        existing = self.get(job_id)
        if existing is not None:
            self._enqueue_if_unfinished(existing)
            return existing, False
        base = body.get("base_model")
        if not isinstance(base, str) or not base:
            raise JobError("base_model", "'base_model' is required.")
        train = body.get("train")
        if not isinstance(train, str) or not train.strip():
            raise JobError("train", "'train' must be non-empty JSONL text.")
        files: dict[str, str | None] = {"train": "train.jsonl"}
        for name in ("validation", "holdout"):
            value = body.get(name)
            if value is not None and not isinstance(value, str):
                raise JobError(name, f"'{name}' must be JSONL text or null.")
            files[name] = f"{name}.jsonl" if value else None
        hyper = body.get("hyperparameters") or {}
        if not isinstance(hyper, dict):
            raise JobError("hyperparameters", "'hyperparameters' must be an object.")
        unknown = sorted(set(hyper) - HYPERPARAMETERS)
        if unknown:
            raise JobError(
                f"hyperparameters.{unknown[0]}", f"Unknown hyperparameter {unknown[0]!r}."
            )
        # Written whole into a temporary directory, then renamed: a job dir is never partial.
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{job_id}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, filename in files.items():
            if filename is not None:
                (tmp / filename).write_text(str(body[name]))
        job = {"id": job_id, "base_model": base, **files, "hyperparameters": hyper}
        _write_json(tmp / "job.json", job)
        _write_json(tmp / "manager.json", {"created_at": self._clock(), "cancelled": False})
        tmp.rename(self.root / job_id)
        view = self.get(job_id)
        assert view is not None
        self._enqueue_if_unfinished(view)
        return view, True

    def cancel(self, job_id: str) -> JobView | None:
        """Cancel a queued job at once, a running one by SIGTERM (cancelled once it stops)."""
        job_dir = self.job_dir(job_id)
        if job_dir is None:
            return None
        view = self.get(job_id)
        assert view is not None
        if view.status in FINAL:
            return view
        _write_json(job_dir / "manager.json", {**self._manager(job_dir), "cancelled": True})
        if self._current == job_id:
            if self._process is not None:  # else _run_one signals it once it has started
                with contextlib.suppress(ProcessLookupError):
                    self._process.send_signal(signal.SIGTERM)
        else:
            if job_id in self._queue:
                self._queue.remove(job_id)
            self._append_status(job_dir, JobStatus.CANCELLED, "cancelled before it ran")
        return self.get(job_id)

    def _enqueue_if_unfinished(self, view: JobView) -> None:
        running = self._current == view.id
        if view.status is JobStatus.QUEUED and not running and view.id not in self._queue:
            self._queue.append(view.id)
            self._wake.set()

    def _append_status(
        self, job_dir: Path, status: JobStatus, message: str, error: dict[str, str] | None = None
    ) -> None:
        """A status line written by this side, when no trainer runs for the job."""
        events = read_events(job_dir)
        seq = max((int(e.get("seq", 0)) for e in events), default=0) + 1
        line: dict[str, Any] = {
            "seq": seq,
            "ts": self._clock(),
            "type": "status",
            "status": str(status),
            "message": message,
        }
        if error is not None:
            line["error"] = error
        with (job_dir / "progress.jsonl").open("a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())

    # --- running

    async def run(self) -> None:
        """The scheduler: queue the unfinished jobs found on disk, then run jobs in order,
        each once the swap lock is free, until cancelled (stopping the running child)."""
        for view in self.jobs():
            if view.status is JobStatus.QUEUED:
                await self._stop_orphan(self.root / view.id)
            self._enqueue_if_unfinished(view)
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            job_id = self._queue[0]
            try:
                token = self._lock.acquire(f"train:{job_id}", LOCK_TTL_S).token
            except LockHeld:
                self._wake.clear()  # someone else holds it: look again in a second
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)
                continue
            self._queue.pop(0)
            self._current = job_id
            try:
                await self._run_one(job_id, token)
            except Exception as exc:  # the trainer could not start, the disk is full, ...
                logger.exception("training %s could not run", job_id)
                message = f"The trainer could not be run ({type(exc).__name__}); see psionic's log."
                error = {"code": "trainer_not_run", "message": message}
                with contextlib.suppress(OSError):
                    self._append_status(self.root / job_id, JobStatus.FAILED, message, error)
            finally:
                self._current = None
                self._process = None
                with contextlib.suppress(BadToken):
                    self._lock.release(token)

    async def _run_one(self, job_id: str, token: str) -> None:
        job_dir = self.root / job_id
        with (job_dir / "trainer.log").open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                *self._command(job_dir),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self._env,
            )
        self._process = process
        _write_json(job_dir / "manager.json", {**self._manager(job_dir), "pid": process.pid})
        logger.info("training %s started (pid %d)", job_id, process.pid)
        if self._manager(job_dir).get("cancelled"):  # cancelled while it was starting
            process.send_signal(signal.SIGTERM)
        try:
            while True:
                try:
                    code = await asyncio.wait_for(process.wait(), LOCK_TTL_S / 3)
                    break
                except TimeoutError:
                    self._extend_lock(job_id, token)
        except asyncio.CancelledError:
            await self._stop(process)  # psionic is stopping: the job resumes at the next start
            raise
        view = summarize(job_id, read_events(job_dir), self._manager(job_dir))
        if view.status not in FINAL and not self._manager(job_dir).get("cancelled"):
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
            message = f"The trainer exited with {how} without a final status; see trainer.log."
            error = {"code": "trainer_exited", "message": message}
            self._append_status(job_dir, JobStatus.FAILED, message, error)
        elif view.status not in FINAL:  # cancelled, but the trainer died before saying so
            self._append_status(job_dir, JobStatus.CANCELLED, "cancelled")
        logger.info("training %s ended (exit %d)", job_id, code)

    def _extend_lock(self, job_id: str, token: str) -> None:
        try:
            self._lock.acquire(f"train:{job_id}", LOCK_TTL_S, token)
        except LockHeld as exc:  # forced open and taken by someone else meanwhile
            logger.warning("training %s lost the swap lock to %s", job_id, exc.state.holder)

    async def _stop_orphan(self, job_dir: Path) -> None:
        """Stop a trainer left running on ``job_dir`` by a psionic that was killed outright,
        so that two never write one job (Linux: the pid's command line must name the dir)."""
        pid = self._manager(job_dir).get("pid")
        if not isinstance(pid, int) or not _trains(pid, job_dir):
            return
        logger.warning("stopping trainer pid %d left running on %s", pid, job_dir)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while _trains(pid, job_dir):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.05)  # not our child: nothing to wait on but its /proc entry

    async def _stop(self, process: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


def _trains(pid: int, job_dir: Path) -> bool:
    """Whether process ``pid`` is alive and a trainer of ``job_dir``."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone, or no /proc on this system
        return False
    zombie = status.rpartition(")")[2].split()[:1] == ["Z"]
    return not zombie and str(job_dir).encode() in cmdline.split(b"\0")
