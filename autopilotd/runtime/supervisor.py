"""Runs one service and keeps its lifecycle visible in the Snapshot."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets

from autopilotd.errors import AutopilotError
from autopilotd.runtime.context import Runtime, Service
from autopilotd.runtime.snapshot import ServiceState, ServiceStatus

logger = logging.getLogger(__name__)


def set_service_state(
    rt: Runtime,
    name: str,
    state: ServiceState,
    last_error: str | None = None,
    next_step: str | None = None,
) -> None:
    current = rt.state.current.service(name)
    if current is not None and current.state is state and current.last_error == last_error:
        return
    status = ServiceStatus(name, state, rt.clock(), last_error, next_step)
    rt.state.update(lambda s: dataclasses.replace(s, services=s.with_service(status)))
    rt.events.publish("service.state_changed", service=name, state=state.value, error=last_error)


async def supervise(rt: Runtime, service: Service) -> None:
    """Run `service` to completion, cancellation or failure, reflecting each in the Snapshot.

    A failure is logged with its traceback and shown as `failed` with a reason; it never
    propagates, so one broken service cannot take the daemon (and its control plane) down.
    """
    name = service.name
    set_service_state(rt, name, ServiceState.STARTING)
    try:
        await service.run(lambda: set_service_state(rt, name, ServiceState.RUNNING))
    except asyncio.CancelledError:
        set_service_state(rt, name, ServiceState.STOPPED)
        raise
    except AutopilotError as exc:
        logger.error("service %s failed: %s", name, exc.message)
        set_service_state(rt, name, ServiceState.FAILED, exc.message, _next_step(name))
    except Exception as exc:
        error_id = secrets.token_hex(6)
        logger.exception("service %s crashed [error id %s]", name, error_id)
        set_service_state(
            rt,
            name,
            ServiceState.FAILED,
            f"{type(exc).__name__} (error id {error_id}; details in the session log)",
            _next_step(name),
        )
    else:
        set_service_state(rt, name, ServiceState.STOPPED)


def _next_step(name: str) -> str:
    return f"check 'autopilotctl logs' for the {name} error, then restart autopilotd"
