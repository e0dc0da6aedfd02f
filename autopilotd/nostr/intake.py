"""Provider intake: validate untrusted job requests cheapest-first into `JobRequest`s.

Two parts: `RequestParser`, pure (an event in, a `JobRequest` or a `Rejection` out, no state,
no policy), and `RequestValidator`, the admission policy around it (minimum bid, per-buyer
rate, signature, counters). `RequestValidator.validate` runs the checks of RELIABILITY N1-N5
in exactly this order and stops at the first failure, so junk costs as little as possible
and no compute, job row or invoice ever follows a rejection:

1. size and tag caps (64 KiB event, 2,000 tags, 1,024-byte tag values) and NIP-01 shape;
2. kind served (5050 text generation, `KIND_EMBEDDINGS`);
3. target: `p` tags that do not name us mean "not for us" (an encrypted request must name us);
4. freshness: `created_at` within [now - max_age, now + max_future]; NIP-40 `expiration` in
   the future; `created_at` + job ttl in the future;
5. bid: a `bid` tag in msats, at least the configured minimum (for an encrypted request the
   content is decrypted first, NIP-44 then NIP-04, since the bid and inputs live inside;
   garbage is `undecryptable`);
6. per-buyer limits: a token bucket per pubkey, bounded in memory. It is only *looked at*
   here; a token is taken after the signature check, so forged events that claim someone
   else's pubkey cannot drain that buyer's allowance;
7. id hash and BIP-340 signature (nostr-sdk), then the `i`/`param` tags are parsed.

The result is a `JobRequest` or a `Rejection` with a `RejectReason`; `validate` never raises
for bad input. `counters` counts each outcome per reason for the snapshot.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from autopilotd.nostr import crypto
from autopilotd.nostr.events import (
    EventCaps,
    ShapeError,
    SignedEvent,
    check_tags,
    parse_raw,
    verify,
)
from autopilotd.nostr.identity import NostrIdentity
from autopilotd.nostr.nip90 import SERVED_KINDS, JobInput, JobRequest
from autopilotd.nostr.reasons import Rejection, RejectionCounters, RejectReason

logger = logging.getLogger(__name__)

MAX_MSAT = 21_000_000 * 100_000_000 * 1000
"""No bid can exceed all bitcoin, in msats; larger numbers are not bids."""

_PRIVATE_TAGS = frozenset({"i", "param", "bid", "output", "relays"})


@dataclass(frozen=True)
class IntakePolicy:
    """What this provider accepts. Defaults suit a small home provider."""

    served_kinds: frozenset[int] = SERVED_KINDS
    min_bid_msat: int = 1000
    max_age_s: int = 600
    max_future_s: int = 120
    job_ttl_s: int = 600
    buyer_burst: int = 5
    """Requests a buyer may send at once …"""
    buyer_refill_per_s: float = 0.2
    """… and the sustained rate after that (0.2/s = 12 per minute)."""
    max_buyers_tracked: int = 10_000
    """Token buckets kept in memory (least recently used dropped first)."""
    max_tokens_cap: int = 1_000_000
    caps: EventCaps = field(default_factory=EventCaps)


class TokenBuckets:
    """A token bucket per key with bounded memory (LRU eviction; an evicted key starts full)."""

    def __init__(self, capacity: int, refill_per_s: float, max_keys: int) -> None:
        if capacity < 1 or refill_per_s < 0 or max_keys < 1:
            raise ValueError("capacity >= 1, refill >= 0 and max_keys >= 1 are required")
        self.capacity = float(capacity)
        self.refill_per_s = refill_per_s
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, key: str, now: float) -> float:
        entry = self._buckets.get(key)
        if entry is None:
            return self.capacity
        tokens, updated = entry
        return min(self.capacity, tokens + max(0.0, now - updated) * self.refill_per_s)

    def allows(self, key: str, now: float) -> bool:
        """Would `take` succeed now? (Changes nothing.)"""
        return self._level(key, now) >= 1.0

    def take(self, key: str, now: float) -> bool:
        """Take one token if there is one."""
        level = self._level(key, now)
        if level < 1.0:
            return False
        self._buckets[key] = (level - 1.0, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._buckets)


def _decimal(value: str, limit: int) -> int | None:
    """A non-negative decimal integer of at most `limit`, or None (no signs, no spaces)."""
    if not value or len(value) > 20 or not value.isascii() or not value.isdigit():
        return None
    number = int(value)
    return number if number <= limit else None


def _float(value: str, low: float, high: float, low_open: bool = False) -> float | None:
    if len(value) > 32:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    if not math.isfinite(number) or number > high or number < low:
        return None
    if low_open and number == low:
        return None
    return number


@dataclass(frozen=True)
class Screened:
    """A request past the cheap checks (1–5 of the module doc), before policy and signature."""

    raw: SignedEvent
    tags: tuple[tuple[str, ...], ...]
    bid_msat: int
    expires_at: int
    targets: tuple[str, ...]
    scheme: crypto.Scheme | None


class RequestParser:
    """Turns an event addressed to `identity` into a `JobRequest`: pure, no policy, no state.

    `screen` runs checks 1–5 (with the bid read but not compared), `build` reads the `i` and
    `param` tags. `parse` is both at once, without the signature check: it is for requests
    this daemon stored after admitting them, parsed again as of when they arrived.
    """

    def __init__(self, identity: NostrIdentity, policy: IntakePolicy) -> None:
        self.identity = identity
        self.policy = policy

    def parse(self, data: str | SignedEvent, *, now: float) -> JobRequest | Rejection:
        screened = self.screen(data, now)
        return screened if isinstance(screened, Rejection) else self.build(screened)

    def screen(
        self, data: str | bytes | Mapping[str, Any] | SignedEvent, now: float
    ) -> Screened | Rejection:
        policy = self.policy
        raw = data if isinstance(data, SignedEvent) else parse_raw(data, policy.caps)
        if isinstance(raw, ShapeError):
            return Rejection(RejectReason(raw.reason), raw.detail)

        def reject(reason: RejectReason, detail: str) -> Rejection:
            return Rejection(reason, detail, raw.id, raw.pubkey)

        if raw.kind not in policy.served_kinds:
            return reject(RejectReason.WRONG_KIND, f"kind {raw.kind} is not served")

        encrypted = raw.first("encrypted") is not None
        targets = tuple(t[1] for t in raw.all("p") if len(t) > 1)
        me = self.identity.pubkey_hex
        if (targets or encrypted) and me not in targets:
            return reject(RejectReason.NOT_FOR_US, "addressed to other providers")

        if raw.created_at < now - policy.max_age_s:
            return reject(RejectReason.TOO_OLD, "created_at is before the accepted window")
        if raw.created_at > now + policy.max_future_s:
            return reject(RejectReason.FROM_FUTURE, "created_at is too far in the future")
        expires_at = raw.created_at + policy.job_ttl_s
        expiration = raw.first("expiration")
        if expiration is not None:
            stamp = _decimal(expiration[1], 2**63) if len(expiration) > 1 else None
            if stamp is None:
                return reject(RejectReason.MALFORMED, "expiration is not a timestamp")
            expires_at = min(expires_at, stamp)
        if expires_at <= now:
            return reject(RejectReason.EXPIRED, "expired (NIP-40 or job ttl)")

        tags = raw.tags
        scheme: crypto.Scheme | None = None
        if encrypted:
            opened = self._open(raw)
            if isinstance(opened, Rejection):
                return opened
            inner, scheme = opened
            tags = tags + tuple(t for t in inner if t[0] in _PRIVATE_TAGS)

        bid = next((t for t in tags if t[0] == "bid"), None)
        if bid is None or len(bid) < 2:
            return reject(RejectReason.NO_BID, "no bid tag")
        bid_msat = _decimal(bid[1], MAX_MSAT)
        if bid_msat is None:
            return reject(RejectReason.BAD_BID, "bid is not an amount in msats")
        return Screened(raw, tags, bid_msat, expires_at, targets, scheme)

    def _open(
        self, raw: SignedEvent
    ) -> tuple[tuple[tuple[str, ...], ...], crypto.Scheme] | Rejection:
        """Decrypt an encrypted request's content into its private tags."""
        undecryptable = Rejection(RejectReason.UNDECRYPTABLE, "", raw.id, raw.pubkey)
        opened = crypto.decrypt(self.identity, raw.pubkey, raw.content)
        if opened is None:
            return undecryptable
        plain, scheme = opened
        try:
            inner = json.loads(plain)
        except (ValueError, RecursionError):
            return undecryptable
        checked = check_tags(inner, self.policy.caps)
        if isinstance(checked, ShapeError):
            return Rejection(RejectReason(checked.reason), checked.detail, raw.id, raw.pubkey)
        return checked, scheme

    def build(self, screened: Screened) -> JobRequest | Rejection:
        """Read the inputs and parameters of a screened request."""
        raw, tags, bid_msat = screened.raw, screened.tags, screened.bid_msat

        def malformed(detail: str) -> Rejection:
            return Rejection(RejectReason.MALFORMED, detail, raw.id, raw.pubkey)

        inputs: list[JobInput] = []
        params: list[tuple[str, str]] = []
        output: str | None = None
        relays: tuple[str, ...] = ()
        for tag in tags:
            name = tag[0]
            if name == "i":
                if len(tag) < 2:
                    return malformed("an i tag without data")
                inputs.append(
                    JobInput(
                        data=tag[1],
                        type=tag[2] if len(tag) > 2 and tag[2] else "text",
                        relay=tag[3] if len(tag) > 3 and tag[3] else None,
                        marker=tag[4] if len(tag) > 4 and tag[4] else None,
                    )
                )
            elif name == "param" and len(tag) >= 3:
                params.append((tag[1], tag[2]))
            elif name == "output" and len(tag) > 1:
                output = tag[1]
            elif name == "relays":
                relays = tag[1:]
        if not inputs:
            return malformed("no input (i tag)")
        known: dict[str, Any] = {}
        for key, value in params:
            if key == "model":
                known["model"] = value
            elif key == "max_tokens":
                known["max_tokens"] = _decimal(value, self.policy.max_tokens_cap)
                if not known["max_tokens"]:
                    return malformed("max_tokens is not a positive integer within the cap")
            elif key == "temperature":
                known["temperature"] = _float(value, 0.0, 2.0)
                if known["temperature"] is None:
                    return malformed("temperature is not a number in [0, 2]")
            elif key == "top_p":
                known["top_p"] = _float(value, 0.0, 1.0, low_open=True)
                if known["top_p"] is None:
                    return malformed("top_p is not a number in (0, 1]")
        return JobRequest(
            id=raw.id,
            pubkey=raw.pubkey,
            kind=raw.kind,
            created_at=raw.created_at,
            expires_at=screened.expires_at,
            bid_msat=bid_msat,
            inputs=tuple(inputs),
            params=tuple(params),
            output=output,
            relays=relays,
            targets=screened.targets,
            encrypted=screened.scheme is not None,
            scheme=screened.scheme,
            json=raw.json,
            **known,
        )


class RequestValidator:
    """Admission of untrusted requests: the parser, then this provider's policy (the minimum
    bid, each buyer's rate), then the signature, counting every outcome by reason."""

    def __init__(
        self,
        identity: NostrIdentity,
        policy: IntakePolicy | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.identity = identity
        self.parser = RequestParser(identity, policy or IntakePolicy())
        self.clock = clock
        self.counters = RejectionCounters()
        self.buckets = TokenBuckets(
            self.policy.buyer_burst, self.policy.buyer_refill_per_s, self.policy.max_buyers_tracked
        )

    @property
    def policy(self) -> IntakePolicy:
        return self.parser.policy

    def set_min_bid(self, min_bid_msat: int) -> None:
        """A changed price applies from the next request."""
        self.parser.policy = dataclasses.replace(self.policy, min_bid_msat=min_bid_msat)

    def validate(
        self,
        data: str | bytes | Mapping[str, Any] | SignedEvent,
        *,
        now: float | None = None,
        min_bid_msat: int | None = None,
    ) -> JobRequest | Rejection:
        """One untrusted event in, a `JobRequest` or a `Rejection` out; never raises for input.

        `data` is the event's JSON (text, bytes or decoded), or the `SignedEvent` an
        `IncomingEvent` carries (already shape-checked with the same caps). `min_bid_msat`
        replaces the policy's minimum for this one request (a job source's own price).
        """
        minimum = self.policy.min_bid_msat if min_bid_msat is None else min_bid_msat
        outcome = self._validate(data, self.clock() if now is None else now, minimum)
        if isinstance(outcome, Rejection):
            self.counters.add(outcome.reason)
            logger.debug(
                "request %s rejected: %s (%s)", outcome.event_id, outcome.reason, outcome.detail
            )
        else:
            self.counters.accepted += 1
        return outcome

    def _validate(
        self, data: str | bytes | Mapping[str, Any] | SignedEvent, now: float, min_bid_msat: int
    ) -> JobRequest | Rejection:
        screened = self.parser.screen(data, now)
        if isinstance(screened, Rejection):
            return screened
        raw = screened.raw
        if screened.bid_msat < min_bid_msat:
            return Rejection(
                RejectReason.BID_TOO_LOW,
                f"bid {screened.bid_msat} < {min_bid_msat}",
                raw.id,
                raw.pubkey,
            )
        if not self.buckets.allows(raw.pubkey, now):
            return Rejection(
                RejectReason.RATE_LIMITED, "buyer is over its request rate", raw.id, raw.pubkey
            )
        checked = verify(raw)
        if isinstance(checked, str):
            return Rejection(
                RejectReason(checked), "id or signature check failed", raw.id, raw.pubkey
            )
        self.buckets.take(raw.pubkey, now)
        return self.parser.build(screened)
