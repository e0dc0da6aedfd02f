"""provider.* and jobs.* commands: Go Online, Go Offline, job history, identity, milestones."""

from __future__ import annotations

from typing import Annotated, Any

from autopilotd.codec import Bounds
from autopilotd.errors import NotFound
from autopilotd.provider.service import ProviderService
from autopilotd.registry import Registry
from autopilotd.runtime.context import Runtime


def register(reg: Registry, rt: Runtime, provider: ProviderService) -> None:
    @reg.command("provider.online", access="control")
    async def provider_online() -> dict[str, Any]:
        """Go Online: start accepting paid NIP-90 jobs.

        Refuses, naming each blocker and what to do, while the wallet is not ready, no model is
        ready, or no relay is connected. After a restart the daemon is always offline.
        """
        return await provider.presence.go_online()

    @reg.command("provider.offline", access="control")
    async def provider_offline() -> dict[str, Any]:
        """Go Offline: accept no new jobs; jobs already running finish with a visible outcome."""
        return await provider.presence.go_offline()

    @reg.command("provider.status")
    async def provider_status() -> dict[str, Any]:
        """Show the provider's state, blockers, relays, job inbox and earnings."""
        snap = rt.state.current.to_json(rt.clock.now())
        return {k: snap[k] for k in ("provider", "relays", "jobs", "earnings")}

    @reg.command("identity.show", needs={"identity"})
    async def identity_show() -> dict[str, Any]:
        """Show this daemon's Nostr identity (npub and hex), derived from the wallet's words."""
        identity = rt.state.current.identity
        assert identity is not None  # the need holds
        return {"npub": identity.npub, "hex": identity.hex}

    @reg.command("jobs.history")
    async def jobs_history(
        limit: Annotated[int, Bounds(1, 500)] = 50, before: float | None = None
    ) -> dict[str, Any]:
        """List jobs newest first, with stage, price, payment hash and why a job did not pay."""
        rows = await provider.jobs.history(limit=limit, before=before)
        return {
            "jobs": [r.to_json() for r in rows],
            "next_before": rows[-1].received_at if len(rows) == limit else None,
        }

    @reg.command("jobs.get")
    async def jobs_get(request_id: str) -> dict[str, Any]:
        """Show one job by its request event id."""
        job = await provider.jobs.get(request_id)
        if job is None:
            raise NotFound(f"no job for request {request_id}")
        return job.to_json()

    @reg.command("earnings.milestone_seen", access="control")
    async def earnings_milestone_seen(sats: int) -> dict[str, Any]:
        """Mark an earnings milestone (10, 25, 50 or 100 sats) as celebrated, so it shows once.

        Only a milestone the wallet-confirmed earnings have reached can be marked; marking it
        again changes nothing.
        """
        changed = await provider.earnings.mark_seen(sats)
        return {"sats": sats, "celebrated": True, "changed": changed}
