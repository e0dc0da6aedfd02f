"""The relay pool's port: what a service sees of the Nostr relays, in the project's own types.

One pool per daemon. Each consumer (the provider, the buyer …) opens its own named
`RelaySubscription` with its own filters and reads its own stream of events; every consumer
publishes through the same pool. Events in and out are `SignedEvent`s (nostr/events.py), plain
data: nostr-sdk stays inside the adapters (`adapters/relay_pool.py` is the real pool,
`adapters/fake_relays.py` the in-memory one for fast tests). Health rows are plain data too,
so a service can put them straight into the snapshot.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from autopilotd.nostr.events import SignedEvent


class LinkState(enum.StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    DROPPED = "dropped"
    STOPPED = "stopped"


@dataclass(frozen=True)
class RelayHealth:
    """One relay's row, as the snapshot shows it. Times are UNIX seconds."""

    url: str
    state: LinkState = LinkState.CONNECTING
    connected: bool = False
    last_seen: float | None = None
    last_error: str | None = None
    events_in: int = 0
    events_out: int = 0
    publish_accepted: int = 0
    publish_rejected: int = 0
    connects: int = 0
    next_retry_at: float | None = None


@dataclass(frozen=True)
class SubscriptionFilter:
    """A NIP-01 filter, the subset the earn loop needs: kinds, authors, `#p`, `#e`, since."""

    kinds: tuple[int, ...] = ()
    authors: tuple[str, ...] = ()
    p: tuple[str, ...] = ()
    e: tuple[str, ...] = ()
    since: int | None = None
    limit: int | None = None
    ids: tuple[str, ...] = ()
    until: int | None = None

    def window(self, since: int | None, until: int | None) -> SubscriptionFilter:
        return dataclasses.replace(self, since=since, until=until)

    def with_since(self, since: int | None) -> SubscriptionFilter:
        return dataclasses.replace(self, since=since)

    def matches(self, event: SignedEvent) -> bool:
        if self.kinds and event.kind not in self.kinds:
            return False
        if self.authors and event.pubkey not in self.authors:
            return False
        if self.since is not None and event.created_at < self.since:
            return False
        if self.until is not None and event.created_at > self.until:
            return False
        if self.ids and event.id not in self.ids:
            return False
        for name, wanted in (("p", self.p), ("e", self.e)):
            if wanted and not any(len(t) > 1 and t[1] in wanted for t in event.all(name)):
                return False
        return True


@dataclass(frozen=True)
class IncomingEvent:
    """An event seen for the first time, from `relay`; shape, id and signature checked."""

    relay: str
    event: SignedEvent
    received_at: float


class PublishOutcome(enum.StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    ERROR = "error"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class RelayAnswer:
    url: str
    outcome: PublishOutcome
    message: str = ""


@dataclass(frozen=True)
class PublishReport:
    """Each relay's answer to one publish (ARCHITECTURE §5.4: record every answer)."""

    event_id: str
    answers: tuple[RelayAnswer, ...]

    @property
    def accepted(self) -> tuple[str, ...]:
        return tuple(a.url for a in self.answers if a.outcome == PublishOutcome.ACCEPTED)

    @property
    def any_accepted(self) -> bool:
        return bool(self.accepted)


@dataclass(frozen=True)
class Reconciliation:
    """A NIP-77 negentropy round with one relay over one filter, against our own items."""

    have: tuple[str, ...]
    """Ids we hold that the relay lacks (to upload)."""
    need: tuple[str, ...]
    """Ids the relay holds that we lack (to fetch)."""


class ReconcileRefused(Exception):
    """The relay would not reconcile this filter (too many records, unsupported, closed)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason

    @property
    def too_large(self) -> bool:
        """A refusal a smaller query (a narrower time window) may get past."""
        words = self.reason.lower()
        return any(w in words for w in ("too many", "too large", "too big", "blocked", "limit"))


class RelaySubscription(Protocol):
    """One consumer's view of the pool: its filters, and the events that match them."""

    name: str

    async def set_filters(self, filters: Sequence[SubscriptionFilter]) -> None:
        """Replace this consumer's filters on every relay (now, or when each connects).

        Raises ValueError for a filter the relays cannot be sent (e.g. a malformed pubkey).
        """
        ...

    def events(self) -> AsyncIterator[IncomingEvent]:
        """Events matching these filters, once each (deduplicated across relays), in order."""
        ...


class RelayPoolPort(Protocol):
    """What the daemon needs from its relays; its owner runs it (`run`) under the TaskGroup."""

    def relays(self) -> tuple[str, ...]: ...

    def health(self) -> tuple[RelayHealth, ...]: ...

    def on_health(self, listener: Callable[[RelayHealth], None]) -> Callable[[], None]:
        """Call `listener(row)` with each changed row (a new relay's too); returns the
        unsubscribe."""
        ...

    def on_removed(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call `listener(url)` when a relay is taken out of the pool; returns the unsubscribe."""
        ...

    def subscription(self, name: str) -> RelaySubscription:
        """The consumer `name`'s subscription (one per name; asking again returns it)."""
        ...

    async def publish(
        self, event: SignedEvent, relays: Sequence[str] | None = None
    ) -> PublishReport:
        """Send to every connected relay (or those of `relays` in the pool) at once; each
        relay's answer within its timeout."""
        ...

    async def reconcile(
        self, url: str, f: SubscriptionFilter, items: Sequence[tuple[str, int]]
    ) -> Reconciliation:
        """Compare our `items` (event id, created_at) matching `f` with what relay `url` holds
        (NIP-77 negentropy); transfers nothing. Raises ReconcileRefused when the relay says no
        or is not connected."""
        ...

    async def fetch(self, url: str, f: SubscriptionFilter, timeout_s: float) -> list[SignedEvent]:
        """The events relay `url` holds matching `f` (one query, until EOSE or the timeout);
        each checked (shape, id, signature, the filter). Raises ReconcileRefused when the
        relay is not connected."""
        ...

    async def set_relays(self, urls: Sequence[str]) -> None:
        """Make the pool's relays exactly `urls` (added and removed while it runs)."""
        ...

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        """Connect and serve every relay until cancelled; `ready()` once started."""
        ...
