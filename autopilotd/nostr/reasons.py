"""Why an incoming event was refused: one fixed set of stable reason codes, and counters.

The codes are part of the observable contract (snapshot counters, session log, tests), so
they never change meaning; new ones may be added. Intake reports them in check order.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass


class RejectReason(enum.StrEnum):
    TOO_LARGE = "too-large"
    TOO_MANY_TAGS = "too-many-tags"
    TAG_TOO_LONG = "tag-too-long"
    MALFORMED = "malformed"
    WRONG_KIND = "kind-not-served"
    NOT_FOR_US = "not-for-us"
    TOO_OLD = "too-old"
    FROM_FUTURE = "from-future"
    EXPIRED = "expired"
    NO_BID = "missing-bid"
    BAD_BID = "bad-bid"
    BID_TOO_LOW = "bid-below-minimum"
    RATE_LIMITED = "rate-limited"
    BAD_ID = "bad-id"
    BAD_SIGNATURE = "bad-signature"
    UNDECRYPTABLE = "undecryptable"
    SOURCE_REFUSED = "source-refused"  # a job source (a Nexus) claimed it and refused it
    ALREADY_TAKEN = "already-taken"  # a request this provider has a job for, sent again


@dataclass(frozen=True)
class Rejection:
    """An event we will not act on: a stable `reason`, a short `detail` for logs (never shown
    with event text), and the claimed id/pubkey when they could be read (unverified)."""

    reason: RejectReason
    detail: str = ""
    event_id: str | None = None
    pubkey: str | None = None


class RejectionCounters:
    """Counts per reason, plus accepted; `snapshot()` is a plain copy for the Snapshot."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self.accepted = 0

    def add(self, reason: RejectReason) -> None:
        self._counts[reason.value] += 1

    def __getitem__(self, reason: RejectReason) -> int:
        return self._counts[reason.value]

    @property
    def rejected(self) -> int:
        return sum(self._counts.values())

    def snapshot(self) -> dict[str, int]:
        """Every reason with its count (zeros included, in enum order)."""
        return {r.value: self._counts[r.value] for r in RejectReason}
