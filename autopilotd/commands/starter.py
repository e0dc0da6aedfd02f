"""starter.* commands: starter demand from a Nexus, as the snapshot's `starter` section has it."""

from __future__ import annotations

from typing import Any

from autopilotd.registry import Registry
from autopilotd.runtime.context import Runtime


def register(reg: Registry, rt: Runtime) -> None:
    @reg.command("starter.status")
    async def starter_status() -> dict[str, Any]:
        """Show starter demand: the Nexus, the session, eligibility and why, the offer held
        with its lease timers, budget left, and starter jobs paid (the wallet's own count)."""
        section: dict[str, Any] = rt.state.current.to_json(rt.clock.now())["starter"]
        return section
