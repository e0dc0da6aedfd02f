"""What a running daemon is made of, handed explicitly to commands and services."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from autopilotd.config import Config
from autopilotd.registry import Registry
from autopilotd.runtime.approvals import Approvals
from autopilotd.runtime.conditions import Conditions
from autopilotd.runtime.events import EventBus
from autopilotd.runtime.state import StateStore
from autopilotd.runtime.tokens import TokenBook
from autopilotd.sessionlog import SessionLog
from autopilotd.store import Store
from autopilotd.web.auth import WebAuth

if TYPE_CHECKING:
    from autopilotd.buyer.service import Buyer
    from autopilotd.inference.service import LocalRuntime
    from autopilotd.nostr.identity import NostrIdentity
    from autopilotd.provider.service import Provider
    from autopilotd.wallet.service import Wallet


class Service(Protocol):
    """A long-lived part of the daemon, run under the runtime's TaskGroup.

    `run` calls `ready()` once it is serving, then runs until cancelled. Raising moves the
    service to a visible `failed` state; it is not restarted behind the user's back.
    """

    name: str

    async def run(self, ready: Callable[[], None]) -> None: ...


@dataclass
class Runtime:
    config: Config
    state: StateStore
    events: EventBus
    store: Store
    log: SessionLog
    registry: Registry
    tokens: TokenBook
    approvals: Approvals
    conditions: Conditions
    wallet: Wallet = field(init=False)
    local_runtime: LocalRuntime = field(init=False)
    web_auth: WebAuth = field(default_factory=WebAuth)
    provider: Provider = field(init=False)
    buyer: Buyer = field(init=False)
    identity: NostrIdentity | None = None
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    clock: Callable[[], float] = time.time

    def request_stop(self) -> None:
        self.stop_requested.set()
