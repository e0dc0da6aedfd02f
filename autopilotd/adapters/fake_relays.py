"""An in-memory stand-in for the relay pool, for fast tests of the services built on it.

`FakeNetwork` plays a set of relays: every `FakePool` made from it sees what the others
publish, once (as the real pool's dedupe guarantees), on each subscription whose filters
match. Each publish is answered `accepted` by every fake relay unless a test scripts
something else with `FakeNetwork.answer`. It follows `RelayPoolPort`; it is never used
outside tests (the end-to-end tests and the demo use real relays, STYLE pattern 5).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Sequence

from autopilotd.nostr.events import ShapeError, SignedEvent, parse_raw
from autopilotd.ports.relays import (
    IncomingEvent,
    LinkState,
    PublishOutcome,
    PublishReport,
    ReconcileRefused,
    Reconciliation,
    RelayAnswer,
    RelayHealth,
    RelayPoolPort,
    SubscriptionFilter,
)


class FakeNetwork:
    """A set of fake relays shared by the pools a test creates."""

    def __init__(self, relays: Sequence[str] = ("ws://fake-relay-1", "ws://fake-relay-2")) -> None:
        self.relays = tuple(relays)
        self.published: list[SignedEvent] = []
        self._pools: list[FakePool] = []
        self._script: Callable[[str, SignedEvent], RelayAnswer | None] | None = None

    def pool(self, relays: Sequence[str] | None = None) -> FakePool:
        pool = FakePool(self, self.relays if relays is None else tuple(relays))
        self._pools.append(pool)
        return pool

    def answer(self, script: Callable[[str, SignedEvent], RelayAnswer | None] | None) -> None:
        """Decide each relay's answer: return a RelayAnswer, or None for `accepted`."""
        self._script = script

    def inject(self, data: str, relay: str | None = None) -> None:
        """Deliver an event as if a relay sent it (e.g. a hostile request), to every pool."""
        raw = parse_raw(data)
        if isinstance(raw, ShapeError):
            raise ValueError(f"cannot inject a malformed event: {raw.detail}")
        for pool in self._pools:
            pool.deliver(raw, relay or self.relays[0])

    def _publish(
        self, sender: FakePool, event: SignedEvent, relays: Sequence[str] | None = None
    ) -> PublishReport:
        answers = []
        for url in sender.relays():
            if relays is not None and url not in relays:
                continue
            scripted = self._script(url, event) if self._script else None
            answers.append(scripted or RelayAnswer(url, PublishOutcome.ACCEPTED))
        accepted = [a.url for a in answers if a.outcome == PublishOutcome.ACCEPTED]
        if accepted:
            self.published.append(event)
            for pool in self._pools:  # a relay sends our own events back too, as real ones do
                pool.deliver(event, accepted[0])
        return PublishReport(event.id, tuple(answers))


class _FakeSubscription:
    def __init__(self, name: str) -> None:
        self.name = name
        self.filters: tuple[SubscriptionFilter, ...] = ()
        self.queue: asyncio.Queue[IncomingEvent] = asyncio.Queue()

    async def set_filters(self, filters: Sequence[SubscriptionFilter]) -> None:
        self.filters = tuple(filters)

    async def events(self) -> AsyncIterator[IncomingEvent]:
        while True:
            yield await self.queue.get()


class FakePool:
    """A `RelayPoolPort` over a `FakeNetwork`; all its relays are always connected."""

    def __init__(self, network: FakeNetwork, relays: Sequence[str]) -> None:
        self._network = network
        self._subs: dict[str, _FakeSubscription] = {}
        self._seen: set[str] = set()
        self._health: list[Callable[[RelayHealth], None]] = []
        self._removed: list[Callable[[str], None]] = []
        self._rows = {url: self._connected(url) for url in relays}

    @staticmethod
    def _connected(url: str) -> RelayHealth:
        return RelayHealth(url=url, state=LinkState.CONNECTED, connected=True, connects=1)

    def relays(self) -> tuple[str, ...]:
        return tuple(self._rows)

    def health(self) -> tuple[RelayHealth, ...]:
        return tuple(self._rows.values())

    def on_health(self, listener: Callable[[RelayHealth], None]) -> Callable[[], None]:
        self._health.append(listener)
        return lambda: self._health.remove(listener)

    def on_removed(self, listener: Callable[[str], None]) -> Callable[[], None]:
        self._removed.append(listener)
        return lambda: self._removed.remove(listener)

    def subscription(self, name: str) -> _FakeSubscription:
        return self._subs.setdefault(name, _FakeSubscription(name))

    async def publish(
        self, event: SignedEvent, relays: Sequence[str] | None = None
    ) -> PublishReport:
        report = self._network._publish(self, event, relays)
        for answer in report.answers:
            row = self._rows.get(answer.url)
            if row is not None:
                self._set(
                    dataclasses.replace(
                        row,
                        events_out=row.events_out + 1,
                        publish_accepted=row.publish_accepted
                        + (answer.outcome == PublishOutcome.ACCEPTED),
                        publish_rejected=row.publish_rejected
                        + (answer.outcome == PublishOutcome.REJECTED),
                    )
                )
        return report

    async def reconcile(
        self, url: str, f: SubscriptionFilter, items: Sequence[tuple[str, int]]
    ) -> Reconciliation:
        """Every fake relay holds what was accepted on the network (`published`)."""
        if url not in self._rows:
            raise ReconcileRefused(url, "not one of the pool's relays")
        ours = {i for i, _ in items}
        theirs = {e.id for e in self._network.published if f.matches(e)}
        return Reconciliation(tuple(sorted(ours - theirs)), tuple(sorted(theirs - ours)))

    async def fetch(self, url: str, f: SubscriptionFilter, timeout_s: float) -> list[SignedEvent]:
        if url not in self._rows:
            raise ReconcileRefused(url, "not one of the pool's relays")
        return [e for e in self._network.published if f.matches(e)]

    async def set_relays(self, urls: Sequence[str]) -> None:
        for url in [u for u in self._rows if u not in urls]:
            del self._rows[url]
            for removed in list(self._removed):
                removed(url)
        for url in urls:
            if url not in self._rows:
                self._set(self._connected(url))

    async def reconnect(self, url: str) -> None:
        """As if `url` dropped and came back: its row counts one more connect."""
        row = self._rows[url]
        self._set(dataclasses.replace(row, connects=row.connects + 1))

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        if ready is not None:
            ready()
        await asyncio.get_running_loop().create_future()

    def deliver(self, raw: SignedEvent, relay: str) -> None:
        if relay not in self._rows or raw.id in self._seen:
            return
        matching = [s for s in self._subs.values() if any(f.matches(raw) for f in s.filters)]
        if not matching:
            return
        self._seen.add(raw.id)
        row = self._rows[relay]
        self._set(dataclasses.replace(row, events_in=row.events_in + 1, last_seen=time.time()))
        for sub in matching:
            sub.queue.put_nowait(IncomingEvent(relay, raw, time.time()))

    def _set(self, row: RelayHealth) -> None:
        self._rows[row.url] = row
        for listener in list(self._health):
            listener(row)


def _conforms(fake: FakePool) -> RelayPoolPort:
    """Static check (mypy) that the fake follows the port."""
    return fake
