"""The fine-tuning service (docs/finetune.md): jobs followed through the trainer port
(psionic), each moved on by its `pipeline` (finetune/pipeline.py); tenants, keys, quotas,
files and who owns what are its `tenancy` (finetune/tenancy.py), the eval gate, promotion and
rollback its `promotion` (finetune/promotion.py), a tenant's models and chat its `serving`
(finetune/serving.py), the tenant API its listener (finetune/api.py).

A job is a row (store/finetune.py) from the moment it is asked for. One loop, a task of this
service's TaskGroup, moves every job that has not ended: `validating_files` (psionic checks
each file against the base model's tokenizer; the training tokens are counted against the
tenant's quota) → `queued` (psionic has it) → `running` → `succeeded | failed | cancelled`,
recording the trainer's events with their own numbers. After a restart the loop finds the same
rows and asks psionic only for the events after the last one recorded: nothing is lost and no
event is recorded twice (psionic resumes an interrupted job itself).

A checkpoint becomes a served model only past the eval gate, by promotion
(finetune/promotion.py), which the loop also asks to serve the promoted models again after
psionic restarts. Owns the snapshot's `finetune` section.

Jobs sold over NIP-90 (finetune/nip90.py) belong to the network's own tenant: one per request
id, the datasets kept per buyer by sha256, and a fetch key per job (only its hash kept) that
opens that job's adapter once the provider's job is paid. They are not promoted by themselves:
the adapter is the buyer's product.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from autopilotd.errors import (
    AuthFailed,
    Conflict,
    NotFound,
    NotReady,
    UserError,
)
from autopilotd.finetune import gate
from autopilotd.finetune.hyperparameters import check_hyperparameters
from autopilotd.finetune.objects import job_object
from autopilotd.finetune.pipeline import JobPipeline
from autopilotd.finetune.promotion import Promotion
from autopilotd.finetune.serving import TenantModels
from autopilotd.finetune.tenancy import (
    NETWORK_TENANT,
    PURPOSE,
    Tenancy,
    key_hash,
)
from autopilotd.ports.finetune import Trainer, TrainerError
from autopilotd.runtime.configs import LiveConfig
from autopilotd.runtime.events import EventBus
from autopilotd.runtime.sections import FinetuneSection
from autopilotd.runtime.state import SectionWriter
from autopilotd.store.finetune import FineTuning
from autopilotd.store.finetune_records import ENDED, FtJob, FtModel, Tenant

logger = logging.getLogger(__name__)

RECENT = 10
FETCH_KEY_PREFIX = "ftk-"
SUFFIX = re.compile(r"[A-Za-z0-9_-]{1,40}")


class FinetuneService:
    name = "finetune"

    def __init__(
        self,
        *,
        trainer: Trainer,
        records: FineTuning,
        writer: SectionWriter[FinetuneSection],
        events: EventBus,
        config: LiveConfig,
        job_paid: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self._trainer = trainer
        self._job_paid = job_paid
        self._datasets: dict[tuple[str, str], int] | None = None  # (buyer, sha256) → bytes
        self._changed = asyncio.Event()
        self._trouble: str | None = None  # why the last pass could not follow every job
        # The network tenant's room (jobs sold over NIP-90), as of the last change: its jobs
        # quota spent withdraws the kind; its active jobs taken refuses requests meanwhile.
        self._network_spent: str | None = None
        self._network_busy: str | None = None
        self.api_url: str | None = None
        self.records = records
        self._writer = writer
        self._events = events
        self._config = config
        self._wake = asyncio.Event()
        self.tenancy = Tenancy(records, events, config)
        self.promotion = Promotion(trainer, records, self.tenancy, events, config)
        self.pipeline = JobPipeline(
            trainer, records, self.tenancy, self.promotion, events, config, self._wake.set
        )
        self.serving = TenantModels(trainer, records)

    # -- the service ---------------------------------------------------------------------

    async def run(self, ready: Callable[[], None]) -> None:
        self._datasets = await self.records.datasets()
        await self._show()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._follow(), name="finetune follow")
                ready()
        finally:
            await self._trainer.close()

    async def _follow(self) -> None:
        """Move every job that has not ended, then wait for a new one or the next poll. A
        pass that had no job to move and found no new trouble leaves the snapshot as it was
        (whatever else changes it shows itself)."""
        while True:
            self._wake.clear()
            trouble: str | None = None
            jobs = await self.records.active_jobs() + await self.records.waiting_jobs()
            for job in jobs:
                try:
                    await self.pipeline.advance(job)
                except TrainerError as exc:
                    trouble = f"the trainer (psionic) did not answer: {exc.message}"
                except Exception:
                    logger.exception("fine-tuning job %s", job.id)
                    trouble = f"internal error following {job.id} (see the daemon's log)"
            try:
                trouble = await self.promotion.reserve() or trouble
            except TrainerError as exc:
                trouble = f"the trainer (psionic) did not answer: {exc.message}"
            if jobs or trouble != self._trouble or self._writer.current.state == "starting":
                self._trouble = trouble
                self._writer.set(
                    state="degraded" if trouble else "ready",
                    reason=trouble or "following fine-tuning jobs",
                    last_error=trouble,
                )
                await self._show()
            try:
                async with asyncio.timeout(self._config.current.finetune_poll_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def api_listening(self, url: str | None) -> None:
        """The tenant API's address (its listener says so once it is bound)."""
        self.api_url = url
        self._writer.set(api_url=url)

    def unavailable(self) -> str | None:
        """Why this machine cannot take a fine-tuning job now (sold over NIP-90), or None."""
        if self._config.current.runtime_mode == "off":
            return "fine-tuning needs the local runtime (runtime_mode), and it is off"
        if self._datasets is None:
            return "the fine-tuning service is starting"
        if self.api_url is None:
            return "the fine-tuning API, where an adapter is fetched, is not listening"
        return self._trouble or self._network_spent

    def network_busy(self) -> str | None:
        """Why the network's tenant cannot start another job now (its active jobs quota is
        taken), or None: a request is refused at intake, not failed once accepted."""
        return self._network_busy

    async def base_models(self) -> list[str]:
        try:
            return await self._trainer.base_models()
        except TrainerError as exc:
            raise NotReady(f"the trainer (psionic) did not answer: {exc.message}") from None

    # -- tenants (finetune/tenancy.py), where the snapshot shows a change ------------------

    async def create_tenant(
        self, tenant_id: str, quotas: Mapping[str, int | None] | None = None
    ) -> tuple[Tenant, str]:
        """A new tenant and its API key (returned this once; only its hash is kept)."""
        made = await self.tenancy.create(tenant_id, quotas)
        await self._show()
        return made

    async def set_quotas(self, tenant_id: str, quotas: Mapping[str, int | None]) -> Tenant:
        changed = await self.tenancy.set_quotas(tenant_id, quotas)
        await self._show()
        return changed

    async def revoke(self, tenant_id: str) -> Tenant:
        """Revoke the tenant's key: every call with it is refused from now on. Its files,
        jobs and models stay (a running job runs to its end)."""
        revoked = await self.tenancy.revoke(tenant_id)
        await self._show()
        return revoked

    # -- jobs ----------------------------------------------------------------------------

    async def create_job(
        self,
        tenant: Tenant,
        *,
        model: str,
        training_file: str,
        validation_file: str | None = None,
        holdout_file: str | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        suffix: str | None = None,
        seed: int | None = None,
        network: tuple[str, str] | None = None,
    ) -> FtJob:
        """Ask for a fine-tuning job; it starts `validating_files` and the loop takes it on.
        `network`: the NIP-90 request (id, buyer) it is made for, recorded with it."""
        if suffix is not None and not SUFFIX.fullmatch(suffix):
            raise UserError(
                "suffix must be 1 to 40 of A-Z, a-z, 0-9, _ and -",
                data={"code": "invalid_suffix", "param": "suffix"},
            )
        hyper = check_hyperparameters(hyperparameters or {})
        files = {"training_file": training_file, "validation_file": validation_file}
        files["holdout_file"] = holdout_file
        for param, file_id in files.items():
            if file_id is not None:
                found = await self.tenancy.file(tenant, file_id, param)
                if found.purpose != PURPOSE:
                    raise UserError(
                        f"file {file_id} has purpose {found.purpose!r}, not {PURPOSE!r}",
                        data={"code": "invalid_file_purpose", "param": param},
                    )
        try:
            bases = await self._trainer.base_models()
        except TrainerError as exc:
            raise NotReady(f"the trainer (psionic) did not answer: {exc.message}") from None
        if model not in bases:
            raise UserError(
                f"model {model!r} cannot be fine-tuned here; base models: "
                f"{', '.join(bases) or 'none is loaded'}",
                data={"code": "model_not_available", "param": "model"},
            )
        async with self.tenancy.counting:  # the quotas' check and the new row, at once
            await self.tenancy.check_quota(tenant, "active_jobs", 1, "another active job")
            await self.tenancy.check_quota(tenant, "jobs", 1, "another job")
            job = await self.records.add_job(
                {
                    "id": "ftjob-" + secrets.token_hex(12),
                    "tenant_id": tenant.id,
                    "model": model,
                    "training_file": training_file,
                    "validation_file": validation_file,
                    "holdout_file": holdout_file,
                    "hyperparameters": hyper,
                    "suffix": suffix,
                    "seed": secrets.randbelow(2**31) if seed is None else seed,
                },
                network,
            )
        await self.pipeline.note(
            job, "info", "message", "Validating training file", None, "created"
        )
        self._events.publish(
            "finetune.job_state", job_id=job.id, tenant=tenant.id, status=job.status
        )
        self._wake.set()
        await self._show()
        return await self.records.job(job.id)

    # -- jobs sold over NIP-90 (finetune/nip90.py), for the network's own tenant -----------

    def holds(self, buyer_pubkey: str, sha256: str) -> int | None:
        """The size of the dataset with this digest that this buyer sent, if it is kept here
        (None: it is not, or the service is starting, when `unavailable` says so). Cheap: for
        pricing a request at intake."""
        return None if self._datasets is None else self._datasets.get((buyer_pubkey, sha256))

    async def network_dataset(self, buyer_pubkey: str, name: str, data: bytes) -> str:
        """Keep a dataset a buyer sent inline (once per buyer and digest), for the network's
        tenant; its file id. Raises UserError for a file that fails the check."""
        digest = hashlib.sha256(data).hexdigest()
        found = await self.records.dataset(buyer_pubkey, digest)
        if found is not None:
            return found
        tenant = await self.tenancy.network()
        kept = await self.tenancy.upload(tenant, f"{name}.jsonl", PURPOSE, data)
        await self.records.add_dataset(buyer_pubkey, digest, kept.id)
        if self._datasets is not None:
            self._datasets[(buyer_pubkey, digest)] = kept.bytes
        return kept.id

    async def held_dataset(self, buyer_pubkey: str, sha256: str) -> str | None:
        """The file id of a dataset this buyer sent before, by digest."""
        return await self.records.dataset(buyer_pubkey, sha256)

    async def create_network_job(
        self,
        *,
        request_id: str,
        buyer_pubkey: str,
        model: str,
        training_file: str,
        holdout_file: str | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        suffix: str | None = None,
    ) -> FtJob:
        """The job for a NIP-90 request (made once per request id: asked again, after a
        restart, it is the same job), for the network's own tenant, made on first use
        without a key. The files are the tenant's (`network_dataset`)."""
        existing = await self.records.network_job_for(request_id)
        if existing is not None:
            return await self.records.job(existing)
        tenant = await self.tenancy.network()
        return await self.create_job(
            tenant,
            model=model,
            training_file=training_file,
            holdout_file=holdout_file,
            hyperparameters=hyperparameters,
            suffix=suffix,
            network=(request_id, buyer_pubkey),
        )

    async def wait_ended(self, job_id: str, timeout_s: float) -> FtJob:
        """The job once it has ended, or as it is after `timeout_s`."""
        try:
            async with asyncio.timeout(timeout_s):
                while (job := await self.records.job(job_id)).status not in ENDED:
                    await self._changed.wait()
        except TimeoutError:
            job = await self.records.job(job_id)
        return job

    async def chosen_step(self, job: FtJob) -> int | None:
        """The checkpoint a job's adapter is: the promoted one, else the best past the gate,
        else the last (None: the job has no checkpoint)."""
        promotion = job.promotion or {}
        if promotion.get("state") == "promoted" and promotion.get("step") is not None:
            return int(promotion["step"])
        best = gate.best(await self.promotion.verdicts(job))
        if best is not None:
            return best.step
        checkpoints = await self.records.checkpoints(job.id)
        return checkpoints[-1].step if checkpoints else None

    async def fetch_key(self, job: FtJob) -> str:
        """A new key that fetches this network job's adapter and nothing else (shown once,
        in the job's result; only its hash is kept, and a new one replaces it)."""
        key = FETCH_KEY_PREFIX + secrets.token_urlsafe(32)
        await self.records.set_fetch_key(job.id, key_hash(key))
        return key

    async def authorize_fetch(self, job_id: str, key: str) -> FtJob:
        """The job whose adapter `key` fetches, once its NIP-90 job is paid; AuthFailed for a
        key of another job (or none)."""
        found = await self.records.network_job(job_id)
        if found is None or found[2] is None or not hmac.compare_digest(found[2], key_hash(key)):
            raise AuthFailed("Incorrect API key provided")
        if self._job_paid is not None and not await self._job_paid(found[0]):
            raise Conflict(
                "this job's adapter can be fetched once its invoice is paid",
                data={"code": "payment_required", "param": None},
            )
        return await self.records.job(job_id)

    async def adapter_archive(self, job: FtJob, step: int | None) -> tuple[int, bytes]:
        """The job's adapter at `step` (default the chosen checkpoint) as psionic's tar."""
        steps = [c.step for c in await self.records.checkpoints(job.id)]
        chosen = await self.chosen_step(job) if step is None else step
        if chosen is None or chosen not in steps:
            raise NotFound(
                f"job {job.id} has no checkpoint" + ("" if step is None else f" at step {step}"),
                data={"code": "checkpoint_not_found", "param": "step"},
            )
        try:
            return chosen, await self._trainer.adapter_archive(job.id, chosen)
        except TrainerError as exc:
            if exc.unreachable:
                raise NotReady(f"the trainer (psionic) did not answer: {exc.message}") from None
            raise NotFound(
                f"psionic has no export of step {chosen}: {exc.message}",
                data={"code": "checkpoint_not_found", "param": "step"},
            ) from None

    async def cancel(self, tenant: Tenant | None, job_id: str) -> FtJob:
        """Cancel a job that has not ended (psionic stops it at its next step boundary)."""
        job = await self.tenancy.job(tenant, job_id)
        if job.status in ENDED:
            raise Conflict(
                f"job {job_id} has already {job.status}",
                data={"code": "job_ended", "param": None},
            )
        await self.records.update_job(job.id, cancel_requested=1)
        if job.status == "validating_files":
            await self.pipeline.end(job, "cancelled", None)
        else:
            try:
                await self._trainer.cancel(job.id)
            except TrainerError as exc:
                logger.info("cancel of %s waits for the trainer: %s", job.id, exc.message)
        self._wake.set()
        return await self.records.job(job.id)

    async def job_json(self, job: FtJob) -> dict[str, Any]:
        return job_object(job, await self.promotion.verdicts(job))

    # -- promotion (finetune/promotion.py), where the snapshot shows a change --------------

    async def promote(self, tenant: Tenant | None, job_id: str, step: int | None) -> FtModel:
        """Make a checkpoint of the job (`step`, or the best that passes the gate) the served
        revision of the job's model id, if it passes the eval gate; a refusal is recorded."""
        try:
            return await self.promotion.promote(tenant, job_id, step)
        finally:
            await self._show()

    async def rollback(self, tenant: Tenant | None, model_id: str) -> FtModel:
        """Serve the model's previous revision again (psionic keeps one)."""
        try:
            return await self.promotion.rollback(tenant, model_id)
        finally:
            await self._show()

    async def _network_room(self) -> None:
        tenant = await self.records.tenant(NETWORK_TENANT)
        if tenant is None:
            self._network_spent = self._network_busy = None
            return
        used, limit = await self.records.usage(tenant.id), tenant.quotas()
        self._network_spent = (
            f"every one of the {limit['jobs']} fine-tuning jobs the network tenant's quota "
            "allows has been sold (finetune.quota.set --tenant network raises it)"
            if used["jobs"] >= limit["jobs"]
            else None
        )
        self._network_busy = (
            f"busy: {used['active_jobs']} fine-tuning job(s) for the network already running "
            f"(its quota: {limit['active_jobs']} at once); ask again later"
            if used["active_jobs"] >= limit["active_jobs"]
            else None
        )

    # -- the snapshot --------------------------------------------------------------------

    async def _show(self) -> None:
        await self._network_room()
        recent = await self.records.jobs(limit=RECENT)
        self._writer.set(
            tenants=len([t for t in await self.records.tenants() if t.id != NETWORK_TENANT]),
            counts=await self.records.counts(),
            jobs=tuple(
                {
                    "id": j.id,
                    "tenant": j.tenant_id,
                    "model": j.model,
                    "status": j.status,
                    "step": j.step,
                    "total_steps": j.total_steps,
                    "fine_tuned_model": j.fine_tuned_model,
                    "promotion": j.promotion,
                    "created_at": j.created_at,
                }
                for j in recent
            ),
            models=tuple(
                {k: v for k, v in m.to_json().items() if k != "evidence"}
                for m in await self.records.models()
            ),
        )
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
