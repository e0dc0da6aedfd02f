"""Paying starter jobs: only the lessee's result, only its invoice, at most the offer price.

The payouts follow the NIP-90 answers to every live offer's request on the Nexus's own
relay. When the lessee has sent a result (of the request's result kind) *and* a
payment-required invoice (both signed by the lessee, both about the offer's request) and the
lease still holds, the invoice is decoded by the treasury itself; its amount must be at most
the offer's price, and no other offer may hold its payment hash. The offer is then recorded
`paying`, bound to the invoice's payment hash, before the treasury is asked to pay it once,
from a timer (the wallet keys sends by payment hash, so a retry, a restart or a second
invoice event never pays twice). Settled: `completed`, with a receipt. Failed:
`payment_failed`, retried with the same invoice every `RETRY_S` until the lease ends; a
treasury that is not ready is asked again later, the offer still `paying`. Anything from
anyone else, an invoice above the price, or an invoice for a lease that has ended, is
ignored (a later invoice of the lessee's may still be paid).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

from autopilotd.crashpoints import crash_point
from autopilotd.errors import NotReady, UserError
from autopilotd.nexus.desk import StarterDesk
from autopilotd.nexus.repos import Offer, Offers, Receipt
from autopilotd.nostr.events import SignedEvent
from autopilotd.nostr.nip90 import KIND_FEEDBACK, SERVED_KINDS, result_kind
from autopilotd.nostr.nip90_buyer import parse_amount
from autopilotd.ports.payments import Payer
from autopilotd.ports.relays import RelaySubscription, SubscriptionFilter
from autopilotd.runtime.clock import Clock
from autopilotd.runtime.timers import Timers
from autopilotd.vocab import OfferStatus, PaymentStatus

logger = logging.getLogger(__name__)

RETRY_S = 5.0


@dataclass
class _Answers:
    result: str | None = None  # the lessee's result event id
    bolt11: str | None = None  # the lessee's invoice
    seen: set[str] = field(default_factory=set)


class Payouts:
    def __init__(
        self,
        *,
        subscription: RelaySubscription,
        desk: StarterDesk,
        offers: Offers,
        treasury: Payer,
        clock: Clock,
        timers: Timers,
    ) -> None:
        self._sub = subscription
        self._desk = desk
        self._offers = offers
        self._treasury = treasury
        self._clock = clock
        self._timers = timers
        self._answers: dict[str, _Answers] = {}
        self._following: tuple[str, ...] = ()

    async def follow(self) -> None:
        """Subscribe to the answers to every live offer's request (after an ack, at start)."""
        ids = tuple(await self._offers.live_requests())
        if ids == self._following:
            return
        self._following = ids
        kinds = (KIND_FEEDBACK, *sorted(result_kind(k) for k in SERVED_KINDS))
        await self._sub.set_filters([SubscriptionFilter(kinds=kinds, e=ids)] if ids else [])

    async def resume(self) -> None:
        """After a restart: a payment in flight is asked of the wallet again (it answers the
        first outcome, never paying twice), off the start's path."""
        for offer in await self._offers.live():
            if offer.status in (OfferStatus.PAYING, OfferStatus.PAYMENT_FAILED) and offer.bolt11:
                self._pay_at(offer.id, self._clock.now())
        await self.follow()

    async def run(self) -> None:
        async for incoming in self._sub.events():
            await self.consider(incoming.event)

    async def consider(self, event: SignedEvent) -> None:
        """Take one NIP-90 answer into account (anything not from a live lease's lessee, about
        its request, is ignored)."""
        offer = None
        for tag in event.all("e"):
            offer = await self._offers.by_request(tag[1]) if len(tag) > 1 else None
            if offer is not None:
                break
        if offer is None or offer.status is not OfferStatus.RUNNING:
            if offer is not None:
                self._answers.pop(offer.id, None)
            return  # not about a lease that can still be paid
        if event.pubkey != offer.provider:
            return  # not from its lessee
        if event.kind not in (KIND_FEEDBACK, result_kind(offer.kind)):
            return
        answers = self._answers.setdefault(offer.id, _Answers())
        if event.id in answers.seen:
            return
        answers.seen.add(event.id)
        if event.kind == KIND_FEEDBACK:
            status = event.first("status")
            _, bolt11 = parse_amount(event.first("amount"))
            if status is not None and len(status) > 1 and status[1] == "payment-required":
                answers.bolt11 = answers.bolt11 or bolt11
        else:
            answers.result = answers.result or event.id
        if answers.result and answers.bolt11:
            await self._settle(offer.id)

    async def _settle(self, offer_id: str) -> None:
        """Bind a running lease to its lessee's invoice (`paying`) and have it paid."""
        await self._desk.expire_due()  # a lease that has ended is never paid
        offer = await self._offers.get(offer_id)
        if offer is None or offer.status is not OfferStatus.RUNNING:
            self._answers.pop(offer_id, None)  # ended: nothing of it will be paid
            return
        answers = self._answers.get(offer_id)
        bolt11 = answers.bolt11 if answers is not None else None
        if answers is None or bolt11 is None:
            return
        try:
            invoice = self._treasury.decode_invoice(bolt11)
        except NotReady:
            retry = functools.partial(self._settle, offer.id)
            self._timers.at(f"settle {offer.id}", self._clock.now() + RETRY_S, retry)
            return
        except UserError as exc:
            logger.warning("offer %s: the provider's invoice is not valid: %s", offer.id, exc)
            answers.bolt11 = None  # ignored: a later invoice of the lessee's may be paid
            return
        if invoice.amount_msat is None or invoice.amount_msat > offer.price_msat:
            logger.warning("offer %s: invoice above the offer price, not paid", offer.id)
            answers.bolt11 = None
            return
        if await self._offers.by_payment_hash(invoice.payment_hash) is not None:
            logger.warning("offer %s: invoice already bound to an offer, not paid", offer.id)
            answers.bolt11 = None
            return
        paying = await self._offers.transition(
            offer.id,
            self._clock.now(),
            (OfferStatus.RUNNING,),
            status=OfferStatus.PAYING,
            payment_hash=invoice.payment_hash,
            bolt11=bolt11,
        )
        if paying is not None:
            crash_point("nexus.after_paying_recorded")
            self._pay_at(offer.id, self._clock.now())

    def _pay_at(self, offer_id: str, when: float) -> None:
        """Ask the wallet to pay the offer's invoice at `when` (a timer: a payment that takes
        its time holds up neither the answers nor the start)."""

        async def pay() -> None:
            await self._desk.expire_due()  # a failed payment is retried only while the lease holds
            offer = await self._offers.get(offer_id)
            if offer is not None and offer.status is OfferStatus.PAYMENT_FAILED:
                offer = await self._offers.transition(
                    offer_id,
                    self._clock.now(),
                    (OfferStatus.PAYMENT_FAILED,),
                    status=OfferStatus.PAYING,
                )
            if offer is not None and offer.status is OfferStatus.PAYING:
                await self._pay(offer)

        self._timers.at(f"pay {offer_id}", when, pay)

    async def _pay(self, offer: Offer) -> None:
        assert offer.bolt11 is not None
        try:
            outcome = await self._treasury.pay_invoice(
                offer.bolt11, description=f"nexus starter {offer.id}"
            )
        except NotReady as exc:  # the treasury is not ready: still paying, asked again later
            logger.warning("offer %s: the treasury cannot pay now: %s", offer.id, exc.message)
            self._pay_at(offer.id, self._clock.now() + RETRY_S)
            return
        except UserError as exc:
            await self._failed(offer, exc.message)
            return
        now = self._clock.now()
        if outcome.status is PaymentStatus.SUCCEEDED:
            crash_point("nexus.after_paid")
            await self._offers.transition(
                offer.id,
                now,
                (OfferStatus.PAYING,),
                Receipt("offer.paid", pubkey=offer.provider, amount_msat=outcome.amount_msat),
                status=OfferStatus.COMPLETED,
                paid_at=now,
                reason=None,
            )
            self._answers.pop(offer.id, None)
            await self.follow()
        elif outcome.status is PaymentStatus.FAILED:
            await self._failed(offer, outcome.failure or "failed")
        else:  # still in flight: ask again later (it is never paid twice)
            self._pay_at(offer.id, now + RETRY_S)

    async def _failed(self, offer: Offer, reason: str) -> None:
        now = self._clock.now()
        failed = await self._offers.transition(
            offer.id,
            now,
            (OfferStatus.PAYING,),
            Receipt("offer.payment_failed", pubkey=offer.provider, detail=reason[:200]),
            status=OfferStatus.PAYMENT_FAILED,
            reason=reason[:200],
        )
        if failed is not None:
            self._pay_at(offer.id, now + RETRY_S)
