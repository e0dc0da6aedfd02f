"""sync.* commands: history kept on the user's relays (sync/service.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from autopilotd.codec import Bounds
from autopilotd.registry import Registry
from autopilotd.runtime.context import Runtime
from autopilotd.sync.service import SyncService


def register(reg: Registry, rt: Runtime, sync: SyncService) -> None:
    @reg.command("sync.status")
    async def sync_status() -> dict[str, Any]:
        """Show history sync: records held, restored jobs and requests, and each relay's last
        reconciliation (have = ours it lacked, need = its we lacked, uploaded, fetched)."""
        section: dict[str, Any] = rt.state.current.to_json(rt.clock.now())["sync"]
        return section

    @reg.command("sync.now", access="owner")
    async def sync_now() -> dict[str, Any]:
        """Reconcile history with every connected relay now; returns each relay's round. Asked
        while the daemon is starting, it waits for history sync to start."""
        rows = await sync.reconcile_now()
        return {"relays": [r.to_json() for r in rows]}

    @reg.command("sync.history")
    async def sync_history(
        limit: Annotated[int, Bounds(1, 1000)] = 50,
        type: Literal["job", "buy", "pay"] | None = None,
    ) -> dict[str, Any]:
        """Jobs, buy requests and wallet payments as all their history records say they are
        now, newest first. `restored` marks one this daemon has no row of its own for (it came
        from a relay): restored history is never counted as earnings or balance."""
        return {"items": await sync.history(limit, type)}
