"""The relay pool over nostr-sdk (`RelayPoolPort`): links, consumers, dedupe, routing, publish.

One pool per daemon. Each relay is a `RelayLink` (relay_link.py: its own client, connection
loop, backoff and catch-up). Each consumer of the pool (the provider, the buyer …) has a
named subscription with its own filters and its own bounded queue. All long-lived tasks
belong to the TaskGroup that `run()` owns (STYLE §4): run it under the daemon's TaskGroup
(the relays service does), or use `running(pool)` in tests and scripts.

Events: every event is checked against the filters of the subscription it arrived on (kinds,
authors, `#p`, `#e`, `since`); a relay that sends anything else is dropped (RELIABILITY N6).
Events are deduplicated by id across relays, reconnects and consumers with a bounded LRU
set; an id is remembered only once its event passed the id/signature check, so a relay
cannot poison the set with a forged copy of a real event id. The first verified copy goes to
every consumer whose filters it matches. When a consumer's queue is full the event is
dropped for it (counted in `stats()`).

With an identity the pool answers a relay's NIP-42 AUTH challenge (a relay that asks writers
to authenticate, like a Nexus's). Health: one `RelayHealth` row per relay; `on_health`
listeners get each changed row, `on_removed` listeners the url of a relay taken out. Relays
can be added and removed while `run()` runs (`set_relays`); a pool may have no relays at all
(then it publishes nowhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import nostr_sdk as sdk

from autopilotd.adapters.relay_link import LinkTiming, RelayLink, sdk_filter
from autopilotd.nostr.events import EventCaps, ShapeError, SignedEvent, parse_raw, verify
from autopilotd.nostr.identity import NostrIdentity
from autopilotd.ports.relays import (
    IncomingEvent,
    LinkState,
    PublishReport,
    ReconcileRefused,
    Reconciliation,
    RelayAnswer,
    RelayHealth,
    SubscriptionFilter,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolConfig:
    relays: tuple[str, ...]
    overlap_s: int = 120
    connect_timeout_s: float = 5.0
    publish_timeout_s: float = 5.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    status_poll_s: float = 1.0
    dedupe_capacity: int = 100_000
    queue_size: int = 10_000
    """Per consumer."""
    caps: EventCaps = field(default_factory=EventCaps)

    @property
    def timing(self) -> LinkTiming:
        return LinkTiming(
            self.overlap_s,
            self.connect_timeout_s,
            self.publish_timeout_s,
            self.backoff_initial_s,
            self.backoff_max_s,
            self.status_poll_s,
        )


@dataclass(frozen=True)
class PoolStats:
    delivered: int
    duplicates: int
    invalid: int
    queue_full_drops: int
    seen_ids: int


class SeenIds:
    """A bounded set of event ids (least recently added forgotten first)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def add(self, event_id: str) -> None:
        self._ids[event_id] = None
        self._ids.move_to_end(event_id)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)

    def __len__(self) -> int:
        return len(self._ids)


class Subscription:
    """A consumer's filters and queue (`RelaySubscription`)."""

    def __init__(self, pool: RelayPool, name: str, queue_size: int) -> None:
        self._pool = pool
        self.name = name
        self.filters: tuple[SubscriptionFilter, ...] = ()
        self.queue: asyncio.Queue[IncomingEvent] = asyncio.Queue(queue_size)

    async def set_filters(self, filters: Sequence[SubscriptionFilter]) -> None:
        for f in filters:
            try:
                sdk_filter(f)
            except Exception as exc:
                raise ValueError(f"invalid subscription filter {f}: {exc}") from exc
        self.filters = tuple(filters)
        await self._pool._resubscribe(self)

    async def events(self) -> AsyncIterator[IncomingEvent]:
        while True:
            yield await self.queue.get()

    def matches(self, event: SignedEvent) -> bool:
        return any(f.matches(event) for f in self.filters)


class RelayPool:
    """The pool; see the module docstring. Not shared between event loops."""

    def __init__(
        self,
        config: PoolConfig,
        *,
        identity: NostrIdentity | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._identity = identity
        self._clock = clock
        self._subs: dict[str, Subscription] = {}
        self._seen = SeenIds(config.dedupe_capacity)
        self._links: dict[str, RelayLink] = {}
        self._tasks: dict[str, list[asyncio.Task[None]]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._health_listeners: list[Callable[[RelayHealth], None]] = []
        self._removed_listeners: list[Callable[[str], None]] = []
        self._delivered = self._duplicates = self._invalid = self._dropped = 0
        for url in dict.fromkeys(config.relays):
            self._links[url] = self._open(url)

    def _open(self, url: str) -> RelayLink:
        return RelayLink.open(
            url, self.config.timing, self._clock, self._changed, self._deliver, self._identity
        )

    # -- the consumers' view ---------------------------------------------------------------

    def relays(self) -> tuple[str, ...]:
        return tuple(self._links)

    def health(self) -> tuple[RelayHealth, ...]:
        return tuple(link.row for link in self._links.values())

    def stats(self) -> PoolStats:
        return PoolStats(
            self._delivered, self._duplicates, self._invalid, self._dropped, len(self._seen)
        )

    def on_health(self, listener: Callable[[RelayHealth], None]) -> Callable[[], None]:
        self._health_listeners.append(listener)
        return lambda: self._health_listeners.remove(listener)

    def on_removed(self, listener: Callable[[str], None]) -> Callable[[], None]:
        self._removed_listeners.append(listener)
        return lambda: self._removed_listeners.remove(listener)

    def subscription(self, name: str) -> Subscription:
        if not name.replace("_", "").isalnum():
            raise ValueError(f"a subscription name is a plain word, not {name!r}")
        if name not in self._subs:
            self._subs[name] = Subscription(self, name, self.config.queue_size)
        return self._subs[name]

    async def reconnect(self, url: str) -> None:
        """Drop the connection to `url` and connect again at once (not for dropped relays)."""
        await self._links[url].reconnect()

    async def publish(
        self, event: SignedEvent, relays: Sequence[str] | None = None
    ) -> PublishReport:
        """Send `event` to every connected relay (or those of `relays`) at once; each answer
        within its timeout."""
        sdk_event = sdk.Event.from_json(event.json)
        links = [link for url, link in self._links.items() if relays is None or url in relays]
        answers: list[RelayAnswer] = []
        if links:
            answers = list(await asyncio.gather(*(link.publish_one(sdk_event) for link in links)))
        return PublishReport(event_id=event.id, answers=tuple(answers))

    def _link(self, url: str) -> RelayLink:
        link = self._links.get(url)
        if link is None:
            raise ReconcileRefused(url, "not one of the pool's relays")
        return link

    async def reconcile(
        self, url: str, f: SubscriptionFilter, items: Sequence[tuple[str, int]]
    ) -> Reconciliation:
        return await self._link(url).reconcile(f, items, self.config.connect_timeout_s)

    async def fetch(self, url: str, f: SubscriptionFilter, timeout_s: float) -> list[SignedEvent]:
        """Events from one query to `url`, each checked like a subscription's (RELIABILITY N6):
        shape, id and signature, and the filter; anything else is counted invalid and left out.
        """
        out: list[SignedEvent] = []
        for event in await self._link(url).fetch(f, timeout_s):
            raw = parse_raw(event.as_json(), self.config.caps)
            if isinstance(raw, ShapeError) or not f.matches(raw) or isinstance(verify(raw), str):
                self._invalid += 1
                continue
            out.append(raw)
        return out

    async def add_relay(self, url: str) -> bool:
        """Add a relay (at once if `run()` runs, else when it starts); False if already in."""
        if url in self._links:
            return False
        link = self._open(url)
        self._links[url] = link
        if self._tg is not None:
            self._start(self._tg, link)
        self._notify(link.row)
        return True

    async def remove_relay(self, url: str) -> bool:
        """Stop using a relay: its tasks end, its client shuts down; False if it was not in."""
        link = self._links.pop(url, None)
        if link is None:
            return False
        tasks = self._tasks.pop(url, [])
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        await link.shutdown()
        logger.info("relay %s removed", url)
        for listener in list(self._removed_listeners):
            try:
                listener(url)
            except Exception:
                logger.exception("an on_removed listener failed")
        return True

    async def set_relays(self, urls: Sequence[str]) -> None:
        """Make the pool's relays exactly `urls`: remove the others, add the new ones."""
        wanted = dict.fromkeys(urls)
        for url in [u for u in self._links if u not in wanted]:
            await self.remove_relay(url)
        for url in wanted:
            await self.add_relay(url)

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        """Connect and serve every relay until cancelled; `ready()` once all tasks started."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for link in self._links.values():
                    self._start(tg, link)
                if ready is not None:
                    ready()
                await asyncio.get_running_loop().create_future()  # relays come and go
        finally:
            self._tg = None
            self._tasks.clear()
            for link in list(self._links.values()):
                link.update(state=LinkState.STOPPED, connected=False, next_retry_at=None)
                await link.shutdown()

    # -- internals ------------------------------------------------------------------------

    def _consumers(self) -> dict[str, tuple[SubscriptionFilter, ...]]:
        return {name: sub.filters for name, sub in self._subs.items()}

    def _start(self, tg: asyncio.TaskGroup, link: RelayLink) -> None:
        name = f"relay {link.url}"
        self._tasks[link.url] = [
            tg.create_task(self._owned(link, make), name=name)
            for make in link.tasks(self._consumers)
        ]

    async def _owned(self, link: RelayLink, make: Callable[[], Awaitable[None]]) -> None:
        """Run one of a link's tasks; once the link is removed, its failures end with it."""
        try:
            await make()
        except Exception:
            if self._links.get(link.url) is link:
                raise
            logger.debug("removed relay %s: a task ended with an error", link.url, exc_info=True)

    def _notify(self, row: RelayHealth) -> None:
        for listener in list(self._health_listeners):
            try:
                listener(row)
            except Exception:
                logger.exception("an on_health listener failed")

    def _changed(self, link: RelayLink) -> None:
        if self._links.get(link.url) is link:  # a removed link's late news is nobody's
            self._notify(link.row)

    async def _resubscribe(self, sub: Subscription) -> None:
        for link in list(self._links.values()):
            if link.row.connected:
                try:
                    await link.subscribe(sub.name, sub.filters, catch_up=False)
                except Exception as exc:
                    logger.warning("subscribe on %s failed: %s", link.url, exc)
                    link.update(last_error=f"subscribe: {exc}"[:200])

    async def _deliver(self, link: RelayLink, sub_id: str, event: sdk.Event, now: float) -> None:
        try:
            await self._route(link, sub_id, event, now)
        except Exception:  # one odd event must not take the pool down
            self._invalid += 1
            logger.exception("event from %s could not be handled", link.url)

    async def _route(self, link: RelayLink, sub_id: str, event: sdk.Event, now: float) -> None:
        raw = parse_raw(event.as_json(), self.config.caps)
        if isinstance(raw, ShapeError):
            self._invalid += 1
            return
        sent = link.sent.get(sub_id)
        if sent is None:
            return  # a subscription we closed; the relay may still flush it
        if not any(f.matches(raw) for f in sent[1]):
            await link.drop(f"sent an event outside its subscription (kind {raw.kind})")
            return
        if raw.id in self._seen:
            self._duplicates += 1
            return
        if isinstance(verify(raw), str):
            self._invalid += 1
            return
        self._seen.add(raw.id)
        incoming = IncomingEvent(link.url, raw, now)
        for sub in self._subs.values():
            if sub.matches(raw):
                try:
                    sub.queue.put_nowait(incoming)
                except asyncio.QueueFull:
                    self._dropped += 1
                    continue
                self._delivered += 1


@contextlib.asynccontextmanager
async def running(pool: RelayPool) -> AsyncIterator[RelayPool]:
    """`async with running(pool):` run the pool in a TaskGroup for the block (tests, demo)."""
    started = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(pool.run(started.set))
        await started.wait()
        try:
            yield pool
        finally:
            task.cancel()
