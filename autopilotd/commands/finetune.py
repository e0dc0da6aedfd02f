"""finetune.* commands: the owner's side of fine-tuning (finetune/service.py,
docs/finetune.md). Tenants use the tenant API with their keys; the owner uses these."""

from __future__ import annotations

from typing import Annotated, Any

from autopilotd.codec import Bounds
from autopilotd.finetune.objects import checkpoint_object, event_object
from autopilotd.finetune.service import FinetuneService
from autopilotd.registry import Registry
from autopilotd.runtime.context import Runtime

JobId = Annotated[str, Bounds(max_length=64)]
TenantId = Annotated[str, Bounds(max_length=32)]
SomeTenant = Annotated[str | None, Bounds(max_length=32)]
ModelId = Annotated[str, Bounds(max_length=300)]
Quota = Annotated[int | None, Bounds(minimum=0)]


def register(reg: Registry, rt: Runtime, finetune: FinetuneService) -> None:
    @reg.command("finetune.status")
    async def finetune_status() -> dict[str, Any]:
        """Show fine-tuning: the tenant API's address, whether the trainer (psionic) answers,
        the number of tenants, jobs by status, recent jobs and the promoted models."""
        section: dict[str, Any] = rt.state.current.to_json(rt.clock.now())["finetune"]
        return section

    @reg.command("finetune.tenant.create", access="owner")
    async def finetune_tenant_create(
        tenant: TenantId,
        active_jobs: Quota = None,
        jobs: Quota = None,
        training_tokens: Quota = None,
        storage_bytes: Quota = None,
    ) -> dict[str, Any]:
        """Create a tenant of the fine-tuning API and its API key. The key is shown this once
        (only its hash is kept): hand it to the tenant. Quotas left out are the
        finetune_quota_* settings."""
        made, key = await finetune.create_tenant(
            tenant,
            {
                "active_jobs": active_jobs,
                "jobs": jobs,
                "training_tokens": training_tokens,
                "storage_bytes": storage_bytes,
            },
        )
        return {"tenant": made.id, "api_key": key, "quotas": made.quotas()}

    @reg.command("finetune.tenant.list")
    async def finetune_tenant_list() -> dict[str, Any]:
        """List tenants: the start of each key (never the key), quotas and what is used."""
        return {"tenants": await finetune.tenancy.listing()}

    @reg.command("finetune.tenant.revoke", access="owner")
    async def finetune_tenant_revoke(tenant: TenantId) -> dict[str, Any]:
        """Revoke a tenant's key: every call with it is refused from now on. Its files, jobs
        and models stay; a job running now runs to its end."""
        revoked = await finetune.revoke(tenant)
        return {"tenant": revoked.id, "revoked_at": revoked.revoked_at}

    @reg.command("finetune.quota.set", access="control")
    async def finetune_quota_set(
        tenant: TenantId,
        active_jobs: Quota = None,
        jobs: Quota = None,
        training_tokens: Quota = None,
        storage_bytes: Quota = None,
    ) -> dict[str, Any]:
        """Change a tenant's quotas (those given): jobs at once, jobs in all, training tokens
        in all (examples' tokens times epochs) and bytes of files kept."""
        changed = await finetune.set_quotas(
            tenant,
            {
                "active_jobs": active_jobs,
                "jobs": jobs,
                "training_tokens": training_tokens,
                "storage_bytes": storage_bytes,
            },
        )
        return {"tenant": changed.id, "quotas": changed.quotas()}

    @reg.command("finetune.jobs")
    async def finetune_jobs(
        tenant: SomeTenant = None, limit: Annotated[int, Bounds(1, 500)] = 50
    ) -> dict[str, Any]:
        """List fine-tuning jobs of every tenant (or one), newest first."""
        jobs = await finetune.records.jobs(tenant, limit=limit)
        return {"jobs": [await finetune.job_json(j) for j in jobs]}

    @reg.command("finetune.job")
    async def finetune_job(job_id: JobId) -> dict[str, Any]:
        """Show one job: its state, receipts, eval results (the base and each checkpoint,
        with the gate's verdict), promotion, checkpoints, promotion log, the training loss
        of each step ([step, loss], the last value of a step that was redone) and events."""
        job = await finetune.tenancy.job(None, job_id)
        verdicts = {v.step: v for v in await finetune.promotion.verdicts(job)}
        shown = await finetune.job_json(job)
        shown["checkpoints"] = [
            checkpoint_object(job, c, verdicts.get(c.step))
            for c in await finetune.records.checkpoints(job.id)
        ]
        shown["promotions"] = await finetune.records.promotions(job.id)
        shown["losses"] = [list(p) for p in await finetune.records.losses(job.id)]
        shown["events"] = [
            event_object(e) for e in await finetune.records.events(job.id, limit=1000)
        ]
        return shown

    @reg.command("finetune.cancel", access="control")
    async def finetune_cancel(job_id: JobId) -> dict[str, Any]:
        """Cancel a job that has not ended; psionic stops it at its next step."""
        return await finetune.job_json(await finetune.cancel(None, job_id))

    @reg.command("finetune.promote", access="control")
    async def finetune_promote(
        job_id: JobId, step: Annotated[int | None, Bounds(minimum=1)] = None
    ) -> dict[str, Any]:
        """Serve a job's checkpoint (`step`, or the best one) as the job's model, if it passes
        the eval gate (its holdout loss beats the base's by finetune_gate_margin and its pass
        rate is not below the base's). A refusal says why and is recorded."""
        model = await finetune.promote(None, job_id, step)
        return model.to_json()

    @reg.command("finetune.rollback", access="control")
    async def finetune_rollback(model: ModelId) -> dict[str, Any]:
        """Serve a promoted model's previous revision again."""
        return (await finetune.rollback(None, model)).to_json()

    @reg.command("finetune.models")
    async def finetune_models(tenant: SomeTenant = None) -> dict[str, Any]:
        """List promoted models: revision, previous revision, job, step and the evidence."""
        return {"models": [m.to_json() for m in await finetune.records.models(tenant)]}
