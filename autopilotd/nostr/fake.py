"""An in-memory stand-in for `RelayPool`, for fast tests of the services built on the pool.

`FakeNetwork` plays a set of relays: every `FakePool` made from it sees what the others
publish, if it matches the pool's filters, once (as the real pool's dedupe guarantees).
Each publish is answered `accepted` by every fake relay unless a test scripts something
else with `FakeNetwork.answer`. It follows `RelayPoolPort`; it is never used outside tests
(the end-to-end tests and the demo use real relays, STYLE pattern 5).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Sequence

import nostr_sdk as sdk

from autopilotd.nostr.events import RawEvent, ShapeError, parse_raw
from autopilotd.nostr.pool import (
    IncomingEvent,
    LinkState,
    PublishOutcome,
    PublishReport,
    RelayAnswer,
    RelayHealth,
    RelayPool,
    RelayPoolPort,
    SubscriptionFilter,
)


class FakeNetwork:
    """A set of fake relays shared by the pools a test creates."""

    def __init__(self, relays: Sequence[str] = ("ws://fake-relay-1", "ws://fake-relay-2")) -> None:
        self.relays = tuple(relays)
        self.published: list[RawEvent] = []
        self._pools: list[FakePool] = []
        self._script: Callable[[str, RawEvent], RelayAnswer | None] | None = None

    def pool(self) -> FakePool:
        pool = FakePool(self)
        self._pools.append(pool)
        return pool

    def answer(self, script: Callable[[str, RawEvent], RelayAnswer | None] | None) -> None:
        """Decide each relay's answer: return a RelayAnswer, or None for `accepted`."""
        self._script = script

    def inject(self, data: str, relay: str | None = None) -> None:
        """Deliver an event as if a relay sent it (e.g. a hostile request), to every pool."""
        raw = parse_raw(data)
        if isinstance(raw, ShapeError):
            raise ValueError(f"cannot inject a malformed event: {raw.detail}")
        for pool in self._pools:
            pool.deliver(raw, relay or self.relays[0])

    def _publish(self, sender: FakePool, event: sdk.Event) -> PublishReport:
        raw = parse_raw(event.as_json())
        if isinstance(raw, ShapeError):
            raise ValueError(f"cannot publish a malformed event: {raw.detail}")
        answers = []
        for url in self.relays:
            scripted = self._script(url, raw) if self._script else None
            answers.append(scripted or RelayAnswer(url, PublishOutcome.ACCEPTED))
        accepted = [a.url for a in answers if a.outcome == PublishOutcome.ACCEPTED]
        if accepted:
            self.published.append(raw)
            for pool in self._pools:
                if pool is not sender:
                    pool.deliver(raw, accepted[0])
        return PublishReport(raw.id, tuple(answers))


class FakePool:
    """A `RelayPoolPort` over a `FakeNetwork`; all its relays are always connected."""

    def __init__(self, network: FakeNetwork) -> None:
        self._network = network
        self._filters: tuple[SubscriptionFilter, ...] = ()
        self._queue: asyncio.Queue[IncomingEvent] = asyncio.Queue()
        self._seen: set[str] = set()
        self._rows = {
            url: RelayHealth(url=url, state=LinkState.CONNECTED, connected=True, connects=1)
            for url in network.relays
        }

    def health(self) -> tuple[RelayHealth, ...]:
        return tuple(self._rows.values())

    async def subscribe(self, filters: Sequence[SubscriptionFilter]) -> None:
        self._filters = tuple(filters)

    async def events(self) -> AsyncIterator[IncomingEvent]:
        while True:
            yield await self._queue.get()

    async def publish(self, event: sdk.Event) -> PublishReport:
        report = self._network._publish(self, event)
        for answer in report.answers:
            row = self._rows.get(answer.url)
            if row is None:
                continue
            self._rows[answer.url] = dataclasses.replace(
                row,
                events_out=row.events_out + 1,
                publish_accepted=row.publish_accepted + (answer.outcome == PublishOutcome.ACCEPTED),
                publish_rejected=row.publish_rejected + (answer.outcome == PublishOutcome.REJECTED),
            )
        return report

    async def add_relay(self, url: str) -> bool:
        """Use one more of the network's relays (it must be one of `FakeNetwork.relays`)."""
        if url in self._rows:
            return False
        if url not in self._network.relays:
            raise ValueError(f"{url} is not a relay of this fake network")
        self._rows[url] = RelayHealth(
            url=url, state=LinkState.CONNECTED, connected=True, connects=1
        )
        return True

    async def remove_relay(self, url: str) -> bool:
        return self._rows.pop(url, None) is not None

    def deliver(self, raw: RawEvent, relay: str) -> None:
        if relay not in self._rows:
            return
        if raw.id in self._seen or not any(f.matches(raw) for f in self._filters):
            return
        self._seen.add(raw.id)
        row = self._rows[relay]
        self._rows[relay] = dataclasses.replace(
            row, events_in=row.events_in + 1, last_seen=time.time()
        )
        self._queue.put_nowait(IncomingEvent(relay, raw, time.time()))


def _conforms(fake: FakePool, real: RelayPool) -> tuple[RelayPoolPort, RelayPoolPort]:
    """Static check (mypy) that both pools follow the port."""
    return fake, real
