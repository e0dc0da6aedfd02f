"""A plain ldk-node participant for devnet tests: a node, its address and its event stream."""

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autopilotd.devnet.ldk import ChainSource, build_regtest_node, ldk_node_module
from autopilotd.loopback import LOOPBACK, free_port


@dataclass
class Participant:
    """An ldk-node started on loopback, with every event it emitted kept in `events`."""

    node: Any
    node_id: str
    address: str
    events: list[Any] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def call(self, method: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking node call off the event loop."""
        return await asyncio.to_thread(method, *args)

    async def pump_events(self) -> None:
        """Record events and acknowledge each (runs until cancelled)."""
        while True:
            event = await self.node.next_event_async()
            async with self.changed:
                self.events.append(event)
                self.changed.notify_all()
            await asyncio.to_thread(self.node.event_handled)

    async def wait_event(
        self,
        kind: str | tuple[str, ...],
        match: Callable[[Any], bool] = lambda _: True,
        timeout_s: float = 60.0,
    ) -> Any:
        """The first recorded event of `kind` (e.g. "PAYMENT_RECEIVED") that `match`es."""
        kinds = (kind,) if isinstance(kind, str) else kind
        event_type = tuple(getattr(ldk_node_module().Event, k) for k in kinds)

        def found() -> Any:
            return next((e for e in self.events if isinstance(e, event_type) and match(e)), None)

        async with asyncio.timeout(timeout_s), self.changed:
            await self.changed.wait_for(lambda: found() is not None)
            return found()

    async def lightning_sats(self) -> int:
        balances = await self.call(self.node.list_balances)
        return int(balances.total_lightning_balance_sats)

    async def onchain_address(self) -> str:
        return str(await self.call(lambda: self.node.onchain_payment().new_address()))


@asynccontextmanager
async def running_participant(
    storage_dir: Path, chain: ChainSource, alias: str
) -> AsyncIterator[Participant]:
    """Start a participant node; stop it (and its event pump) when the context ends."""
    port = free_port()
    node = await asyncio.to_thread(build_regtest_node, storage_dir, port, chain, alias=alias)
    await asyncio.to_thread(node.start)
    try:
        participant = Participant(
            node=node, node_id=str(node.node_id()), address=f"{LOOPBACK}:{port}"
        )
        async with asyncio.TaskGroup() as tasks:
            pump = tasks.create_task(participant.pump_events())
            try:
                yield participant
            finally:
                pump.cancel()
    finally:
        await asyncio.to_thread(node.stop)
