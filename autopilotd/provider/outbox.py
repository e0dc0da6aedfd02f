"""Publishing a job's events: signed once, kept in the outbox first, sent to every relay.

`send` reuses the stored event when there is one (so after a crash the same event, same id,
goes out again) and records each relay's answer. Whenever a relay (re)connects (the pool's
health rows count each relay's connects, and a new connect wakes `run`), it is sent the recent
events it has not accepted: another relay's acceptance does not put an event on this one, and
a job's buyer may read only this one (a Nexus reads its own relay). Events no relay accepted
yet are sent again then too. Nothing polls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from autopilotd.nostr.events import SignedEvent, parse_raw
from autopilotd.ports.relays import PublishReport, RelayHealth, RelayPoolPort
from autopilotd.runtime.clock import Clock
from autopilotd.store.outbox import Outbox
from autopilotd.vocab import OutboxPurpose

logger = logging.getLogger(__name__)

RESEND_WINDOW_S = 3600.0
"""How far back a relay that (re)connects is sent the events it missed (a job's whole life)."""


def outcomes(report: PublishReport) -> dict[str, str]:
    return {a.url: a.outcome.value for a in report.answers}


class JobOutbox:
    def __init__(self, outbox: Outbox, pool: RelayPoolPort, clock: Clock) -> None:
        self._outbox = outbox
        self._pool = pool
        self._clock = clock
        self._connects: dict[str, int] = {r.url: r.connects for r in pool.health()}
        self._reconnected: set[str] = set()
        self._connected = asyncio.Event()
        self.published: Callable[[], Awaitable[None]] = _nothing
        """Awaited after each publish was recorded (the board shows what still waits)."""

    async def send(
        self, request_id: str, purpose: OutboxPurpose, make: Callable[[], SignedEvent]
    ) -> bool:
        """Publish the job's event for `purpose` (made and stored first if there is none yet);
        True once at least one relay has accepted it."""
        item = await self._outbox.item(request_id, purpose)
        if item is None:
            event = make()
            item = await self._outbox.stage(request_id, purpose, event.id, event.json)
        return await self._publish(item.id, item.event_json) > 0

    async def stored(self, request_id: str, purpose: OutboxPurpose) -> SignedEvent | None:
        item = await self._outbox.item(request_id, purpose)
        if item is None:
            return None
        event = parse_raw(item.event_json)
        return event if isinstance(event, SignedEvent) else None

    async def _publish(self, outbox_id: int, event_json: str) -> int:
        event = parse_raw(event_json)
        assert isinstance(event, SignedEvent), "the outbox holds only events we signed"
        report = await self._pool.publish(event)
        accepted = await self._outbox.record_publish(outbox_id, outcomes(report))
        await self.published()
        return accepted

    async def retry(self) -> None:
        """Send every event no relay has accepted yet again (identical, same id), and to each
        relay that (re)connected the recent events it has not accepted."""
        for item in await self._outbox.unpublished():
            await self._publish(item.id, item.event_json)
        since = self._clock.now() - RESEND_WINDOW_S
        while self._reconnected:
            relay = self._reconnected.pop()
            for item in await self._outbox.missing_on(relay, since):
                await self._publish(item.id, item.event_json)

    def on_health(self, row: RelayHealth) -> None:
        """Pool listener: a relay that (re)connected gets what it is missing."""
        before = self._connects.get(row.url, 0)
        self._connects[row.url] = row.connects
        if row.connected and row.connects > before:
            self._reconnected.add(row.url)
            self._connected.set()

    async def run(self) -> None:
        """Retry at start, then each time a relay (re)connects."""
        unsubscribe = self._pool.on_health(self.on_health)
        try:
            while True:
                await self.retry()
                await self._connected.wait()
                self._connected.clear()
        finally:
            unsubscribe()


async def _nothing() -> None:
    return None
