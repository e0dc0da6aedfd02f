"""One relay of the pool (adapters/relay_pool.py): its nostr-sdk client and connection loop.

A link owns one nostr-sdk `Client`, so one relay's slowness, failure or misbehaviour is
contained: every link has its own connection loop, notification reader and publish timeout.
The pool runs a link's three tasks (`maintain`, `read` and the SDK's monitor) in its own
TaskGroup and hands the link two callbacks: `changed(link)` after its health row changed, and
`deliver(link, sub_id, event, now)` for each event a relay sends.

Per relay:

- Connect, then send every consumer's subscription. On a reconnect each is sent again with
  `since` = (the last moment the relay was seen healthy) - `overlap_s`, never earlier than the
  consumer's own `since`: a catch-up query that covers what was published while we were away,
  and some overlap for clock skew.
- Reconnect on loss with exponential backoff (`backoff_initial_s` doubling up to
  `backoff_max_s`); `reconnect()` forces one now.
- A relay that sends an event outside the subscription it arrived on is dropped (`drop`):
  disconnected, marked `dropped` with the reason, and not reconnected (RELIABILITY N6).
- `publish_one` answers `accepted`, `rejected` (the relay said no, e.g. `blocked:`), `error`
  (timeout, transport) or `skipped` (not connected).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import nostr_sdk as sdk

from autopilotd.adapters.sdk_loop import LoopLoan
from autopilotd.nostr.identity import NostrIdentity
from autopilotd.ports.relays import (
    LinkState,
    PublishOutcome,
    ReconcileRefused,
    Reconciliation,
    RelayAnswer,
    RelayHealth,
    SubscriptionFilter,
)

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
_KEEP_SUBSCRIPTIONS = 4
"""Recent subscription ids per consumer whose late events are still checked, not dropped."""


@dataclass(frozen=True)
class LinkTiming:
    overlap_s: int = 120
    connect_timeout_s: float = 5.0
    publish_timeout_s: float = 5.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    status_poll_s: float = 1.0
    """Fallback check of a link's status between SDK notifications."""


def sdk_filter(f: SubscriptionFilter) -> sdk.Filter:
    """Our filter as nostr-sdk's (raises for a malformed key or id)."""
    out = sdk.Filter()
    if f.kinds:
        out = out.kinds([sdk.Kind(k) for k in f.kinds])
    if f.authors:
        out = out.authors([sdk.PublicKey.parse(a) for a in f.authors])
    if f.p:
        out = out.pubkeys([sdk.PublicKey.parse(p) for p in f.p])
    if f.e:
        out = out.events([sdk.EventId.parse(e) for e in f.e])
    if f.ids:
        out = out.ids([sdk.EventId.parse(i) for i in f.ids])
    if f.since is not None:
        out = out.since(sdk.Timestamp.from_secs(f.since))
    if f.until is not None:
        out = out.until(sdk.Timestamp.from_secs(f.until))
    if f.limit is not None:
        out = out.limit(f.limit)
    return out


class _Monitor(sdk.HandleMonitorNotification):  # type: ignore[misc]
    def __init__(self, wake: asyncio.Event) -> None:
        self._wake = wake

    async def relay_status_changed(self, relay_url: sdk.RelayUrl, status: sdk.RelayStatus) -> None:
        if status in _LOST:
            self._wake.set()


Deliver = Callable[["RelayLink", str, sdk.Event, float], Awaitable[None]]


@dataclass
class RelayLink:
    url: str
    sdk_url: sdk.RelayUrl
    client: sdk.Client
    monitor: sdk.Monitor
    row: RelayHealth
    timing: LinkTiming
    clock: Callable[[], float]
    changed: Callable[[RelayLink], None]
    deliver: Deliver
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    retry_now: bool = False
    generation: int = 0
    sent: dict[str, tuple[str, tuple[SubscriptionFilter, ...]]] = field(default_factory=dict)
    """subscription id → (consumer, the filters sent under it)."""
    healthy_until: float | None = None
    authenticates: bool = False  # answers NIP-42 through a Python signer (sdk_loop.py)

    @classmethod
    def open(
        cls,
        url: str,
        timing: LinkTiming,
        clock: Callable[[], float],
        changed: Callable[[RelayLink], None],
        deliver: Deliver,
        identity: NostrIdentity | None = None,
    ) -> RelayLink:
        """A link to `url`; with an identity it answers a relay's NIP-42 AUTH challenge."""
        try:
            sdk_url = sdk.RelayUrl.parse(url)
        except Exception as exc:
            raise ValueError(f"not a relay URL: {url!r}") from exc
        monitor = sdk.Monitor()
        builder = sdk.ClientBuilder().monitor(monitor)
        if identity is not None:
            builder = builder.authenticator(sdk.SignerAuthenticator(identity.keys))
        client = builder.build()
        link = cls(
            url, sdk_url, client, monitor, RelayHealth(url=url), timing, clock, changed, deliver
        )
        link.authenticates = identity is not None
        return link

    # -- state -------------------------------------------------------------------------------

    @property
    def dropped(self) -> bool:
        return self.row.state == LinkState.DROPPED

    def update(self, **changes: object) -> None:
        row = dataclasses.replace(self.row, **changes)  # type: ignore[arg-type]
        if row != self.row:
            self.row = row
            self.changed(self)

    def tasks(
        self, consumers: Callable[[], Mapping[str, Sequence[SubscriptionFilter]]]
    ) -> list[Callable[[], Awaitable[None]]]:
        """The coroutines that serve this link (the pool runs each as a task)."""
        return [
            lambda: self.monitor.handle_notifications(_Monitor(self.wake)),
            self.read,
            lambda: self.maintain(consumers),
        ]

    async def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await self.client.shutdown()

    async def reconnect(self) -> None:
        """Drop the connection and connect again at once (not for dropped relays)."""
        if self.dropped:
            return
        self.retry_now = True
        with contextlib.suppress(Exception):
            await self.client.disconnect_relay(self.sdk_url)
        self.wake.set()

    async def drop(self, reason: str) -> None:
        logger.warning("dropping relay %s: %s", self.url, reason)
        self.update(state=LinkState.DROPPED, connected=False, last_error=reason, next_retry_at=None)
        self.wake.set()
        with contextlib.suppress(Exception):
            await self.client.disconnect_relay(self.sdk_url)

    # -- connection loop -------------------------------------------------------------------

    async def maintain(
        self, consumers: Callable[[], Mapping[str, Sequence[SubscriptionFilter]]]
    ) -> None:
        loan = LoopLoan() if self.authenticates else None  # the signer is called back
        try:
            await self._maintain(consumers)
        finally:
            if loan is not None:
                loan.release()

    async def _maintain(
        self, consumers: Callable[[], Mapping[str, Sequence[SubscriptionFilter]]]
    ) -> None:
        t = self.timing
        try:  # our own loop reconnects, and checks events against subscriptions itself
            opts = sdk.RelayOptions().reconnect(False).verify_subscriptions(False)
            await self.client.add_relay(self.sdk_url, opts=opts)
        except Exception as exc:
            self.update(state=LinkState.DROPPED, last_error=f"cannot use relay: {exc}")
            return
        delay = t.backoff_initial_s
        while not self.dropped:
            self.update(state=LinkState.CONNECTING, next_retry_at=None)
            if await self._connect(consumers):
                since = self.clock()
                await self._watch()
                self.healthy_until = self.clock()
                if self.healthy_until - since >= t.backoff_max_s:
                    delay = t.backoff_initial_s  # a stable connection resets the backoff
            if self.dropped:
                break
            wait = 0.0 if self.retry_now else delay
            self.retry_now = False
            self.update(
                state=LinkState.DISCONNECTED, connected=False, next_retry_at=self.clock() + wait
            )
            self.wake.clear()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self.wake.wait()
                delay = min(delay * 2, t.backoff_max_s)
            self.retry_now = False

    async def _settle(self) -> None:
        """Bring the SDK relay to a state `try_connect` acts on (initialised or terminated).

        A disconnect is asynchronous in the SDK: connecting before it has finished gets the
        pending termination request, so wait (briefly) until it has.
        """
        relay = await self.client.relay(self.sdk_url)
        if relay is None or relay.status() in _CONNECTABLE:
            return
        with contextlib.suppress(Exception):
            await self.client.disconnect_relay(self.sdk_url)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        while relay.status() not in _CONNECTABLE:  # the monitor wakes us on `terminated`
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(min(deadline, loop.time() + 0.05)):
                    await self.wake.wait()
            if loop.time() >= deadline:
                return

    async def _connect(
        self, consumers: Callable[[], Mapping[str, Sequence[SubscriptionFilter]]]
    ) -> bool:
        client = self.client
        with contextlib.suppress(Exception):
            await client.unsubscribe_all()  # else the SDK replays the old REQ on connect
        await self._settle()
        try:
            out = await client.try_connect(timedelta(seconds=self.timing.connect_timeout_s))
        except Exception as exc:
            self.update(last_error=f"connect: {exc}")
            return False
        if self.sdk_url not in out.success:
            error = next(iter(out.failed.values()), "not connected")
            self.update(last_error=f"connect: {error}")
            return False
        self.wake.clear()
        self.update(
            state=LinkState.CONNECTED,
            connected=True,
            connects=self.row.connects + 1,
            last_seen=self.clock(),
            next_retry_at=None,
        )
        # Read each consumer's filters only now that the row says connected, and just before
        # sending them (no await between): a consumer that sets new filters from here on sends
        # them to this link itself, and the newer subscription replaces this one.
        catch_up = self.healthy_until is not None
        for consumer in list(consumers()):
            filters = consumers().get(consumer, ())
            if not filters:
                continue
            try:
                await self.subscribe(consumer, filters, catch_up=catch_up)
            except Exception as exc:
                self.update(last_error=f"subscribe: {exc}")
                return False
        logger.info("relay %s connected", self.url)
        return True

    async def _connected(self) -> bool:
        relay = await self.client.relay(self.sdk_url)
        return relay is not None and relay.status() == sdk.RelayStatus.CONNECTED

    async def _watch(self) -> None:
        """Return when the link is lost (SDK status notification, forced, or dropped)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timing.status_poll_s):
                    await self.wake.wait()
            self.wake.clear()
            if self.retry_now or self.dropped:
                return
            if not await self._connected():
                self.update(last_error="connection lost")
                logger.info("relay %s: connection lost", self.url)
                return

    async def subscribe(
        self, consumer: str, filters: Sequence[SubscriptionFilter], *, catch_up: bool
    ) -> None:
        """Send `consumer`'s filters under a fresh subscription id, closing its older ones."""
        sent = tuple(filters)
        if catch_up and self.healthy_until is not None:
            since = int(self.healthy_until) - self.timing.overlap_s
            sent = tuple(
                f.with_since(max(since, f.since) if f.since is not None else since) for f in sent
            )
        self.generation += 1
        sub_id = f"{consumer}-{self.generation}"
        mine = [s for s, (c, _) in self.sent.items() if c == consumer]
        self.sent[sub_id] = (consumer, sent)
        for old in mine[: max(0, len(mine) + 1 - _KEEP_SUBSCRIPTIONS)]:
            del self.sent[old]
        if sent:
            target = sdk.ReqTarget.single(self.sdk_url, [sdk_filter(f) for f in sent])
            await self.client.subscribe(target, id=sub_id)
        for old in mine:
            with contextlib.suppress(Exception):
                await self.client.unsubscribe(old)

    async def read(self) -> None:
        stream = self.client.notifications()
        while True:
            item = await stream.next()
            if item is None or item.is_shutdown():
                return
            if not item.is_message():
                continue
            message = item.message.as_enum()
            if self.dropped:
                continue
            now = self.clock()
            if isinstance(message, sdk.RelayMessageEnum.EVENT_MSG):
                self.update(last_seen=now, events_in=self.row.events_in + 1)
                await self.deliver(self, message.subscription_id, message.event, now)
            elif isinstance(message, sdk.RelayMessageEnum.CLOSED):
                self.update(last_seen=now, last_error=f"closed: {message.message}"[:200])
            elif isinstance(message, sdk.RelayMessageEnum.NOTICE):
                self.update(last_seen=now, last_error=f"notice: {message.message}"[:200])
            else:
                self.update(last_seen=now)

    # -- reconcile (NIP-77) and one-shot queries -------------------------------------------

    async def reconcile(
        self, f: SubscriptionFilter, items: Sequence[tuple[str, int]], timeout_s: float
    ) -> Reconciliation:
        """A negentropy dry run against our own items: what each side lacks, nothing sent."""
        if not self.row.connected:
            raise ReconcileRefused(self.url, f"not connected ({self.row.state})")
        negentropy = [
            sdk.NegentropyItem(id=sdk.EventId.parse(i), timestamp=sdk.Timestamp.from_secs(t))
            for i, t in items
        ]
        opts = sdk.SyncOptions().dry_run().initial_timeout(timedelta(seconds=timeout_s))
        try:
            relay = await self.client.relay(self.sdk_url)
            if relay is None:
                raise ReconcileRefused(self.url, "not in the pool")
            async with asyncio.timeout(timeout_s * 3):
                summary = await relay.sync(sdk_filter(f), negentropy, opts)
        except ReconcileRefused:
            raise
        except TimeoutError:
            raise ReconcileRefused(self.url, "timeout") from None
        except Exception as exc:
            raise ReconcileRefused(self.url, str(exc)[:200]) from exc
        self.update(last_seen=self.clock())
        return Reconciliation(
            have=tuple(sorted(e.to_hex() for e in summary.local)),
            need=tuple(sorted(e.to_hex() for e in summary.remote)),
        )

    async def fetch(self, f: SubscriptionFilter, timeout_s: float) -> list[sdk.Event]:
        if not self.row.connected:
            raise ReconcileRefused(self.url, f"not connected ({self.row.state})")
        target = sdk.ReqTarget.single(self.sdk_url, [sdk_filter(f)])
        try:
            async with asyncio.timeout(timeout_s + 1.0):
                events = await self.client.fetch_events(target, timedelta(seconds=timeout_s))
        except TimeoutError:
            raise ReconcileRefused(self.url, "timeout") from None
        except Exception as exc:
            raise ReconcileRefused(self.url, str(exc)[:200]) from exc
        return list(events)

    # -- publish ---------------------------------------------------------------------------

    async def publish_one(self, event: sdk.Event) -> RelayAnswer:
        if not self.row.connected:
            return RelayAnswer(self.url, PublishOutcome.SKIPPED, self.row.state)
        self.update(events_out=self.row.events_out + 1)
        timeout = self.timing.publish_timeout_s
        try:
            async with asyncio.timeout(timeout + 0.5):
                out = await self.client.send_event(
                    event,
                    target=sdk.SendEventTarget.to([self.sdk_url]),
                    ok_timeout=timedelta(seconds=timeout),
                )
        except TimeoutError:
            self.update(last_error="publish: timeout")
            return RelayAnswer(self.url, PublishOutcome.ERROR, "timeout")
        except Exception as exc:
            self.update(last_error=f"publish: {exc}"[:200])
            return RelayAnswer(self.url, PublishOutcome.ERROR, str(exc)[:200])
        if self.sdk_url in out.success:
            self.update(publish_accepted=self.row.publish_accepted + 1)
            return RelayAnswer(self.url, PublishOutcome.ACCEPTED)
        message = str(next(iter(out.failed.values()), "no answer"))[:200]
        if message.startswith(_REJECT_PREFIXES):
            self.update(publish_rejected=self.row.publish_rejected + 1)
            return RelayAnswer(self.url, PublishOutcome.REJECTED, message)
        self.update(last_error=f"publish: {message}")
        return RelayAnswer(self.url, PublishOutcome.ERROR, message)
