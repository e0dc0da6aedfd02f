"""psionic's progress lines (status, step, checkpoint, eval, export), read into what the
daemon records: OpenAI-shaped job events (a `metrics` event per step), checkpoints, holdout
evals, the job's changed fields, and each status the job passed through."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autopilotd.ports.finetune import TrainEvent
from autopilotd.store.finetune_records import ENDED, FtCheckpoint, NewEvent


def error_object(message: str, code: str, param: str | None = None) -> dict[str, Any]:
    """A job's `error`, as OpenAI's job object has it."""
    return {"code": code, "message": message, "param": param}


@dataclass
class Progress:
    events: list[NewEvent] = field(default_factory=list)
    checkpoints: list[FtCheckpoint] = field(default_factory=list)
    evals: dict[int, dict[str, Any]] = field(default_factory=dict)  # by checkpoint step
    fields: dict[str, Any] = field(default_factory=dict)  # the job's columns that changed
    moves: list[str] = field(default_factory=list)  # each status passed through, in order


def read_progress(job_id: str, status: str, lines: Sequence[TrainEvent]) -> Progress:
    """What `lines` (in order) say about a job that is `status` now."""
    out = Progress()
    for line in lines:
        d = line.data
        if line.type == "status":
            now = str(d.get("status"))
            if now in ("running", *ENDED) and now != status:
                status = now
                out.moves.append(now)
            error = d.get("error")
            if now == "failed" and isinstance(error, dict):
                out.fields["error"] = error_object(
                    str(error.get("message")), str(error.get("code"))
                )
            level, message = status_words(now, d)
            out.events.append(NewEvent(level, "message", message, {"status": now}, line.seq))
        elif line.type == "step":
            step = int(d["step"])
            out.fields["step"] = step
            out.fields["total_steps"] = d.get("total_steps")
            metrics = {
                "step": step,
                "total_steps": d.get("total_steps"),
                "train_loss": d.get("loss"),
                "learning_rate": d.get("lr"),
                "tokens": d.get("tokens"),
            }
            message = f"Step {step}/{d.get('total_steps')}: training loss={d.get('loss')}"
            out.events.append(NewEvent("info", "metrics", message, metrics, line.seq))
        elif line.type == "checkpoint":
            step = int(d["step"])
            made = d.get("ts") or time.time()
            out.checkpoints.append(
                FtCheckpoint(job_id, step, str(d["digest"]), d.get("train_loss"), None, made)
            )
            data = {"step": step, "digest": d["digest"], "train_loss": d.get("train_loss")}
            message = f"Checkpoint at step {step}"
            out.events.append(NewEvent("info", "message", message, data, line.seq))
        elif line.type == "eval":
            result = {"loss": d.get("loss"), "pass_rate": d.get("pass_rate"), "n": d.get("n")}
            if d.get("subject") == "base":
                out.fields["base_eval"] = result
                message = f"Holdout eval of the base model: loss {d.get('loss')}"
            else:
                out.evals[int(d["step"])] = result
                message = f"Holdout eval of step {d.get('step')}: loss {d.get('loss')}"
            if d.get("pass_rate") is not None:
                message += f", pass rate {d['pass_rate']:.0%}"
            data = result | {"subject": d.get("subject"), "step": d.get("step")}
            out.events.append(NewEvent("info", "message", message, data, line.seq))
        elif line.type == "export":
            message = f"Exported the adapter of step {d.get('step')}"
            data = {"step": d.get("step"), "digest": d.get("digest")}
            out.events.append(NewEvent("info", "message", message, data, line.seq))
        else:
            out.events.append(NewEvent("info", "message", line.type, dict(d), line.seq))
    return out


def status_words(status: str, data: Mapping[str, Any]) -> tuple[str, str]:
    """The level and message of the event for a status line."""
    if status == "running":
        return "info", "Fine-tuning job started"
    if status == "succeeded":
        return "info", "The job has successfully completed"
    if status == "cancelled":
        return "info", "Job cancelled"
    error = data.get("error") or {}
    message = error.get("message") if isinstance(error, dict) else None
    return "error", f"Job failed: {message or data.get('message') or status}"
