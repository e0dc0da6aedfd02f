"""Sandbox jobs sold over NIP-90 (kind 5720): the provider's `Work` for them (ports/jobs.py).

A request's files, entry, runtime, arguments and limits (nostr/nip90_sandbox.py) become a
sandbox job of origin `nip90`, run like any other (sandbox/service.py); its end becomes the
result. The price depends on the limits asked (`provider_sandbox_price_sats` for each started
10 CPU-seconds, doubled for each started 512 MiB of address space beyond the first). A limit
above the provider's setting, or a file path that could not go into a workspace, refuses the
request at intake, before anything runs.
"""

from __future__ import annotations

from autopilotd.errors import AutopilotError
from autopilotd.nostr.nip90 import KIND_SANDBOX, JobRequest
from autopilotd.nostr.nip90_sandbox import (
    INLINE_ARTIFACT,
    SandboxSpec,
    price_msat,
    result_content,
    spec_from_request,
)
from autopilotd.ports.jobs import WorkFailed
from autopilotd.ports.sandbox import Limits
from autopilotd.runtime.configs import LiveConfig
from autopilotd.sandbox import workspace
from autopilotd.sandbox.service import SandboxService


class SandboxWork:
    kinds = frozenset({KIND_SANDBOX})
    needs: tuple[str, ...] = ()

    def __init__(self, service: SandboxService, config: LiveConfig) -> None:
        self._service = service
        self._config = config

    def refusal(self) -> str | None:
        why = self._service.unavailable()
        return None if why is None else f"this machine cannot run sandboxed code: {why}"

    def min_bid_msat(self) -> int:
        return price_msat(self._config.current.provider_sandbox_price_sats, 1, 1)

    def _limits(self, spec: SandboxSpec) -> Limits | str:
        try:
            return self._service.limits(spec.limits)
        except AutopilotError as exc:
            return exc.message

    def price_msat(self, request: JobRequest) -> int | str:
        spec = spec_from_request(request)
        if isinstance(spec, str):
            return spec
        for path in spec.files:
            try:
                workspace.clean_path(path)
            except workspace.WorkspaceError as exc:
                return f"file {path!r}: {exc}"
        limits = self._limits(spec)
        if isinstance(limits, str):
            return limits
        base = self._config.current.provider_sandbox_price_sats
        return price_msat(base, limits.cpu_s, limits.memory_mb)

    async def execute(self, request: JobRequest) -> str:
        spec = spec_from_request(request)
        if isinstance(spec, str):
            raise WorkFailed(spec)
        try:
            job = await self._service.run_for_request(
                request.id,
                spec.runtime,
                spec.limits,
                spec.files,
                spec.entry,
                list(spec.args),
            )
            small: dict[str, bytes] = {}
            for art in job.artifacts:
                if art["size"] <= INLINE_ARTIFACT and art["path"] not in spec.files:
                    small[art["path"]], _ = await self._service.download(job.id, art["path"])
        except AutopilotError as exc:
            raise WorkFailed(f"sandbox: {exc.message}") from None
        if job.state == "interrupted":
            raise WorkFailed("the provider restarted while the job ran")
        return result_content(job.to_json(), small)
