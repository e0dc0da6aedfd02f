"""The relay pool's port: the types a service sees, and the `RelayPoolPort` protocol.

`pool.RelayPool` is the real implementation over nostr-sdk, `fake.FakePool` the in-memory one
for fast tests. Everything here is plain data: frozen dataclasses and enums, so a service can
put rows and reports straight into the snapshot.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import nostr_sdk as sdk

from autopilotd.nostr.events import EventCaps, RawEvent


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

    def with_since(self, since: int | None) -> SubscriptionFilter:
        return dataclasses.replace(self, since=since)

    def to_sdk(self) -> sdk.Filter:
        f = sdk.Filter()
        if self.kinds:
            f = f.kinds([sdk.Kind(k) for k in self.kinds])
        if self.authors:
            f = f.authors([sdk.PublicKey.parse(a) for a in self.authors])
        if self.p:
            f = f.pubkeys([sdk.PublicKey.parse(p) for p in self.p])
        if self.e:
            f = f.events([sdk.EventId.parse(e) for e in self.e])
        if self.since is not None:
            f = f.since(sdk.Timestamp.from_secs(self.since))
        if self.limit is not None:
            f = f.limit(self.limit)
        return f

    def matches(self, event: RawEvent) -> bool:
        if self.kinds and event.kind not in self.kinds:
            return False
        if self.authors and event.pubkey not in self.authors:
            return False
        if self.since is not None and event.created_at < self.since:
            return False
        for name, wanted in (("p", self.p), ("e", self.e)):
            if wanted and not any(len(t) > 1 and t[1] in wanted for t in event.all(name)):
                return False
        return True


@dataclass(frozen=True)
class IncomingEvent:
    """An event seen for the first time, from `relay`; shape, id and signature checked."""

    relay: str
    event: RawEvent
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
class PoolStats:
    delivered: int
    duplicates: int
    invalid: int
    queue_full_drops: int
    seen_ids: int


@dataclass(frozen=True)
class PoolConfig:
    relays: tuple[str, ...]
    overlap_s: int = 120
    connect_timeout_s: float = 5.0
    publish_timeout_s: float = 5.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    status_poll_s: float = 1.0
    """Fallback check of a link's status between SDK notifications."""
    dedupe_capacity: int = 100_000
    queue_size: int = 10_000
    caps: EventCaps = field(default_factory=EventCaps)


class RelayPoolPort(Protocol):
    """What a service needs from a pool; `RelayPool` is the real one."""

    def health(self) -> tuple[RelayHealth, ...]: ...

    async def subscribe(self, filters: Sequence[SubscriptionFilter]) -> None: ...

    def events(self) -> AsyncIterator[IncomingEvent]: ...

    async def publish(self, event: sdk.Event) -> PublishReport: ...

    async def add_relay(self, url: str) -> bool: ...

    async def remove_relay(self, url: str) -> bool: ...


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

    def discard(self, event_id: str) -> None:
        self._ids.pop(event_id, None)

    def __len__(self) -> int:
        return len(self._ids)
