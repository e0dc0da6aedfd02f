"""Fine-tuning's states and records (store/finetune.py writes them; finetune/ uses them).

A job moves forward only:

    validating_files → queued → running → succeeded | failed | cancelled

(any state before an end may also end failed or cancelled; `NEXT` says where each may go).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from autopilotd.store.db import Row

ACTIVE = ("validating_files", "queued", "running")
ENDED = ("succeeded", "failed", "cancelled")
NEXT: dict[str, tuple[str, ...]] = {
    "validating_files": ("queued", "running", *ENDED),
    "queued": ("running", *ENDED),
    "running": ENDED,
}


def load_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


@dataclass(frozen=True)
class Tenant:
    id: str
    key_hint: str
    quota_active_jobs: int
    quota_jobs: int
    quota_training_tokens: int
    quota_storage_bytes: int
    created_at: float
    revoked_at: float | None

    COLUMNS = (
        "id, key_hint, quota_active_jobs, quota_jobs, quota_training_tokens, "
        "quota_storage_bytes, created_at, revoked_at"
    )

    @classmethod
    def from_row(cls, r: Row) -> Tenant:
        return cls(*r)

    def quotas(self) -> dict[str, int]:
        return {
            "active_jobs": self.quota_active_jobs,
            "jobs": self.quota_jobs,
            "training_tokens": self.quota_training_tokens,
            "storage_bytes": self.quota_storage_bytes,
        }


@dataclass(frozen=True)
class FtFile:
    id: str
    tenant_id: str
    filename: str
    purpose: str
    bytes: int
    receipt: dict[str, Any]
    created_at: float
    deleted_at: float | None

    COLUMNS = "id, tenant_id, filename, purpose, bytes, receipt, created_at, deleted_at"

    @classmethod
    def from_row(cls, r: Row) -> FtFile:
        return cls(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7])


@dataclass(frozen=True)
class FtJob:
    id: str
    tenant_id: str
    model: str
    training_file: str
    validation_file: str | None
    holdout_file: str | None
    hyperparameters: dict[str, Any]
    suffix: str | None
    seed: int
    status: str
    cancel_requested: bool
    error: dict[str, str] | None
    receipts: dict[str, Any]
    trained_tokens: int
    step: int
    total_steps: int | None
    base_eval: dict[str, Any] | None
    last_seq: int
    fine_tuned_model: str | None
    promotion: dict[str, Any] | None
    created_at: float
    updated_at: float
    finished_at: float | None

    COLUMNS = (
        "id, tenant_id, model, training_file, validation_file, holdout_file, hyperparameters, "
        "suffix, seed, status, cancel_requested, error, receipts, trained_tokens, step, "
        "total_steps, base_eval, last_seq, fine_tuned_model, promotion, created_at, updated_at, "
        "finished_at"
    )

    @classmethod
    def from_row(cls, r: Row) -> FtJob:
        v = list(r)
        for i in (6, 11, 12, 16, 19):
            v[i] = load_json(v[i])
        v[10] = bool(v[10])
        return cls(*v)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


@dataclass(frozen=True)
class FtCheckpoint:
    job_id: str
    step: int
    digest: str
    train_loss: float | None
    eval: dict[str, Any] | None
    created_at: float


@dataclass(frozen=True)
class FtEvent:
    id: int
    job_id: str
    trainer_seq: int | None
    level: str
    type: str
    message: str
    data: dict[str, Any] | None
    created_at: float


@dataclass(frozen=True)
class FtModel:
    id: str
    tenant_id: str
    base: str
    job_id: str
    step: int
    revision: str
    previous: str | None
    evidence: dict[str, Any]
    updated_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant_id,
            "base": self.base,
            "job_id": self.job_id,
            "step": self.step,
            "revision": self.revision,
            "previous": self.previous,
            "evidence": self.evidence,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class NewEvent:
    """An event to record: the trainer's (with its `trainer_seq`) or the daemon's own."""

    level: str
    type: str
    message: str
    data: dict[str, Any] | None = None
    trainer_seq: int | None = None
