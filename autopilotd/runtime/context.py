"""The kernel of a running daemon: what the composition root hands to commands and services.

`Runtime` holds only the kernel's parts: the running configuration, the state store, the
event bus, the store, the registry, the clock, the session log, the credentials and the stop
event. It knows no service: services get their collaborators (as ports) in their own
constructors from the composition root (app.py), and talk through ports, the snapshot and
events, never through this object.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from autopilotd.config import Config
from autopilotd.registry import Registry
from autopilotd.runtime.approvals import Approvals
from autopilotd.runtime.clock import Clock
from autopilotd.runtime.conditions import Conditions, builtin_conditions
from autopilotd.runtime.configs import LiveConfig
from autopilotd.runtime.events import EventBus
from autopilotd.runtime.facts import NEEDS
from autopilotd.runtime.sessionlog import SessionLog
from autopilotd.runtime.state import StateStore
from autopilotd.runtime.tokens import TokenBook
from autopilotd.store import Store


class Service(Protocol):
    """A long-lived part of the daemon, run under the runtime's TaskGroup.

    `run` calls `ready()` once it is serving, then runs until cancelled. Raising moves the
    service to a visible `failed` state; it is not restarted behind the user's back.
    """

    name: str

    async def run(self, ready: Callable[[], None]) -> None: ...


class SnapshotNeeds:
    """The registry's preconditions, read from the snapshot's derived blockers."""

    names = frozenset(NEEDS)

    def __init__(self, state: StateStore) -> None:
        self._state = state

    def unmet(self, need: str) -> tuple[str, str] | None:
        blocker = self._state.current.facts.blocker(need)
        return None if blocker is None else (blocker.reason, blocker.next_step)


@dataclass
class Runtime:
    live: LiveConfig
    state: StateStore
    events: EventBus
    store: Store
    log: SessionLog
    registry: Registry
    clock: Clock
    tokens: TokenBook = field(default_factory=TokenBook)
    approvals: Approvals = field(default_factory=Approvals)
    conditions: Conditions = field(default_factory=builtin_conditions)
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    restart_requested: bool = False

    @property
    def config(self) -> Config:
        """The configuration that runs now."""
        return self.live.current

    def request_stop(self) -> None:
        self.stop_requested.set()

    def request_restart(self) -> None:
        """Stop cleanly, then start again in the same process (settings saved for the next
        start, a restored seed): `autopilotd run` re-executes itself on EXIT_RESTART."""
        self.restart_requested = True
        self.stop_requested.set()
