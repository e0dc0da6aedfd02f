"""Runs each service and keeps its lifecycle visible in the snapshot's `services` rows."""

from __future__ import annotations

import asyncio
import logging
import secrets

from autopilotd.errors import AutopilotError
from autopilotd.runtime.clock import Clock
from autopilotd.runtime.context import Service
from autopilotd.runtime.events import EventBus
from autopilotd.runtime.sections import ServiceState, ServiceStatus
from autopilotd.runtime.state import SectionWriter

logger = logging.getLogger(__name__)


class Supervisor:
    """The one writer of the `services` section."""

    def __init__(
        self, writer: SectionWriter[tuple[ServiceStatus, ...]], events: EventBus, clock: Clock
    ) -> None:
        self._writer = writer
        self._events = events
        self._clock = clock

    def status(self, name: str) -> ServiceStatus | None:
        return next((s for s in self._writer.current if s.name == name), None)

    def set_state(
        self,
        name: str,
        state: ServiceState,
        last_error: str | None = None,
        next_step: str | None = None,
    ) -> None:
        current = self.status(name)
        if current is not None and current.state is state and current.last_error == last_error:
            return
        status = ServiceStatus(name, state, self._clock.now(), last_error, next_step)
        others = [s for s in self._writer.current if s.name != name]
        self._writer.put(tuple(sorted([*others, status], key=lambda s: s.name)))
        self._events.publish(
            "service.state_changed", service=name, state=state.value, error=last_error
        )

    async def supervise(self, service: Service) -> None:
        """Run `service` to completion, cancellation or failure, reflecting each in the snapshot.

        A failure is logged with its traceback and shown as `failed` with a reason; it never
        propagates, so one broken service cannot take the daemon (and its control plane) down.
        """
        name = service.name
        self.set_state(name, ServiceState.STARTING)
        try:
            await service.run(lambda: self.set_state(name, ServiceState.RUNNING))
        except asyncio.CancelledError:
            self.set_state(name, ServiceState.STOPPED)
            raise
        except AutopilotError as exc:
            logger.error("service %s failed: %s", name, exc.message)
            self.set_state(name, ServiceState.FAILED, exc.message, _next_step(name))
        except Exception as exc:
            error_id = secrets.token_hex(6)
            logger.exception("service %s crashed [error id %s]", name, error_id)
            self.set_state(
                name,
                ServiceState.FAILED,
                f"{type(exc).__name__} (error id {error_id}; details in the session log)",
                _next_step(name),
            )
        else:
            self.set_state(name, ServiceState.STOPPED)


def _next_step(name: str) -> str:
    return f"check 'autopilotctl logs' for the {name} error, then restart autopilotd"
