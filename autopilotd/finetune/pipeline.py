"""Following one fine-tuning job (docs/finetune.md): the follow loop of the service
(finetune/service.py) asks `advance` to move each job that has not ended one step on.

- `validating_files`: psionic checks each file against the base model's tokenizer, the
  training tokens are counted against the tenant's quota, and the job goes to psionic
  (`queued`); a file that fails, or a quota spent, fails the job with the reason.
- `queued` and `running`: psionic's new events are recorded in one transaction with what
  they change (steps, checkpoints, evals, the state), numbered as psionic numbered them, so
  a restart asks only for the events after the last one recorded.
- `succeeded`: the best checkpoint past the eval gate is promoted when
  `finetune_auto_promote` is on (never for a network job: its adapter is the buyer's).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from autopilotd.errors import Conflict, NotReady
from autopilotd.finetune.data import summary
from autopilotd.finetune.hyperparameters import DEFAULT_EPOCHS
from autopilotd.finetune.progress import error_object, read_progress
from autopilotd.finetune.promotion import Promotion
from autopilotd.finetune.tenancy import NETWORK_TENANT, QuotaExceeded, Tenancy
from autopilotd.ports.finetune import Receipt, Trainer, TrainerError, TrainEvent, TrainSpec
from autopilotd.runtime.configs import LiveConfig
from autopilotd.runtime.events import EventBus
from autopilotd.store.finetune import FineTuning
from autopilotd.store.finetune_records import FtJob, NewEvent

logger = logging.getLogger(__name__)


class JobPipeline:
    """Moves a job through its states; `wake` asks the follow loop for another pass."""

    def __init__(
        self,
        trainer: Trainer,
        records: FineTuning,
        tenancy: Tenancy,
        promotion: Promotion,
        events: EventBus,
        config: LiveConfig,
        wake: Callable[[], None],
    ) -> None:
        self._trainer = trainer
        self._records = records
        self._tenancy = tenancy
        self._promotion = promotion
        self._events = events
        self._config = config
        self._wake = wake

    async def advance(self, job: FtJob) -> None:
        if job.status == "succeeded":  # its promotion waits for psionic
            await self._auto_promote(job)
            return
        if job.status == "validating_files":
            await self._validate_and_submit(job)
            return
        try:
            if job.cancel_requested:
                await self._trainer.cancel(job.id)
            events = await self._trainer.events(job.id, job.last_seq)
        except TrainerError as exc:
            if exc.status != 404:
                raise
            reason = "psionic has no record of this job any more (was its --train-dir changed?)"
            await self.end(job, "failed", error_object(reason, "trainer_lost_job"))
            return
        if events:
            await self._record(job, events)

    async def _validate_and_submit(self, job: FtJob) -> None:
        cfg = self._config.current
        max_seq_len = int(job.hyperparameters.get("max_seq_len", cfg.finetune_max_seq_len))
        texts: dict[str, str] = {}
        receipts: dict[str, Any] = {}
        for param in ("training_file", "validation_file", "holdout_file"):
            file_id = getattr(job, param)
            if file_id is None:
                continue
            if await self._records.file(file_id) is None:
                reason = f"{param} {file_id} was deleted before the job started"
                await self.end(job, "failed", error_object(reason, "file_not_found", param))
                return
            texts[param] = await self._records.file_content(file_id)
            try:
                receipt = await self._trainer.validate(job.model, texts[param], max_seq_len)
            except TrainerError as exc:
                if exc.unreachable:
                    raise
                await self.end(job, "failed", error_object(exc.message, "invalid_file", param))
                return
            receipts[param] = receipt.to_json() | {"file_id": file_id}
            bad = _refusal(receipt)
            if bad:
                await self._records.update_job(job.id, receipts=receipts)
                await self.end(
                    job, "failed", error_object(f"{param} {file_id}: {bad}", "invalid_file", param)
                )
                return
        epochs = int(job.hyperparameters.get("n_epochs", DEFAULT_EPOCHS))
        tokens = int(receipts["training_file"]["tokens"] or 0) * epochs
        tenant = await self._tenancy.get(job.tenant_id)
        async with self._tenancy.counting:  # the quota's check and the tokens it counts
            try:
                await self._tenancy.check_quota(
                    tenant, "training_tokens", tokens, f"{tokens} tokens"
                )
            except QuotaExceeded as exc:
                await self._records.update_job(job.id, receipts=receipts)
                await self.end(job, "failed", error_object(exc.message, "quota_exceeded"))
                return
            await self._records.update_job(job.id, receipts=receipts, trained_tokens=tokens)
        holdout = texts.get("holdout_file") or texts.get("validation_file")
        hyper = dict(job.hyperparameters) | {"seed": job.seed, "max_seq_len": max_seq_len}
        spec = TrainSpec(
            id=job.id,
            base_model=job.model,
            train=texts["training_file"],
            validation=texts.get("validation_file"),
            holdout=holdout,
            hyperparameters=hyper,
        )
        try:
            await self._trainer.create_job(spec)
        except TrainerError as exc:
            if exc.unreachable:
                raise
            error = error_object(
                f"psionic refused the job: {exc.message}", exc.code or "invalid_job"
            )
            await self.end(job, "failed", error)
            return
        try:
            job = await self._records.update_job(job.id, status="queued")
        except Conflict:  # cancelled while psionic took it: psionic stops it too
            await self._trainer.cancel(job.id)
            return
        self._wake()  # its first events may be there already
        await self.note(
            job, "info", "message", "Files validated; the job is queued", None, "queued"
        )
        self._events.publish(
            "finetune.job_state", job_id=job.id, tenant=job.tenant_id, status="queued"
        )

    async def _record(self, job: FtJob, lines: list[TrainEvent]) -> None:
        """Record the trainer's new lines in one transaction, then announce what changed."""
        progress = read_progress(job.id, job.status, lines)
        if progress.moves:
            progress.fields["status"] = progress.moves[-1]
        promote = (
            "succeeded" in progress.moves
            and self._config.current.finetune_auto_promote
            and job.tenant_id != NETWORK_TENANT  # a network job's adapter is the buyer's product
        )
        if promote:  # recorded with the end, so a restart in between still promotes it
            progress.fields["promotion"] = {
                "state": "waiting",
                "step": None,
                "revision": None,
                "reason": "the best checkpoint that passes the eval gate is being promoted",
            }
        await self._records.add_events(
            job.id,
            progress.events,
            last_seq=max(line.seq for line in lines),
            checkpoints=progress.checkpoints,
            evals=progress.evals,
            **progress.fields,
        )
        for c in progress.checkpoints:
            self._events.publish("finetune.checkpoint", job_id=job.id, step=c.step)
        for moved in progress.moves:
            self._events.publish(
                "finetune.job_state", job_id=job.id, tenant=job.tenant_id, status=moved
            )
        if promote:
            await self._auto_promote(await self._records.job(job.id))

    async def end(self, job: FtJob, status: str, error: dict[str, Any] | None) -> None:
        fields: dict[str, Any] = {"status": status}
        if error is not None:
            fields["error"] = error
        try:
            job = await self._records.update_job(job.id, **fields)
        except Conflict:  # it ended meanwhile (a cancel), and stays as it ended
            return
        level = "error" if status == "failed" else "info"
        message = f"Job failed: {error['message']}" if error else f"Job {status}"
        await self.note(job, level, "message", message, {"status": status}, status)

    async def note(
        self,
        job: FtJob,
        level: str,
        kind: str,
        message: str,
        data: dict[str, Any] | None,
        state: str,
    ) -> None:
        await self._records.add_events(job.id, [NewEvent(level, kind, message, data)])
        if state in ("cancelled", "failed"):
            self._events.publish(
                "finetune.job_state", job_id=job.id, tenant=job.tenant_id, status=state
            )

    async def _auto_promote(self, job: FtJob) -> None:
        """Promote the best checkpoint past the gate (finetune_auto_promote). While psionic
        cannot take it (busy training, or not answering) the promotion waits, and the follow
        loop tries again; a refusal is recorded with its reason (by `Promotion.promote`)."""
        try:
            await self._promotion.promote(None, job.id, None)
        except NotReady as exc:
            waiting = {"state": "waiting", "step": None, "revision": None, "reason": exc.message}
            await self._records.update_job(job.id, promotion=waiting)
        except Conflict as exc:
            logger.info("job %s not promoted: %s", job.id, exc.message)


def _refusal(receipt: Receipt) -> str | None:
    if receipt.rejected:
        return summary(receipt)
    if not receipt.accepted:
        return "it has no examples"
    return None
