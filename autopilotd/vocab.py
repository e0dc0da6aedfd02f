"""The daemon's vocabularies, each defined once: job stages and sources, outbox purposes,
payment directions and statuses, buy-request statuses, and the earnings milestones.

Each StrEnum's values are exactly the values its table's CHECK constraint admits
(store/migrations.py); a test holds the two together. Values are what the JSON surfaces show.
"""

from __future__ import annotations

import enum


class JobStage(enum.StrEnum):
    """A provider job's stage, named after NIP-90's flow (see provider/flow.py)."""

    RECEIVED = "received"
    ACCEPTED = "accepted"
    RUNNING = "running"
    DELIVERED = "delivered"
    PAID = "paid"
    DELIVERED_UNPAID = "delivered_unpaid"
    FAILED = "failed"
    REJECTED = "rejected"

    @property
    def is_open(self) -> bool:
        """Still moving: the flow (or the buyer's payment) has work left to do."""
        return self in OPEN_STAGES


OPEN_STAGES: frozenset[JobStage] = frozenset(
    {JobStage.RECEIVED, JobStage.ACCEPTED, JobStage.RUNNING, JobStage.DELIVERED}
)
WORKING_STAGES: frozenset[JobStage] = frozenset(
    {JobStage.RECEIVED, JobStage.ACCEPTED, JobStage.RUNNING}
)
"""Stages in which the job still needs this machine's work (before the result is out)."""

NEXT_STAGES: dict[JobStage, frozenset[JobStage]] = {
    JobStage.RECEIVED: frozenset({JobStage.ACCEPTED, JobStage.REJECTED, JobStage.FAILED}),
    JobStage.ACCEPTED: frozenset({JobStage.RUNNING, JobStage.FAILED}),
    JobStage.RUNNING: frozenset({JobStage.DELIVERED, JobStage.FAILED}),
    JobStage.DELIVERED: frozenset({JobStage.PAID, JobStage.DELIVERED_UNPAID}),
    # a late payment still counts: the wallet says it settled
    JobStage.DELIVERED_UNPAID: frozenset({JobStage.PAID}),
    JobStage.PAID: frozenset(),
    JobStage.FAILED: frozenset(),
    JobStage.REJECTED: frozenset(),
}
"""The only moves a job may make; every other move is refused by the jobs repository."""


class JobSource(enum.StrEnum):
    """Where a job came from: the open network, or a Nexus's starter demand."""

    NOSTR = "nostr"
    STARTER = "starter"


class OutboxPurpose(enum.StrEnum):
    """Which of a job's events an outbox row holds (one of each per job at most)."""

    PROCESSING = "processing"
    RESULT = "result"
    PAYMENT_REQUIRED = "payment_required"
    SUCCESS = "success"
    ERROR = "error"


class PaymentDirection(enum.StrEnum):
    IN = "in"
    OUT = "out"


class PaymentStatus(enum.StrEnum):
    """A wallet ledger row's status (RELIABILITY M1–M9).

    intent: recorded, not yet handed to the node; pending: the node is paying; succeeded and
    failed: final; unknown: the outcome is not proven (its reserve is kept).
    """

    INTENT = "intent"
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"


OPEN_PAYMENT_STATUSES: frozenset[PaymentStatus] = frozenset(
    {PaymentStatus.INTENT, PaymentStatus.PENDING, PaymentStatus.UNKNOWN}
)


class OnchainKind(enum.StrEnum):
    """What an on-chain send of the wallet is: an amount to an address, or a cash-out (close
    every channel, then everything to an address)."""

    SEND = "send"
    CASH_OUT = "cash_out"


class OnchainStatus(enum.StrEnum):
    """An on-chain send's status (wallet/onchain.py).

    closing: a cash-out's channels are closing; intent: recorded, about to be handed to the
    node; broadcast: the node built and broadcast it (txid known); confirmed: in a block, its
    fee and amount from the node's record; failed: nothing was sent, with the reason; unknown:
    autopilotd stopped between recording it and the node's answer, and the node's record
    shows no matching transaction yet.
    """

    CLOSING = "closing"
    INTENT = "intent"
    BROADCAST = "broadcast"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    UNKNOWN = "unknown"


OPEN_ONCHAIN_STATUSES: frozenset[OnchainStatus] = frozenset(
    {OnchainStatus.CLOSING, OnchainStatus.INTENT, OnchainStatus.BROADCAST, OnchainStatus.UNKNOWN}
)


class BuyStatus(enum.StrEnum):
    """One of our own requests as a buyer (buyer/service.py)."""

    OPEN = "open"
    PAYING = "paying"
    PAID = "paid"
    DONE = "done"
    FAILED = "failed"
    EXPIRED = "expired"


FINISHED_BUY_STATUSES: frozenset[BuyStatus] = frozenset(
    {BuyStatus.DONE, BuyStatus.FAILED, BuyStatus.EXPIRED}
)

MILESTONES_SATS: tuple[int, ...] = (10, 25, 50, 100)
"""Lifetime earnings worth celebrating, each once (reached in the credit that crosses it)."""


class OfferStatus(enum.StrEnum):
    """A Nexus starter offer, one lease to one provider (nexus/desk.py).

    awaiting_ack → running → paying → completed; or released (the provider gave it back),
    expired (ack, heartbeat or execution window missed), payment_failed (retried with the
    same invoice until the lease ends).
    """

    AWAITING_ACK = "awaiting_ack"
    RUNNING = "running"
    PAYING = "paying"
    COMPLETED = "completed"
    RELEASED = "released"
    EXPIRED = "expired"
    PAYMENT_FAILED = "payment_failed"


LIVE_OFFER_STATUSES: frozenset[OfferStatus] = frozenset(
    {
        OfferStatus.AWAITING_ACK,
        OfferStatus.RUNNING,
        OfferStatus.PAYING,
        OfferStatus.PAYMENT_FAILED,
    }
)
"""Offers whose price is still reserved from the budget."""
