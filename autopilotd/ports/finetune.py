"""The trainer port: psionic's training jobs and served adapters, in the daemon's own types.

It mirrors psionic's HTTP API for fine-tuning (/api/train/*, /api/adapters/*; docs/psionic.md
and docs/finetune.md): check a JSONL file against a base model's tokenizer, run a training job,
follow its progress as numbered events, and make a checkpoint's adapter the served revision of
a model id (atomically, the previous revision kept for a rollback). Chat completions for the
tenant API pass through it as they are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol


class TrainerError(Exception):
    """psionic refused or could not be reached; the message says which, for users.

    `status` is psionic's HTTP status (0: no answer) and `code` its error code, if any.
    """

    def __init__(self, message: str, *, status: int = 0, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code

    @property
    def unreachable(self) -> bool:
        return self.status == 0 or self.status >= 500


@dataclass(frozen=True)
class Rejection:
    line: int
    reason: str


@dataclass(frozen=True)
class Receipt:
    """What a check of a JSONL file found: one example per line, and why a line is refused."""

    lines: int
    accepted: int
    rejected: tuple[Rejection, ...] = ()
    tokens: int | None = None  # None: counted without a tokenizer (the daemon's own check)
    assistant_tokens: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "accepted": self.accepted,
            "rejected": [{"line": r.line, "reason": r.reason} for r in self.rejected],
            "tokens": self.tokens,
            "assistant_tokens": self.assistant_tokens,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Receipt:
        return cls(
            lines=int(data["lines"]),
            accepted=int(data["accepted"]),
            rejected=tuple(
                Rejection(int(r["line"]), str(r["reason"])) for r in data.get("rejected", [])
            ),
            tokens=data.get("tokens"),
            assistant_tokens=data.get("assistant_tokens"),
        )


@dataclass(frozen=True)
class EvalResult:
    """Mean loss over the holdout's assistant tokens, and the share of lines that passed."""

    loss: float
    pass_rate: float | None
    n: int


@dataclass(frozen=True)
class TrainCheckpoint:
    step: int
    digest: str
    train_loss: float | None
    eval: EvalResult | None = None


@dataclass(frozen=True)
class TrainJob:
    id: str
    status: str  # queued | running | succeeded | failed | cancelled
    step: int = 0
    total_steps: int | None = None
    error: dict[str, str] | None = None
    base_eval: EvalResult | None = None
    checkpoints: tuple[TrainCheckpoint, ...] = ()


@dataclass(frozen=True)
class TrainEvent:
    """One line of the job's progress log: `type` status | step | checkpoint | eval | export,
    its fields as psionic wrote them in `data`."""

    seq: int
    type: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AdapterRevision:
    id: str
    base: str
    revision: str
    previous: str | None = None
    step: int | None = None
    job: str | None = None


@dataclass(frozen=True)
class AdapterSource:
    """A job's checkpoint to serve as an adapter, and the digest it must have."""

    job: str
    step: int
    digest: str


@dataclass(frozen=True)
class TrainSpec:
    """A training job as psionic runs it: the datasets inline, hyperparameters as given."""

    id: str
    base_model: str
    train: str
    validation: str | None
    holdout: str | None
    hyperparameters: dict[str, Any]


class Trainer(Protocol):
    async def validate(self, base_model: str, jsonl: str, max_seq_len: int) -> Receipt: ...

    async def create_job(self, spec: TrainSpec) -> TrainJob:
        """Start (or, with the same id again, return) a training job."""
        ...

    async def get_job(self, job_id: str) -> TrainJob: ...

    async def events(self, job_id: str, after: int) -> list[TrainEvent]:
        """The job's events with `seq > after`, oldest first."""
        ...

    async def cancel(self, job_id: str) -> TrainJob: ...

    async def put_adapter(
        self,
        model_id: str,
        job: str,
        step: int,
        expect_digest: str | None,
        previous: AdapterSource | None = None,
    ) -> AdapterRevision:
        """Make the job's checkpoint at `step` the served revision of `model_id`. When psionic
        does not serve `model_id` yet (it restarted), `previous` is loaded beside it as the
        revision a rollback goes back to, if it can be (best effort)."""
        ...

    async def rollback_adapter(self, model_id: str) -> AdapterRevision: ...

    async def adapter_archive(self, job_id: str, step: int) -> bytes:
        """The PEFT export of the job's checkpoint at `step`: an uncompressed tar of
        adapter_model.safetensors, adapter_config.json and psionic_adapter.json."""
        ...

    async def delete_adapter(self, model_id: str) -> None: ...

    async def list_adapters(self) -> list[AdapterRevision]: ...

    async def base_models(self) -> list[str]:
        """The chat models psionic serves that are not adapters (what can be fine-tuned)."""
        ...

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/chat/completions with `body`, answered as psionic answered it."""
        ...

    def stream_chat(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        """The same with `stream`: psionic's server-sent event bytes as they come."""
        ...

    async def close(self) -> None:
        """Let go of the connections (the service stops)."""
        ...
