"""Promotion, rollback and re-serving of fine-tuned models (docs/finetune.md).

A checkpoint becomes a served model only past the eval gate (finetune/gate.py): promotion makes
it the active revision of the job's model id on psionic, atomically there, and records it with
its evidence; a refusal is recorded with its reason too. Rollback serves the previous revision
psionic keeps. psionic keeps adapters in memory only, so after it restarts `reserve` loads each
promoted model again at its recorded revision, with the previous revision beside it (so a
rollback still has where to go). One swap at a time: a promotion, a rollback or a
re-serve pass never interleaves with another.
"""

from __future__ import annotations

import asyncio
import time

from autopilotd.errors import Conflict, NotFound, NotReady
from autopilotd.finetune import gate
from autopilotd.finetune.tenancy import Tenancy
from autopilotd.ports.finetune import AdapterSource, Trainer, TrainerError
from autopilotd.runtime.configs import LiveConfig
from autopilotd.runtime.events import EventBus
from autopilotd.store.finetune import FineTuning
from autopilotd.store.finetune_records import FtJob, FtModel, Tenant


def model_id(job: FtJob) -> str:
    """The model id a job's adapter is served as."""
    return f"ft:{job.model}:{job.tenant_id}:{job.suffix or job.id.removeprefix('ftjob-')[:8]}"


class Promotion:
    def __init__(
        self,
        trainer: Trainer,
        records: FineTuning,
        tenancy: Tenancy,
        events: EventBus,
        config: LiveConfig,
    ) -> None:
        self._trainer = trainer
        self._records = records
        self._tenancy = tenancy
        self._events = events
        self._config = config
        self._swapping = asyncio.Lock()  # one promotion, rollback or re-serve pass at a time

    async def verdicts(self, job: FtJob) -> list[gate.Verdict]:
        """The eval gate's verdict on each of the job's checkpoints."""
        return gate.judge_all(
            job.base_eval,
            await self._records.checkpoints(job.id),
            self._config.current.finetune_gate_margin,
        )

    async def promote(self, tenant: Tenant | None, job_id: str, step: int | None) -> FtModel:
        """Make a checkpoint of the job (`step`, or the best that passes the gate) the served
        revision of the job's model id, if it passes the eval gate; a refusal is recorded."""
        async with self._swapping:
            return await self._promote(await self._tenancy.job(tenant, job_id), step)

    async def _promote(self, job: FtJob, step: int | None) -> FtModel:
        verdicts = await self.verdicts(job)
        served_as = model_id(job)
        if not verdicts:
            reason = "the job has no checkpoint yet"
            await self._records.refused(job, served_as, step, reason, {})
            raise Conflict(reason, data={"code": "promotion_refused", "param": "step"})
        chosen = (
            gate.best(verdicts)
            if step is None
            else next((v for v in verdicts if v.step == step), None)
        )
        if chosen is None and step is not None:
            raise NotFound(
                f"job {job.id} has no checkpoint at step {step}",
                data={"code": "checkpoint_not_found", "param": "step"},
            )
        evidence = {
            "base": job.base_eval,
            "margin": self._config.current.finetune_gate_margin,
            "checkpoints": [v.to_json() for v in verdicts],
        }
        if chosen is None or not chosen.promotable:
            reason = (
                "no checkpoint passes the eval gate: "
                + "; ".join(f"step {v.step}: {v.reason}" for v in verdicts)
                if chosen is None
                else f"step {chosen.step} does not pass the eval gate: {chosen.reason}"
            )
            await self._records.refused(
                job, served_as, None if chosen is None else chosen.step, reason, evidence
            )
            self._events.publish("finetune.promotion_refused", job_id=job.id, reason=reason)
            raise Conflict(reason, data={"code": "promotion_refused", "param": "step"})
        checkpoint = next(
            c for c in await self._records.checkpoints(job.id) if c.step == chosen.step
        )
        try:
            revision = await self._trainer.put_adapter(
                served_as, job.id, chosen.step, checkpoint.digest
            )
        except TrainerError as exc:
            if exc.unreachable:
                raise NotReady(f"the trainer (psionic) did not answer: {exc.message}") from None
            if exc.status == 423:  # the swap lock: a training job runs; try again after it
                raise NotReady(f"psionic cannot swap models now: {exc.message}") from None
            reason = f"psionic refused the adapter: {exc.message}"
            await self._records.refused(job, served_as, chosen.step, reason, evidence)
            raise Conflict(reason, data={"code": "promotion_refused", "param": "step"}) from None
        model = FtModel(
            id=served_as,
            tenant_id=job.tenant_id,
            base=job.model,
            job_id=job.id,
            step=chosen.step,
            revision=revision.revision,
            previous=revision.previous,
            evidence=evidence | {"chosen": chosen.to_json()},
            updated_at=time.time(),
        )
        await self._records.promoted(model, action="promoted", reason=chosen.reason)
        self._events.publish(
            "finetune.promoted",
            model=served_as,
            job_id=job.id,
            step=chosen.step,
            revision=revision.revision,
        )
        return model

    async def reserve(self) -> str | None:
        """Serve every promoted model at its recorded revision again where psionic does not.
        Each is loaded again from its job's export, the digest checked. Returns what could
        not be; raises TrainerError when psionic does not answer."""
        troubles: list[str] = []
        async with self._swapping:
            models = await self._records.models()
            if not models:
                return None
            served = {a.id: a.revision for a in await self._trainer.list_adapters()}
            for model in models:
                if served.get(model.id) == model.revision:
                    continue
                try:
                    await self._trainer.put_adapter(
                        model.id,
                        model.job_id,
                        model.step,
                        model.revision,
                        await self._previous(model),
                    )
                except TrainerError as exc:
                    if exc.unreachable:
                        raise
                    troubles.append(f"{model.id} is not served: {exc.message}")
                    continue
                self._events.publish(
                    "finetune.reserved", model=model.id, revision=model.revision, step=model.step
                )
        return "; ".join(troubles) or None

    async def _previous(self, model: FtModel) -> AdapterSource | None:
        """The revision a rollback of `model` goes back to, as its promotion recorded it."""
        if model.previous is None:
            return None
        found = await self._records.promoted_as(model.id, model.previous)
        return None if found is None else AdapterSource(found[0], found[1], model.previous)

    async def rollback(self, tenant: Tenant | None, served_as: str) -> FtModel:
        """Serve the model's previous revision again (psionic keeps one)."""
        async with self._swapping:
            return await self._rollback(tenant, served_as)

    async def _rollback(self, tenant: Tenant | None, served_as: str) -> FtModel:
        model = await self._records.model(served_as)
        if model is None or (tenant is not None and model.tenant_id != tenant.id):
            raise NotFound(
                f"no promoted model {served_as!r}",
                data={"code": "model_not_found", "param": "model"},
            )
        try:
            revision = await self._trainer.rollback_adapter(served_as)
        except TrainerError as exc:
            if exc.unreachable:
                raise NotReady(f"the trainer (psionic) did not answer: {exc.message}") from None
            raise Conflict(f"cannot roll {served_as} back: {exc.message}") from None
        job_id, step = await self._records.promoted_as(served_as, revision.revision) or (
            revision.job or model.job_id,
            model.step if revision.step is None else int(revision.step),
        )
        back = FtModel(
            id=served_as,
            tenant_id=model.tenant_id,
            base=model.base,
            job_id=job_id,
            step=step,
            revision=revision.revision,
            previous=revision.previous,
            evidence=model.evidence | {"rolled_back_from": model.revision},
            updated_at=time.time(),
        )
        await self._records.promoted(
            back, action="rolled_back", reason=f"rolled back from {model.revision[:12]}"
        )
        self._events.publish("finetune.rolled_back", model=served_as, revision=revision.revision)
        return back
