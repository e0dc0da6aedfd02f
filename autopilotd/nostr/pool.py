"""A relay pool over nostr-sdk: one health row per relay, catch-up, dedupe, per-relay publish.

Each configured relay gets its own nostr-sdk `Client` (a *link*), so one relay's slowness,
failure or misbehaviour is contained: every link has its own connection loop, notification
reader and publish timeout. All long-lived tasks belong to the TaskGroup that `run()` owns
(STYLE §4); run it under the daemon's TaskGroup, or use `running(pool)` in tests and scripts.

Behaviour, per relay:

- Connect, then subscribe with the current filters. On a reconnect the subscription is sent
  again with `since` = (the last moment the relay was seen healthy) - `overlap_s`, never
  earlier than the caller's own `since`: a catch-up query that covers what was published
  while we were away, and some overlap for clock skew.
- Reconnect on loss with exponential backoff (`backoff_initial_s` doubling up to
  `backoff_max_s`); `reconnect(url)` forces one now.
- Every event is checked against the filters of the subscription it arrived on (kinds,
  authors, `#p`, `#e`, `since`). A relay that sends anything else is dropped: disconnected,
  marked `dropped` with the reason in `last_error`, and not reconnected (RELIABILITY N6).
- Events are deduplicated by id across relays and reconnects with a bounded LRU set. An id is
  only remembered once its event passed the id/signature check, so a relay cannot poison the
  set with a forged copy of a real event id.
- `publish(event)` sends to every connected relay at once, each with its own timeout, and
  returns each relay's answer: `accepted`, `rejected` (the relay said no, e.g. `blocked:`),
  `error` (timeout, transport) or `skipped` (not connected).

Outputs: `events()` is an async iterator of `IncomingEvent`s (bounded queue; when full, new
events are dropped, counted in `stats()` and may arrive again from another relay);
`on_health` is called with the new `RelayHealth` row whenever a row changes. `health()` is
the current table. The types live in `port.py` (re-exported here); `RelayPoolPort` is the
interface a service should depend on, so fast tests can pass `fake.FakePool`.

Relays can be added and removed while `run()` runs (`add_relay`, `remove_relay`, `set_relays`):
a new link's tasks join the pool's TaskGroup and subscribe with the current filters; a removed
link's tasks are cancelled, its client shut down, and `on_removed(url)` is called so the caller
can drop its health row. A pool may have no relays at all (then it publishes nowhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import nostr_sdk as sdk

from autopilotd.nostr.events import ShapeError, parse_raw, verify
from autopilotd.nostr.port import (
    IncomingEvent,
    LinkState,
    PoolConfig,
    PoolStats,
    PublishOutcome,
    PublishReport,
    RelayAnswer,
    RelayHealth,
    RelayPoolPort,
    SeenIds,
    SubscriptionFilter,
)

__all__ = [
    "IncomingEvent",
    "LinkState",
    "PoolConfig",
    "PoolStats",
    "PublishOutcome",
    "PublishReport",
    "RelayAnswer",
    "RelayHealth",
    "RelayPool",
    "RelayPoolPort",
    "SubscriptionFilter",
    "running",
]

logger = logging.getLogger(__name__)

_REJECT_PREFIXES = (
    "duplicate:",
    "pow:",
    "blocked:",
    "rate-limited:",
    "invalid:",
    "restricted:",
    "mute:",
    "error:",
    "auth-required:",
)
"""NIP-01 machine-readable prefixes of an `OK false` message: the relay answered no."""

_LOST = frozenset(
    {
        sdk.RelayStatus.DISCONNECTED,
        sdk.RelayStatus.TERMINATED,
        sdk.RelayStatus.BANNED,
        sdk.RelayStatus.SHUTDOWN,
        sdk.RelayStatus.SLEEPING,
    }
)
_CONNECTABLE = frozenset({sdk.RelayStatus.INITIALIZED, sdk.RelayStatus.TERMINATED})


class _Monitor(sdk.HandleMonitorNotification):  # type: ignore[misc]
    def __init__(self, wake: asyncio.Event) -> None:
        self._wake = wake

    async def relay_status_changed(self, relay_url: sdk.RelayUrl, status: sdk.RelayStatus) -> None:
        if status in _LOST:
            self._wake.set()


def _dropped(link: _Link) -> bool:
    return link.row.state == LinkState.DROPPED


@dataclass
class _Link:
    url: str
    sdk_url: sdk.RelayUrl
    client: sdk.Client
    monitor: sdk.Monitor
    row: RelayHealth
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    retry_now: bool = False
    generation: int = 0
    subscriptions: dict[str, tuple[SubscriptionFilter, ...]] = field(default_factory=dict)
    healthy_until: float | None = None


class RelayPool:
    """The pool; see the module docstring. Not shared between event loops."""

    def __init__(
        self,
        config: PoolConfig,
        *,
        on_health: Callable[[RelayHealth], None] | None = None,
        on_removed: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._on_health = on_health
        self._on_removed = on_removed
        self._clock = clock
        self._filters: tuple[SubscriptionFilter, ...] = ()
        self._queue: asyncio.Queue[IncomingEvent] = asyncio.Queue(config.queue_size)
        self._seen = SeenIds(config.dedupe_capacity)
        self._links: dict[str, _Link] = {}
        self._tasks: dict[str, list[asyncio.Task[None]]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._delivered = self._duplicates = self._invalid = self._dropped = 0
        for url in dict.fromkeys(config.relays):
            self._links[url] = self._new_link(url)

    @staticmethod
    def _new_link(url: str) -> _Link:
        try:
            sdk_url = sdk.RelayUrl.parse(url)
        except Exception as exc:
            raise ValueError(f"not a relay URL: {url!r}") from exc
        monitor = sdk.Monitor()
        client = sdk.ClientBuilder().monitor(monitor).build()
        return _Link(
            url=url, sdk_url=sdk_url, client=client, monitor=monitor, row=RelayHealth(url=url)
        )

    # -- the caller's view ---------------------------------------------------------------

    def relays(self) -> tuple[str, ...]:
        return tuple(self._links)

    def health(self) -> tuple[RelayHealth, ...]:
        return tuple(link.row for link in self._links.values())

    def stats(self) -> PoolStats:
        return PoolStats(
            self._delivered, self._duplicates, self._invalid, self._dropped, len(self._seen)
        )

    async def events(self) -> AsyncIterator[IncomingEvent]:
        """New events, once each, in arrival order; runs until the consumer stops."""
        while True:
            yield await self._queue.get()

    async def subscribe(self, filters: Sequence[SubscriptionFilter]) -> None:
        """Replace the subscription on every relay (now on connected ones, later on others).

        Raises ValueError for a filter nostr-sdk cannot express (e.g. a malformed pubkey).
        """
        for f in filters:
            try:
                f.to_sdk()
            except Exception as exc:
                raise ValueError(f"invalid subscription filter {f}: {exc}") from exc
        self._filters = tuple(filters)
        for link in list(self._links.values()):
            if link.row.connected:
                try:
                    await self._subscribe_link(link, catch_up=False)
                except Exception as exc:
                    logger.warning("subscribe on %s failed: %s", link.url, exc)

    async def reconnect(self, url: str) -> None:
        """Drop the connection to `url` and connect again at once (not for dropped relays)."""
        link = self._links[url]
        if link.row.state == LinkState.DROPPED:
            return
        link.retry_now = True
        with contextlib.suppress(Exception):
            await link.client.disconnect_relay(link.sdk_url)
        link.wake.set()

    async def publish(self, event: sdk.Event) -> PublishReport:
        """Send `event` to every connected relay at once; each answer within its timeout."""
        answers: dict[str, RelayAnswer] = {}
        links = list(self._links.values())
        async with asyncio.TaskGroup() as tg:
            for link in links:
                tg.create_task(self._publish_one(link, event, answers))
        return PublishReport(
            event_id=event.id().to_hex(),
            answers=tuple(answers[link.url] for link in links if link.url in answers),
        )

    async def add_relay(self, url: str) -> bool:
        """Add a relay (at once if `run()` runs, else when it starts); False if already in."""
        if url in self._links:
            return False
        link = self._new_link(url)
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
        await self._shutdown(link)
        logger.info("relay %s removed", url)
        if self._on_removed is not None:
            try:
                self._on_removed(url)
            except Exception:
                logger.exception("on_removed callback failed")
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
                self._update(link, state=LinkState.STOPPED, connected=False, next_retry_at=None)
                await self._shutdown(link)

    # -- internals ------------------------------------------------------------------------

    def _start(self, tg: asyncio.TaskGroup, link: _Link) -> None:
        name = f"relay {link.url}"
        self._tasks[link.url] = [
            tg.create_task(self._owned(link, coro), name=name)
            for coro in (
                link.monitor.handle_notifications(_Monitor(link.wake)),
                self._read(link),
                self._maintain(link),
            )
        ]

    async def _owned(self, link: _Link, coro: Coroutine[Any, Any, None]) -> None:
        """Run one of a link's tasks; once the link is removed, its failures end with it."""
        try:
            await coro
        except Exception:
            if self._links.get(link.url) is link:
                raise
            logger.debug("removed relay %s: a task ended with an error", link.url, exc_info=True)

    @staticmethod
    async def _shutdown(link: _Link) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await link.client.shutdown()

    def _notify(self, row: RelayHealth) -> None:
        if self._on_health is not None:
            try:
                self._on_health(row)
            except Exception:
                logger.exception("on_health callback failed")

    def _update(self, link: _Link, **changes: object) -> None:
        row = dataclasses.replace(link.row, **changes)  # type: ignore[arg-type]
        if row == link.row:
            return
        link.row = row
        if self._links.get(link.url) is link:  # a removed link's late news is nobody's
            self._notify(row)

    async def _connected(self, link: _Link) -> bool:
        relay = await link.client.relay(link.sdk_url)
        return relay is not None and relay.status() == sdk.RelayStatus.CONNECTED

    async def _maintain(self, link: _Link) -> None:
        cfg = self.config
        try:  # our own loop reconnects, and checks events against subscriptions itself
            opts = sdk.RelayOptions().reconnect(False).verify_subscriptions(False)
            await link.client.add_relay(link.sdk_url, opts=opts)
        except Exception as exc:
            self._update(link, state=LinkState.DROPPED, last_error=f"cannot use relay: {exc}")
            return
        delay = cfg.backoff_initial_s
        while not _dropped(link):
            self._update(link, state=LinkState.CONNECTING, next_retry_at=None)
            if await self._connect(link):
                since = self._clock()
                await self._watch(link)
                link.healthy_until = self._clock()
                if link.healthy_until - since >= cfg.backoff_max_s:
                    delay = cfg.backoff_initial_s  # a stable connection resets the backoff
            if _dropped(link):
                break
            wait = 0.0 if link.retry_now else delay
            link.retry_now = False
            self._update(
                link,
                state=LinkState.DISCONNECTED,
                connected=False,
                next_retry_at=self._clock() + wait,
            )
            link.wake.clear()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await link.wake.wait()
                delay = min(delay * 2, cfg.backoff_max_s)
            link.retry_now = False

    async def _settle(self, link: _Link) -> None:
        """Bring the SDK relay to a state `try_connect` acts on (initialised or terminated).

        A disconnect is asynchronous in the SDK: connecting before it has finished gets the
        pending termination request, so wait (briefly) until it has.
        """
        relay = await link.client.relay(link.sdk_url)
        if relay is None or relay.status() in _CONNECTABLE:
            return
        with contextlib.suppress(Exception):
            await link.client.disconnect_relay(link.sdk_url)
        deadline = asyncio.get_running_loop().time() + 2.0
        while relay.status() not in _CONNECTABLE:  # the monitor wakes us on `terminated`
            link.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(
                    min(deadline, asyncio.get_running_loop().time() + 0.05)
                ):
                    await link.wake.wait()
            if asyncio.get_running_loop().time() >= deadline:
                return

    async def _connect(self, link: _Link) -> bool:
        client = link.client
        with contextlib.suppress(Exception):
            await client.unsubscribe_all()  # else the SDK replays the old REQ on connect
        await self._settle(link)
        try:
            out = await client.try_connect(timedelta(seconds=self.config.connect_timeout_s))
        except Exception as exc:
            self._update(link, last_error=f"connect: {exc}")
            return False
        if link.sdk_url not in out.success:
            error = next(iter(out.failed.values()), "not connected")
            self._update(link, last_error=f"connect: {error}")
            return False
        link.wake.clear()
        self._update(
            link,
            state=LinkState.CONNECTED,
            connected=True,
            connects=link.row.connects + 1,
            last_seen=self._clock(),
            next_retry_at=None,
        )
        if self._filters:
            try:
                await self._subscribe_link(link, catch_up=link.healthy_until is not None)
            except Exception as exc:
                self._update(link, last_error=f"subscribe: {exc}")
                return False
        logger.info("relay %s connected", link.url)
        return True

    async def _watch(self, link: _Link) -> None:
        """Return when the link is lost (SDK status notification, forced, or dropped)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.status_poll_s):
                    await link.wake.wait()
            link.wake.clear()
            if link.retry_now or link.row.state == LinkState.DROPPED:
                return
            if not await self._connected(link):
                self._update(link, last_error="connection lost")
                logger.info("relay %s: connection lost", link.url)
                return

    async def _subscribe_link(self, link: _Link, *, catch_up: bool) -> None:
        filters = self._filters
        if catch_up and link.healthy_until is not None:
            since = int(link.healthy_until) - self.config.overlap_s
            filters = tuple(
                f.with_since(max(since, f.since) if f.since is not None else since) for f in filters
            )
        link.generation += 1
        sub_id = f"apd-{link.generation}"
        link.subscriptions[sub_id] = filters
        for old in list(link.subscriptions)[:-4]:  # late events of recent ones stay checkable
            del link.subscriptions[old]
        target = sdk.ReqTarget.single(link.sdk_url, [f.to_sdk() for f in filters])
        await link.client.subscribe(target, id=sub_id)
        for old in list(link.subscriptions):
            if old != sub_id:
                with contextlib.suppress(Exception):
                    await link.client.unsubscribe(old)

    async def _read(self, link: _Link) -> None:
        stream = link.client.notifications()
        while True:
            item = await stream.next()
            if item is None or item.is_shutdown():
                return
            if not item.is_message():
                continue
            message = item.message.as_enum()
            if link.row.state == LinkState.DROPPED:
                continue
            now = self._clock()
            if isinstance(message, sdk.RelayMessageEnum.EVENT_MSG):
                self._update(link, last_seen=now, events_in=link.row.events_in + 1)
                try:
                    await self._on_event(link, message.subscription_id, message.event, now)
                except Exception:  # one odd event must not take the pool down
                    self._invalid += 1
                    logger.exception("event from %s could not be handled", link.url)
            elif isinstance(message, sdk.RelayMessageEnum.CLOSED):
                self._update(link, last_seen=now, last_error=f"closed: {message.message}"[:200])
            elif isinstance(message, sdk.RelayMessageEnum.NOTICE):
                self._update(link, last_seen=now, last_error=f"notice: {message.message}"[:200])
            else:
                self._update(link, last_seen=now)

    async def _on_event(self, link: _Link, sub_id: str, event: sdk.Event, now: float) -> None:
        raw = parse_raw(event.as_json(), self.config.caps)
        if isinstance(raw, ShapeError):
            self._invalid += 1
            return
        filters = link.subscriptions.get(sub_id)
        if filters is None:
            return  # a subscription we closed; the relay may still flush it
        if not any(f.matches(raw) for f in filters):
            await self._drop(link, f"sent an event outside its subscription (kind {raw.kind})")
            return
        if raw.id in self._seen:
            self._duplicates += 1
            return
        if isinstance(verify(raw), str):
            self._invalid += 1
            return
        self._seen.add(raw.id)
        try:
            self._queue.put_nowait(IncomingEvent(link.url, raw, now))
        except asyncio.QueueFull:
            self._seen.discard(raw.id)  # another copy may get through later
            self._dropped += 1
            return
        self._delivered += 1

    async def _drop(self, link: _Link, reason: str) -> None:
        logger.warning("dropping relay %s: %s", link.url, reason)
        self._update(
            link, state=LinkState.DROPPED, connected=False, last_error=reason, next_retry_at=None
        )
        link.wake.set()
        with contextlib.suppress(Exception):
            await link.client.disconnect_relay(link.sdk_url)

    async def _publish_one(
        self, link: _Link, event: sdk.Event, answers: dict[str, RelayAnswer]
    ) -> None:
        if not link.row.connected:
            answers[link.url] = RelayAnswer(link.url, PublishOutcome.SKIPPED, link.row.state)
            return
        self._update(link, events_out=link.row.events_out + 1)
        timeout = self.config.publish_timeout_s
        try:
            async with asyncio.timeout(timeout + 0.5):
                out = await link.client.send_event(
                    event,
                    target=sdk.SendEventTarget.to([link.sdk_url]),
                    ok_timeout=timedelta(seconds=timeout),
                )
        except TimeoutError:
            answers[link.url] = RelayAnswer(link.url, PublishOutcome.ERROR, "timeout")
            self._update(link, last_error="publish: timeout")
            return
        except Exception as exc:
            answers[link.url] = RelayAnswer(link.url, PublishOutcome.ERROR, str(exc)[:200])
            self._update(link, last_error=f"publish: {exc}"[:200])
            return
        if link.sdk_url in out.success:
            answers[link.url] = RelayAnswer(link.url, PublishOutcome.ACCEPTED)
            self._update(link, publish_accepted=link.row.publish_accepted + 1)
            return
        message = str(next(iter(out.failed.values()), "no answer"))[:200]
        if message.startswith(_REJECT_PREFIXES):
            answers[link.url] = RelayAnswer(link.url, PublishOutcome.REJECTED, message)
            self._update(link, publish_rejected=link.row.publish_rejected + 1)
        else:
            answers[link.url] = RelayAnswer(link.url, PublishOutcome.ERROR, message)
            self._update(link, last_error=f"publish: {message}")


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
