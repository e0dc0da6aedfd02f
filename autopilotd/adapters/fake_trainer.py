"""An in-memory stand-in for psionic's training jobs and adapters, for fast tests of the
fine-tuning service and its tenant API. Never used by the daemon or the demo.

A job plays a script of progress events like psionic's: running, a step line per step, a
checkpoint every `checkpoint_every` steps, the base model's holdout eval first and each
checkpoint's after it (when the job has a holdout), then succeeded. With `autoplay` the whole
script is there at once; without it a test hands events out with `release`. Losses come from
`eval_loss(step)` against `base_loss`, so a test decides whether a checkpoint beats the base.
A checkpoint's export (`adapter_archive`) is a small real tar whose adapter_model.safetensors
has the checkpoint's digest as its sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import struct
import tarfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from autopilotd.ports.finetune import (
    AdapterRevision,
    AdapterSource,
    EvalResult,
    Receipt,
    Rejection,
    TrainCheckpoint,
    TrainerError,
    TrainEvent,
    TrainJob,
    TrainSpec,
)

BASE_MODEL = "fake-chat"


@dataclass
class _Job:
    spec: TrainSpec
    script: list[TrainEvent]
    released: int = 0
    cancelled: bool = False
    extra: list[TrainEvent] = field(default_factory=list)

    def seen(self) -> list[TrainEvent]:
        return self.script[: self.released] + self.extra


class FakeTrainer:
    def __init__(
        self,
        *,
        steps: int = 4,
        checkpoint_every: int = 2,
        base_loss: float = 2.0,
        eval_loss: Callable[[int], float] = lambda step: 2.0 - 0.2 * step,
        pass_rate: Callable[[int | None], float | None] = lambda step: None,
        autoplay: bool = True,
        fail_with: dict[str, str] | None = None,
    ) -> None:
        self.steps = steps
        self.checkpoint_every = checkpoint_every
        self.base_loss = base_loss
        self.eval_loss = eval_loss
        self.pass_rate = pass_rate
        self.autoplay = autoplay
        self.fail_with = fail_with
        self.bases = [BASE_MODEL]
        self.jobs: dict[str, _Job] = {}
        self.created: list[str] = []  # every create_job call's id, repeats included
        self.adapters: dict[str, list[AdapterRevision]] = {}
        self.chats: list[dict[str, Any]] = []
        self.swap_locked = False  # psionic's swap lock is held (a training job runs): 423

    # -- test controls -------------------------------------------------------------------

    def release(self, job_id: str, n: int | None = None) -> None:
        """Hand out the next `n` events of the job's script (all of them when None)."""
        job = self.jobs[job_id]
        job.released = len(job.script) if n is None else min(len(job.script), job.released + n)

    # -- the port ------------------------------------------------------------------------

    async def validate(self, base_model: str, jsonl: str, max_seq_len: int) -> Receipt:
        if base_model not in self.bases:
            raise TrainerError(f"model {base_model!r} is not served", status=404)
        lines = [line for line in jsonl.splitlines() if line.strip()]
        rejected: list[Rejection] = []
        tokens = 0
        for n, line in enumerate(lines, 1):
            try:
                messages = json.loads(line)["messages"]
                count = sum(len(str(m["content"]).split()) for m in messages)
            except (ValueError, KeyError, TypeError):
                rejected.append(Rejection(n, "not a chat example"))
                continue
            if count > max_seq_len:
                rejected.append(Rejection(n, f"{count} tokens, above max_seq_len {max_seq_len}"))
                continue
            tokens += count
        return Receipt(len(lines), len(lines) - len(rejected), tuple(rejected), tokens, tokens)

    async def create_job(self, spec: TrainSpec) -> TrainJob:
        self.created.append(spec.id)
        if spec.id not in self.jobs:
            self.jobs[spec.id] = _Job(spec, self._script(spec))
            if self.autoplay:
                self.release(spec.id)
        return await self.get_job(spec.id)

    async def get_job(self, job_id: str) -> TrainJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise TrainerError(f"no training job {job_id}", status=404)
        status, step, error = "queued", 0, None
        base_eval: EvalResult | None = None
        checkpoints: dict[int, TrainCheckpoint] = {}
        for e in job.seen():
            if e.type == "status":
                status, error = e.data["status"], e.data.get("error")
            elif e.type == "step":
                step = e.data["step"]
            elif e.type == "checkpoint":
                checkpoints[e.data["step"]] = TrainCheckpoint(
                    e.data["step"], e.data["digest"], e.data["train_loss"]
                )
            elif e.type == "eval":
                result = EvalResult(e.data["loss"], e.data["pass_rate"], e.data["n"])
                if e.data["subject"] == "base":
                    base_eval = result
                else:
                    checkpoints[e.data["step"]] = replace(checkpoints[e.data["step"]], eval=result)
        return TrainJob(
            job_id, status, step, self.steps, error, base_eval, tuple(checkpoints.values())
        )

    async def events(self, job_id: str, after: int) -> list[TrainEvent]:
        if job_id not in self.jobs:
            raise TrainerError(f"no training job {job_id}", status=404)
        return [e for e in self.jobs[job_id].seen() if e.seq > after]

    async def cancel(self, job_id: str) -> TrainJob:
        job = self.jobs[job_id]
        current = await self.get_job(job_id)
        if current.status in ("queued", "running"):
            job.script = job.script[: job.released]
            seq = max((e.seq for e in job.seen()), default=0) + 1
            job.extra.append(TrainEvent(seq, "status", {"status": "cancelled", "message": ""}))
        return await self.get_job(job_id)

    async def put_adapter(
        self,
        model_id: str,
        job: str,
        step: int,
        expect_digest: str | None,
        previous: AdapterSource | None = None,
    ) -> AdapterRevision:
        found = self.jobs.get(job)
        if found is None:
            raise TrainerError(f"no training job {job}", status=404)
        if self.swap_locked:
            raise TrainerError("The swap lock is held by 'train:x'", status=423, code="swap_locked")
        digest = _digest(job, step)
        if step not in [c.step for c in (await self.get_job(job)).checkpoints]:
            raise TrainerError(f"job {job} has no checkpoint at step {step}", status=404)
        if expect_digest is not None and expect_digest != digest:
            raise TrainerError("adapter digest mismatch", status=400, code="digest_mismatch")
        if previous is not None and not self.adapters.get(model_id):
            with contextlib.suppress(TrainerError):  # best effort, as psionic's
                await self.put_adapter(model_id, previous.job, previous.step, previous.digest)
        history = self.adapters.setdefault(model_id, [])
        before = history[-1].revision if history else None
        made = AdapterRevision(model_id, found.spec.base_model, digest, before, step, job)
        history.append(made)
        return made

    async def rollback_adapter(self, model_id: str) -> AdapterRevision:
        history = self.adapters.get(model_id, [])
        if len(history) < 2:
            raise TrainerError("no previous revision", status=409, code="no_previous_revision")
        history.pop()
        top = history[-1]
        return replace(top, previous=history[-2].revision if len(history) > 1 else None)

    async def adapter_archive(self, job_id: str, step: int) -> bytes:
        job = await self.get_job(job_id)
        if step not in [c.step for c in job.checkpoints]:
            raise TrainerError(f"job {job_id} has no checkpoint at step {step}", status=404)
        config = {"peft_type": "LORA", "base_model_name_or_path": job_id, "r": 8}
        files = {
            "adapter_model.safetensors": safetensors(job_id, step),
            "adapter_config.json": json.dumps(config).encode(),
            "psionic_adapter.json": json.dumps({"job": job_id, "step": step}).encode(),
        }
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return out.getvalue()

    async def delete_adapter(self, model_id: str) -> None:
        self.adapters.pop(model_id, None)

    async def list_adapters(self) -> list[AdapterRevision]:
        return [h[-1] for h in self.adapters.values() if h]

    async def base_models(self) -> list[str]:
        return list(self.bases)

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        self.chats.append(body)
        model = str(body.get("model"))
        history = self.adapters.get(model)
        if model not in self.bases and not history:
            raise TrainerError(f"model {model!r} is not served", status=404)
        fingerprint = f"rev-{history[-1].revision[:12]}" if history else None
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "system_fingerprint": fingerprint,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"fake answer from {model}"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        }

    async def stream_chat(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        answer = await self.chat(body)
        words = answer["choices"][0]["message"]["content"].split(" ")
        for n, word in enumerate(words):
            delta = {"content": word if n == 0 else " " + word}
            chunk = {
                "id": answer["id"],
                "object": "chat.completion.chunk",
                "created": 0,
                "model": answer["model"],
                "system_fingerprint": answer["system_fingerprint"],
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    async def close(self) -> None:
        pass

    # -- a job's script ------------------------------------------------------------------

    def _script(self, spec: TrainSpec) -> list[TrainEvent]:
        out: list[dict[str, Any]] = [{"type": "status", "status": "running", "message": ""}]
        if spec.holdout:
            out.append(
                {
                    "type": "eval",
                    "subject": "base",
                    "step": None,
                    "loss": self.base_loss,
                    "pass_rate": self.pass_rate(None),
                    "n": 2,
                }
            )
        for step in range(1, self.steps + 1):
            loss = round(self.base_loss - 0.25 * step, 4)
            out.append(
                {
                    "type": "step",
                    "step": step,
                    "total_steps": self.steps,
                    "loss": loss,
                    "lr": 0.002,
                    "tokens": 10 * step,
                    "elapsed_s": 0.1 * step,
                }
            )
            if step % self.checkpoint_every == 0 or step == self.steps:
                out.append(
                    {
                        "type": "checkpoint",
                        "step": step,
                        "digest": _digest(spec.id, step),
                        "path": f"checkpoints/step-{step:06d}",
                        "train_loss": loss,
                    }
                )
                if spec.holdout:
                    out.append(
                        {
                            "type": "eval",
                            "subject": "checkpoint",
                            "step": step,
                            "loss": self.eval_loss(step),
                            "pass_rate": self.pass_rate(step),
                            "n": 2,
                        }
                    )
        if self.fail_with is not None:
            out.append({"type": "status", "status": "failed", "error": self.fail_with})
        else:
            out.append({"type": "status", "status": "succeeded", "message": ""})
        return [
            TrainEvent(n, str(e.pop("type")), e | {"ts": 1_700_000_000.0 + n})
            for n, e in enumerate(out, 1)
        ]


def safetensors(job: str, step: int) -> bytes:
    """A real safetensors file with no tensors, only metadata naming the checkpoint."""
    header = json.dumps({"__metadata__": {"job": job, "step": str(step)}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header


def _digest(job: str, step: int) -> str:
    """A checkpoint's adapter digest: the sha256 of its adapter_model.safetensors."""
    return hashlib.sha256(safetensors(job, step)).hexdigest()
