"""Fine-tuning sold over NIP-90 (kind 5740): the provider's `Work` for it (ports/jobs.py).

A request's datasets and training parameters (nostr/nip90_finetune.py) become a job of the
network's own tenant (finetune/service.py), made once per request id, so a restart of the
provider finds the same job. A dataset sent inline is kept for its buyer (by sha256, once); a
dataset named by digest must be one this buyer sent before: a digest that is not is refused at
intake, before anything runs. The price is `provider_finetune_price_sats` for each started
4 KiB of training data (a dataset named by digest counts its size as kept), per epoch.

The job flow runs `execute` before the invoice (result first, then invoice): it waits until the
training job ends, at most until the request expires (its NIP-40 `expiration`, or the
provider's job ttl from its `created_at`); one still training then is cancelled and the buyer
told `error`. A job that succeeded is the result: the adapter's digest (the chosen checkpoint:
the best past the eval gate, else the last), the eval against the base, and where to fetch the
adapter with a key made for this job now (only its hash is kept); the key opens that job's
adapter, once the job is paid, and nothing else. A network job's adapter is the buyer's
product: it is not promoted into serving here. A job that failed or was cancelled is a
`WorkFailed`, so its buyer gets kind 7000 `error`, never an invoice.
"""

from __future__ import annotations

from autopilotd.errors import AutopilotError
from autopilotd.finetune.service import FinetuneService
from autopilotd.nostr.nip90 import KIND_FINETUNE, JobRequest
from autopilotd.nostr.nip90_finetune import (
    SPLITS,
    FinetuneSpec,
    price_msat,
    result_content,
    spec_from_request,
)
from autopilotd.ports.jobs import WorkFailed
from autopilotd.runtime.clock import Clock
from autopilotd.runtime.configs import LiveConfig
from autopilotd.store.finetune_records import FtJob


class FinetuneWork:
    kinds = frozenset({KIND_FINETUNE})
    needs: tuple[str, ...] = ()

    def __init__(self, service: FinetuneService, config: LiveConfig, clock: Clock) -> None:
        self._service = service
        self._config = config
        self._clock = clock

    def refusal(self) -> str | None:
        why = self._service.unavailable()
        return None if why is None else f"this machine cannot fine-tune now: {why}"

    def min_bid_msat(self) -> int:
        return price_msat(
            self._config.current.provider_finetune_price_sats,
            FinetuneSpec.inline(b"", hyperparameters={"n_epochs": 1}),
        )

    def _held_bytes(self, request: JobRequest, spec: FinetuneSpec) -> int | str:
        """The size of the datasets named by digest, or why one is not this buyer's here."""
        held = 0
        for name in SPLITS:
            if name in spec.digests and spec.data.get(name) is None:
                digest = spec.digests[name]
                size = self._service.holds(request.pubkey, digest)
                if size is None:
                    return (
                        f"dataset {name} sha256:{digest} is not one this buyer sent here: "
                        "send it inline once"
                    )
                held += size
        return held

    def price_msat(self, request: JobRequest) -> int | str:
        spec = spec_from_request(request)
        if isinstance(spec, str):
            return spec
        busy = self._service.network_busy()
        if busy is not None:
            return busy
        held = self._held_bytes(request, spec)
        if isinstance(held, str):
            return held
        return price_msat(self._config.current.provider_finetune_price_sats, spec, held)

    async def execute(self, request: JobRequest) -> str:
        spec = spec_from_request(request)
        if isinstance(spec, str):
            raise WorkFailed(spec)
        try:
            files: dict[str, str] = {}
            for name in SPLITS:
                if name not in spec.digests:
                    continue
                blob = spec.data.get(name)
                if blob is not None:
                    files[name] = await self._service.network_dataset(request.pubkey, name, blob)
                    continue
                held = await self._service.held_dataset(request.pubkey, spec.digests[name])
                if held is None:
                    raise WorkFailed(f"dataset {name} is not one this buyer sent here")
                files[name] = held
            bases = await self._service.base_models()
            model = spec.base_model or (bases[0] if bases else "")
            job = await self._service.create_network_job(
                request_id=request.id,
                buyer_pubkey=request.pubkey,
                model=model,
                training_file=files["train"],
                holdout_file=files.get("holdout"),
                hyperparameters=dict(spec.hyperparameters),
                suffix=spec.suffix,
            )
            left = request.expires_at - self._clock.now()
            job = await self._service.wait_ended(job.id, max(0.0, left))
            if job.status == "succeeded":
                return await self._result(job)
            if job.status not in ("failed", "cancelled"):
                await self._service.cancel(None, job.id)
                raise WorkFailed(
                    f"fine-tuning job {job.id} did not finish before the request expired; "
                    "it is cancelled"
                )
        except AutopilotError as exc:
            raise WorkFailed(f"fine-tuning: {exc.message}") from None
        why = (job.error or {}).get("message")
        raise WorkFailed(f"fine-tuning job {job.id} {job.status}" + (f": {why}" if why else ""))

    async def _result(self, job: FtJob) -> str:
        step = await self._service.chosen_step(job)
        if step is None:
            raise WorkFailed(f"fine-tuning job {job.id} ended without a checkpoint")
        checkpoints = {c.step: c for c in await self._service.records.checkpoints(job.id)}
        url = self._service.api_url
        if url is None:
            raise WorkFailed("the fine-tuning API, where the adapter is fetched, is not listening")
        key = await self._service.fetch_key(job)
        shown = await self._service.job_json(job)
        shown |= {"adapter_digest": checkpoints[step].digest, "adapter_step": step}
        return result_content(shown, f"{url}/fine_tuning/jobs/{job.id}/adapter?step={step}", key)
