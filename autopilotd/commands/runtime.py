"""runtime.* commands: the local runtime's status, and warming or unloading a model."""

from __future__ import annotations

from typing import Any

from autopilotd.errors import NotReady, UserError
from autopilotd.inference.service import LocalRuntime
from autopilotd.ports.inference import InferenceError
from autopilotd.registry import Registry
from autopilotd.runtime.context import Runtime


def register(reg: Registry, rt: Runtime, local: LocalRuntime) -> None:
    @reg.command("runtime.status")
    async def runtime_status() -> dict[str, Any]:
        """Show the local inference runtime: state, models (warm or cold), device, dtype, errors."""
        section: dict[str, Any] = rt.state.current.to_json(rt.clock.now())["local_runtime"]
        return section

    @reg.command("runtime.warm", access="control")
    async def runtime_warm(model: str) -> dict[str, Any]:
        """Load a model into memory now, so the first job does not wait for it."""
        await _call(local.warm, model)
        return {"model": model, "warm": True}

    @reg.command("runtime.unload", access="control")
    async def runtime_unload(model: str) -> dict[str, Any]:
        """Free a model's memory; the next job that needs it loads it again."""
        await _call(local.unload, model)
        return {"model": model, "warm": False}

    async def _call(action: Any, model: str) -> None:
        if local.client is None:
            raise NotReady(f"the local runtime is {local.section().state.value}")
        try:
            await action(model)
        except InferenceError as exc:
            raise UserError(exc.reason) from None
