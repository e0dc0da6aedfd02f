"""The starter desk: offers leased to one provider at a time, with the original's endpoints.

An offer is `awaiting_ack` until its provider acks within `ack_window_s` (then `running`: the
Nexus signs a NIP-90 request p-tagged to the lessee, records it with the ack and publishes
it), heartbeats every `heartbeat_timeout_s` at most, and is paid by the treasury (`paying` →
`completed`) only for a result and an invoice signed by the lessee. It ends `released` (the
provider gave it back), `expired` (ack, heartbeat or execution window missed) or, when a
payment fails, `payment_failed` (retried with the same invoice until the lease ends).

Expiry is lazy and exact: every call first expires what is past its deadline (and so does the
first pass after a restart), so time is read only from the injected clock. A session has at
most `max_active` live offers and gets a new one at most every `dispatch_interval_s`; the sum
of live offers' prices stays within `reserve_cap_sats` and what was paid in the last 24 h
within `daily_cap_sats` (a dispatch checks and leases in one transaction, so concurrent
polls cannot both take the last room). The price of an offer that ends without payment goes
back to the budget. Every status change is a compare-and-set on the status it was read in
(`Offers.transition`), so two callers racing (an ack and an expiry, a release and a payment)
cannot both win. Each transition is a receipt, written in the same transaction.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from autopilotd.crashpoints import crash_point
from autopilotd.nexus.repos import (
    LeaseContext,
    NewOffer,
    Offer,
    Offers,
    Receipt,
    Receipts,
    Session,
)
from autopilotd.nostr.nip90 import KIND_EMBEDDINGS, KIND_TEXT_GENERATION
from autopilotd.runtime.clock import Clock
from autopilotd.vocab import OfferStatus

logger = logging.getLogger(__name__)

DAY_S = 86400.0


@dataclass(frozen=True)
class Template:
    kind: int
    prompt: str
    price_sats: int


DEFAULT_TEMPLATES: tuple[Template, ...] = (
    Template(KIND_TEXT_GENERATION, "Summarize in one sentence why the sea is salty.", 21),
    Template(KIND_TEXT_GENERATION, "Name three colours of a sunset, comma-separated.", 15),
    Template(KIND_EMBEDDINGS, "A starter job: embed this sentence.", 10),
    Template(KIND_TEXT_GENERATION, "Suggest a short, friendly name for a home server.", 12),
)


@dataclass(frozen=True)
class DeskSettings:
    ack_window_s: float = 15.0
    heartbeat_timeout_s: float = 30.0
    dispatch_interval_s: float = 12.0
    request_ttl_s: float = 75.0
    max_active: int = 1
    reserve_cap_sats: int = 5_000
    daily_cap_sats: int = 50_000
    templates: tuple[Template, ...] = field(default=DEFAULT_TEMPLATES)

    @property
    def heartbeat_interval_s(self) -> float:
        return max(1.0, self.heartbeat_timeout_s / 2)


class NexusError(Exception):
    """A refusal with its HTTP status and a stable code (the original's names where they fit)."""

    def __init__(self, status: int, code: str, message: str = "") -> None:
        super().__init__(message or code)
        self.status = status
        self.code = code
        self.message = message or code.replace("_", " ")


@dataclass(frozen=True)
class PollAnswer:
    eligible: bool
    reason: str | None
    offers: tuple[Offer, ...]
    budget: dict[str, int]

    def to_json(self, settings: DeskSettings) -> dict[str, Any]:
        return {
            "eligible": self.eligible,
            "reason": self.reason,
            "offers": [o.to_json() for o in self.offers],
            "budget": self.budget,
            "ack_window_s": settings.ack_window_s,
            "heartbeat_interval_s": settings.heartbeat_interval_s,
            "heartbeat_timeout_s": settings.heartbeat_timeout_s,
        }


Eligibility = Callable[[Session], Awaitable[str | None]]
"""Why a session may not get starter demand now (None: it may)."""
Funds = Callable[[int, int], str | None]
"""Why the treasury cannot take on an offer of this many msats, with this many already
reserved for live offers (None: it can)."""
Sign = Callable[[Offer], tuple[str, str]]
"""The offer's NIP-90 request, signed for its execution window: (event id, event JSON)."""
Publish = Callable[[Offer], Awaitable[None]]
"""Send the offer's recorded request (`request_json`) to the relay."""


class StarterDesk:
    def __init__(
        self,
        *,
        offers: Offers,
        receipts: Receipts,
        settings: DeskSettings,
        clock: Clock,
        eligibility: Eligibility,
        funds: Funds,
        sign: Sign,
        publish: Publish,
    ) -> None:
        self._offers = offers
        self._receipts = receipts
        self.settings = settings
        self._clock = clock
        self._eligibility = eligibility
        self._funds = funds
        self._sign = sign
        self._publish = publish
        self._next_template = 0

    # -- time ----------------------------------------------------------------------------------

    async def expire_due(self) -> list[Offer]:
        """Expire every live offer past one of its deadlines; the price goes back to the budget."""
        now = self._clock.now()
        expired: list[Offer] = []
        for offer in await self._offers.due(now):
            reason = _missed(offer, now)
            if reason is None:
                continue
            ended = await self._end(offer, OfferStatus.EXPIRED, reason, "offer.expired")
            if ended is not None:
                expired.append(ended)
        return expired

    async def _end(
        self, offer: Offer, status: OfferStatus, reason: str, receipt: str
    ) -> Offer | None:
        """End the offer from the status it was read in; None if it had moved on since."""
        ended = await self._offers.transition(
            offer.id,
            self._clock.now(),
            (offer.status,),
            Receipt(receipt, pubkey=offer.provider, detail=reason),
            status=status,
            reason=reason,
        )
        if ended is None:
            return None
        logger.info("starter offer %s %s: %s", offer.id, status.value, reason)
        return ended

    # -- the endpoints ---------------------------------------------------------------------

    async def budget(self) -> dict[str, int]:
        now = self._clock.now()
        reserved = await self._offers.reserved_msat()
        paid = await self._receipts.paid_msat(now - DAY_S)
        return self._budget(LeaseContext(0, None, reserved, paid))

    def _budget(self, context: LeaseContext) -> dict[str, int]:
        return {
            "reserve_cap_sats": self.settings.reserve_cap_sats,
            "reserved_sats": context.reserved_msat // 1000,
            "daily_cap_sats": self.settings.daily_cap_sats,
            "paid_24h_sats": context.paid_24h_msat // 1000,
        }

    async def poll(self, session: Session) -> PollAnswer:
        await self.expire_due()
        reason = await self._eligibility(session)
        if reason is not None:
            await self._receipts.add(
                "poll.ineligible", at=self._clock.now(), pubkey=session.pubkey, detail=reason
            )
            return PollAnswer(False, reason, (), await self.budget())
        now = self._clock.now()
        context, note = await self._offers.lease(
            session, now, now - DAY_S, functools.partial(self._decide, now)
        )
        offers = tuple(await self._offers.live_for(session.id))
        return PollAnswer(True, note, offers, self._budget(context))

    def _decide(self, now: float, context: LeaseContext) -> NewOffer | str | None:
        """A new offer for the session, if it may have one now; else why not (None: it has
        its offers, or had one too recently)."""
        s = self.settings
        if context.live >= s.max_active:
            return None
        last = context.last_dispatch_at
        if last is not None and now < last + s.dispatch_interval_s:
            return None
        room_msat = min(
            s.reserve_cap_sats * 1000 - context.reserved_msat,
            s.daily_cap_sats * 1000 - context.paid_24h_msat - context.reserved_msat,
        )
        template = self._template(room_msat // 1000)
        if template is None:
            return "starter_demand_budget_exhausted"
        short = self._funds(template.price_sats * 1000, context.reserved_msat)
        if short is not None:
            return short
        return NewOffer(
            template.kind, template.prompt, template.price_sats * 1000, now + s.ack_window_s
        )

    def _template(self, room_sats: int) -> Template | None:
        """The next template, round robin, among those that fit the budget left."""
        templates = self.settings.templates
        for step in range(len(templates)):
            candidate = templates[(self._next_template + step) % len(templates)]
            if candidate.price_sats <= room_sats:
                self._next_template = (self._next_template + step + 1) % len(templates)
                return candidate
        return None

    async def _own(self, session: Session, offer_id: str) -> Offer:
        offer = await self._offers.get(offer_id)
        if offer is None or offer.session_id != session.id:
            raise NexusError(404, "starter_offer_not_found")
        return offer

    async def republish(self) -> None:
        """At start: publish the request of every running lease again (the same signed event;
        a crash may have come between recording an ack and publishing its request)."""
        for offer in await self._offers.live():
            if offer.status is OfferStatus.RUNNING and offer.request_json:
                await self._publish(offer)

    async def ack(self, session: Session, offer_id: str) -> Offer:
        await self.expire_due()
        offer = await self._own(session, offer_id)
        if offer.status is OfferStatus.AWAITING_ACK:
            s, now = self.settings, self._clock.now()
            window = {
                "execution_started_at": now,
                "execution_expires_at": now + s.request_ttl_s,
                "last_heartbeat_at": now,
                "next_heartbeat_due_at": now + s.heartbeat_timeout_s,
            }
            request_id, request_json = self._sign(
                dataclasses.replace(
                    offer,
                    status=OfferStatus.RUNNING,
                    execution_started_at=now,
                    execution_expires_at=window["execution_expires_at"],
                )
            )
            started = await self._offers.transition(
                offer.id,
                now,
                (OfferStatus.AWAITING_ACK,),
                Receipt("offer.started", pubkey=offer.provider),
                status=OfferStatus.RUNNING,
                request_id=request_id,
                request_json=request_json,
                **window,
            )
            if started is not None:  # this ack won: only it publishes the request
                crash_point("nexus.after_ack_recorded")
                await self._publish(started)
                return started
            offer = await self._own(session, offer_id)  # another call moved it: answer as of now
        if offer.status in (OfferStatus.RUNNING, OfferStatus.PAYING):
            return offer  # acked already
        if offer.status is OfferStatus.EXPIRED and offer.reason:
            raise NexusError(409, offer.reason)
        raise NexusError(409, "starter_offer_not_ackable", f"the offer is {offer.status.value}")

    async def heartbeat(self, session: Session, offer_id: str) -> Offer:
        await self.expire_due()
        offer = await self._own(session, offer_id)
        if offer.status is OfferStatus.EXPIRED and offer.reason:
            raise NexusError(409, offer.reason)
        if offer.status not in (
            OfferStatus.RUNNING,
            OfferStatus.PAYING,
            OfferStatus.PAYMENT_FAILED,
        ):
            raise NexusError(409, "starter_offer_not_running", f"the offer is {offer.status.value}")
        now = self._clock.now()
        beat = await self._offers.transition(
            offer.id,
            now,
            (offer.status,),
            last_heartbeat_at=now,
            next_heartbeat_due_at=now + self.settings.heartbeat_timeout_s,
        )
        if beat is None:  # it moved on meanwhile (paid, expired): answer for where it is now
            return await self.heartbeat(session, offer_id)
        return beat

    async def fail(self, session: Session, offer_id: str, reason: str) -> Offer:
        await self.expire_due()
        offer = await self._own(session, offer_id)
        reason = reason.strip()[:200] or "failed"
        if offer.status in (OfferStatus.AWAITING_ACK, OfferStatus.RUNNING):
            released = await self._end(offer, OfferStatus.RELEASED, reason, "offer.released")
            if released is not None:
                return released
            offer = await self._own(session, offer_id)  # moved on meanwhile (paying, expired)
        if offer.status is OfferStatus.RELEASED:
            if offer.reason == reason:
                return offer
            raise NexusError(409, "starter_offer_already_released_with_different_reason")
        raise NexusError(409, "starter_offer_not_releasable", f"the offer is {offer.status.value}")

    async def complete(self, session: Session, offer_id: str, payment_hash: str) -> Offer:
        """The provider confirms the payment the treasury made; bound to its payment hash."""
        await self.expire_due()
        offer = await self._own(session, offer_id)
        matches = offer.payment_hash is not None and offer.payment_hash == payment_hash.lower()
        if offer.status is OfferStatus.COMPLETED:
            if matches:
                return offer
            raise NexusError(409, "starter_offer_already_completed_with_different_payment")
        if offer.status is OfferStatus.AWAITING_ACK:
            raise NexusError(409, "starter_offer_start_not_confirmed")
        if offer.status in (OfferStatus.PAYING, OfferStatus.PAYMENT_FAILED) and matches:
            raise NexusError(409, "starter_offer_payment_in_flight", "not settled yet; ask again")
        if offer.status in (OfferStatus.RUNNING, OfferStatus.PAYING, OfferStatus.PAYMENT_FAILED):
            raise NexusError(409, "starter_offer_payment_unknown", "the treasury paid no such hash")
        raise NexusError(409, "starter_offer_not_completable", f"the offer is {offer.status.value}")


def _missed(offer: Offer, now: float) -> str | None:
    """Which deadline a live offer has missed at `now`, if any."""
    if offer.status is OfferStatus.AWAITING_ACK and now > offer.start_confirm_by:
        return "starter_offer_start_confirm_missed"
    if offer.status in (OfferStatus.RUNNING, OfferStatus.PAYMENT_FAILED):
        if offer.execution_expires_at is not None and now > offer.execution_expires_at:
            return "starter_offer_execution_expired"
        if offer.next_heartbeat_due_at is not None and now > offer.next_heartbeat_due_at:
            return "starter_offer_heartbeat_missed"
    return None
