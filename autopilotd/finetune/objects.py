"""Fine-tuning records as OpenAI's API shows them (file, fine_tuning.job, its events and
checkpoints, model), with our extensions on the job: the receipts, the eval results and the
promotion. The tenant API and the owner's commands show the same objects."""

from __future__ import annotations

from typing import Any

from autopilotd.finetune.gate import Verdict
from autopilotd.store.finetune_records import FtCheckpoint, FtEvent, FtFile, FtJob, FtModel


def file_object(f: FtFile) -> dict[str, Any]:
    return {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": int(f.created_at),
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "status_details": None,
        "receipt": f.receipt,
    }


def hyperparameters(job: FtJob) -> dict[str, Any]:
    h = job.hyperparameters
    return {
        "n_epochs": h.get("n_epochs", "auto"),
        "batch_size": h.get("batch_size", "auto"),
        "learning_rate_multiplier": h.get("learning_rate_multiplier", "auto"),
    }


def job_object(
    job: FtJob,
    verdicts: list[Verdict] | None = None,
) -> dict[str, Any]:
    """OpenAI's fine_tuning.job, plus `holdout_file`, `receipts`, `psionic_hyperparameters`,
    `eval` (base and each checkpoint with the gate's verdict) and `promotion`."""
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "created_at": int(job.created_at),
        "finished_at": None if job.finished_at is None else int(job.finished_at),
        "model": job.model,
        "fine_tuned_model": job.fine_tuned_model,
        "organization_id": job.tenant_id,
        "status": job.status,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "holdout_file": job.holdout_file,
        "hyperparameters": hyperparameters(job),
        "psionic_hyperparameters": job.hyperparameters,
        "trained_tokens": job.trained_tokens or None,
        "result_files": [],
        "error": job.error,
        "seed": job.seed,
        "suffix": job.suffix,
        "estimated_finish": None,
        "integrations": [],
        "user_provided_suffix": job.suffix,
        "step": job.step,
        "total_steps": job.total_steps,
        "receipts": job.receipts,
        "eval": {
            "base": job.base_eval,
            "checkpoints": [v.to_json() for v in verdicts or []],
        },
        "promotion": job.promotion,
    }


def event_object(e: FtEvent) -> dict[str, Any]:
    return {
        "id": f"ftevent-{e.id}",
        "object": "fine_tuning.job.event",
        "created_at": int(e.created_at),
        "level": e.level,
        "message": e.message,
        "data": e.data or {},
        "type": e.type,
    }


def checkpoint_object(job: FtJob, c: FtCheckpoint, verdict: Verdict | None) -> dict[str, Any]:
    metrics: dict[str, Any] = {"step": c.step, "train_loss": c.train_loss}
    if c.eval is not None:
        metrics["holdout_loss"] = c.eval.get("loss")
        metrics["holdout_pass_rate"] = c.eval.get("pass_rate")
    return {
        "id": f"ftckpt-{job.id.removeprefix('ftjob-')}-{c.step}",
        "object": "fine_tuning.job.checkpoint",
        "created_at": int(c.created_at),
        "fine_tuned_model_checkpoint": f"{job.id}:step-{c.step}",
        "fine_tuning_job_id": job.id,
        "step_number": c.step,
        "metrics": metrics,
        "digest": c.digest,
        "gate": None if verdict is None else verdict.to_json(),
    }


def model_object(model_id: str, owner: str, created: float = 0.0) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": int(created), "owned_by": owner}


def promoted_object(m: FtModel) -> dict[str, Any]:
    return model_object(m.id, m.tenant_id, m.updated_at) | {
        "parent": m.base,
        "revision": m.revision,
        "previous_revision": m.previous,
        "job": m.job_id,
        "step": m.step,
    }
