"""A training job's directory as files (docs/psionic.md): ``job.json``, read into a `Job`
with its `Hyperparameters` and dataset files, and ``progress.jsonl``, the events training
appends (`Progress`), from which ``result.json`` is made. psionic/training.py runs the job.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from psionic.lora import LoraSpec

SCHEDULES = ("cosine", "linear", "constant")
DEFAULT_LEARNING_RATE = 2e-3


class JobError(Exception):
    """A job that cannot run or go on: ``code`` and ``message`` go to the status line."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Hyperparameters:
    """job.json's "hyperparameters", with the defaults of the fine-tuning spec."""

    n_epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 4
    learning_rate: float = DEFAULT_LEARNING_RATE
    warmup_steps: int = 0
    schedule: str = "cosine"
    weight_decay: float = 0.0
    clip: float = 1.0
    grad_accum: int = 1
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    targets: tuple[str, ...] = ("q", "k", "v", "o")
    mode: str = "lora"
    precision: str = "auto"
    seed: int = 0
    max_seq_len: int = 512
    checkpoint_every: int = 10
    keep_checkpoints: int = 3
    threads: int | None = None
    eval_every_checkpoint: bool = True
    eval_max_tokens: int = 32

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Hyperparameters:
        """Parse, accepting OpenAI's ``learning_rate_multiplier`` (times 2e-3); a bad value
        is a JobError naming the field."""
        raw = {k: v for k, v in raw.items() if v is not None}
        if "learning_rate_multiplier" in raw:
            multiplier = raw.pop("learning_rate_multiplier")
            raw.setdefault("learning_rate", DEFAULT_LEARNING_RATE * float(multiplier))
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise JobError("invalid_job", f"unknown hyperparameters: {', '.join(unknown)}")
        values: dict[str, Any] = {}
        try:
            for name, value in raw.items():
                default = getattr(cls(), name)
                if name == "targets":
                    values[name] = tuple(str(t) for t in value)
                elif isinstance(default, bool):
                    values[name] = bool(value)
                elif isinstance(default, float):
                    values[name] = float(value)
                elif isinstance(default, int) or name in ("max_steps", "threads"):
                    values[name] = int(value)
                else:
                    values[name] = str(value)
        except (TypeError, ValueError) as exc:
            raise JobError("invalid_job", f"hyperparameter {name}: {exc}") from exc
        hp = cls(**values)
        hp.check()
        return hp

    def check(self) -> None:
        problems = []
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {', '.join(SCHEDULES)}")
        if self.mode not in ("lora", "head_only"):
            problems.append("mode must be lora or head_only")
        if self.precision not in ("auto", "fp32", "bf16"):
            problems.append("precision must be auto, fp32 or bf16")
        for name in ("n_epochs", "batch_size", "grad_accum", "checkpoint_every", "max_seq_len"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append("max_steps must be at least 1")
        try:
            self.spec()
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            raise JobError("invalid_job", "; ".join(problems))

    def spec(self) -> LoraSpec:
        targets = ("head",) if self.mode == "head_only" else self.targets
        return LoraSpec(self.lora_r, self.lora_alpha, self.lora_dropout, targets)


@dataclass(frozen=True)
class Job:
    """job.json, with its dataset files read."""

    dir: Path
    id: str | None
    base_model: str
    train: str
    validation: str | None
    holdout: str | None
    hyper: Hyperparameters

    @classmethod
    def load(cls, job_dir: Path) -> Job:
        try:
            raw = json.loads((job_dir / "job.json").read_text())
        except (OSError, ValueError) as exc:
            raise JobError("invalid_job", f"cannot read job.json: {exc}") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("base_model"), str):
            raise JobError("invalid_job", 'job.json needs "base_model"')

        def read(key: str) -> str | None:
            name = raw.get(key)
            if name is None:
                return None
            try:
                return (job_dir / str(name)).read_text()
            except OSError as exc:
                raise JobError("invalid_job", f"cannot read the {key} file: {exc}") from exc

        train = read("train")
        if train is None:
            raise JobError("invalid_job", 'job.json needs "train"')
        hyper = raw.get("hyperparameters") or {}
        if not isinstance(hyper, dict):
            raise JobError("invalid_job", "hyperparameters must be an object")
        return cls(
            job_dir,
            raw.get("id"),
            raw["base_model"],
            train,
            read("validation"),
            read("holdout"),
            Hyperparameters.from_json(hyper),
        )


class Progress:
    """progress.jsonl: one event per line, appended and flushed, ``seq`` continuing across
    runs of the same job. A torn last line (the process killed mid-write) is skipped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        text = path.read_text() if path.exists() else ""
        for line in text.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and isinstance(event.get("seq"), int):
                self.events.append(event)
        self.seq = max((e["seq"] for e in self.events), default=0)
        if text and not text.endswith("\n"):
            with path.open("a") as f:
                f.write("\n")

    def emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.seq += 1
        event = {"seq": self.seq, "ts": round(time.time(), 3), "type": kind, **fields}
        with self.path.open("a") as f:
            f.write(json.dumps(event) + "\n")
            f.flush()
        self.events.append(event)
        return event

    def status(self, status: str, message: str, error: dict[str, str] | None = None) -> None:
        fields: dict[str, Any] = {"status": status, "message": message}
        if error is not None:
            fields["error"] = error
        self.emit("status", **fields)

    def last(self, kind: str, **match: Any) -> dict[str, Any] | None:
        """The newest event of ``kind`` whose fields equal ``match``."""
        for event in reversed(self.events):
            if event["type"] == kind and all(event.get(k) == v for k, v in match.items()):
                found: dict[str, Any] = event
                return found
        return None

    def result(self, status: str) -> dict[str, Any]:
        """result.json's content, from the events (so it covers every run of the job)."""
        base = self.last("eval", subject="base")
        steps = [e["step"] for e in self.events if e["type"] == "step"]
        by_step = {e["step"]: e for e in self.events if e["type"] == "checkpoint"}
        rows = []
        for step, event in sorted(by_step.items()):
            ev = self.last("eval", subject="checkpoint", step=step)
            rows.append(
                {
                    "step": step,
                    "digest": event["digest"],
                    "train_loss": event["train_loss"],
                    "eval": _eval_fields(ev),
                }
            )
        return {
            "status": status,
            "steps": steps[-1] if steps else 0,
            "base_eval": _eval_fields(base),
            "checkpoints": rows,
        }


def _eval_fields(event: dict[str, Any] | None) -> dict[str, Any] | None:
    if event is None:
        return None
    return {"loss": event["loss"], "pass_rate": event["pass_rate"], "n": event["n"]}
