"""Payouts in isolation: `consider` fed events signed by test identities, a fake treasury
(`Payer`), the real desk and repositories on a database, the clock moved by the test. A case
that must not pay checks the offer is still `running` once `consider` returns: binding an
invoice (`paying`) is the only way to a payment."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.nexus import until

from autopilotd.errors import NotReady, UserError
from autopilotd.nexus.desk import DeskSettings, StarterDesk, Template
from autopilotd.nexus.migrations import NEXUS_MIGRATIONS
from autopilotd.nexus.payouts import RETRY_S, Payouts
from autopilotd.nexus.repos import Offer, Offers, Receipts, Session, Sessions
from autopilotd.nostr.events import SignedEvent
from autopilotd.nostr.identity import NostrIdentity, generate_identity
from autopilotd.nostr.intake import IntakePolicy, RequestParser
from autopilotd.nostr.nip90 import FeedbackStatus, JobRequest, build_feedback, build_result, sign
from autopilotd.nostr.nip90_buyer import build_job_request
from autopilotd.ports.payments import DecodedInvoice, PayOutcome
from autopilotd.ports.relays import IncomingEvent, SubscriptionFilter
from autopilotd.runtime.clock import ManualClock
from autopilotd.runtime.timers import Timers
from autopilotd.store import Store
from autopilotd.vocab import OfferStatus, PaymentStatus

PRICE_MSAT = 21_000


class Subscription:
    name = "payouts"

    def __init__(self) -> None:
        self.filters: Sequence[SubscriptionFilter] = ()

    async def set_filters(self, filters: Sequence[SubscriptionFilter]) -> None:
        self.filters = filters

    async def events(self) -> AsyncIterator[IncomingEvent]:
        await asyncio.Event().wait()
        yield  # type: ignore[misc]  # never: the tests call `consider`


@dataclass
class Treasury:
    """A `Payer` whose invoices are made up by the test and whose sends are recorded."""

    invoices: dict[str, DecodedInvoice] = field(default_factory=dict)
    paid: list[str] = field(default_factory=list)
    not_ready: dict[str, int] = field(default_factory=dict)  # call → how many more refusals

    def invoice(self, amount_msat: int | None = PRICE_MSAT) -> str:
        payment_hash = hashlib.sha256(str(len(self.invoices)).encode()).hexdigest()
        bolt11 = f"lnbcrt{amount_msat}test{payment_hash}"
        self.invoices[bolt11] = DecodedInvoice(payment_hash, amount_msat, "", 2**40, "regtest")
        return bolt11

    def check_ready(self) -> None:
        return None

    def _ready(self, call: str) -> None:
        if self.not_ready.get(call):
            self.not_ready[call] -= 1
            raise NotReady("the wallet is syncing")

    def decode_invoice(self, bolt11: str) -> DecodedInvoice:
        self._ready("decode")
        if bolt11 not in self.invoices:
            raise UserError("that is not a valid BOLT11 invoice")
        return self.invoices[bolt11]

    async def pay_invoice(self, bolt11: str, *, description: str) -> PayOutcome:
        self._ready("pay")
        invoice = self.invoices[bolt11]
        repeated = invoice.payment_hash in self.paid
        if not repeated:
            self.paid.append(invoice.payment_hash)
        assert invoice.amount_msat is not None
        return PayOutcome(
            invoice.payment_hash, PaymentStatus.SUCCEEDED, invoice.amount_msat, 0, None, repeated
        )


@dataclass
class Bench:
    clock: ManualClock
    desk: StarterDesk
    offers: Offers
    sessions: Sessions
    payouts: Payouts
    treasury: Treasury
    nexus: NostrIdentity
    lessee: NostrIdentity

    async def lease(self, identity: NostrIdentity | None = None) -> tuple[Offer, JobRequest]:
        """A new session for `identity` (the lessee by default) with one acked offer."""
        identity = identity or self.lessee
        session = Session(
            "sess_" + secrets.token_hex(8),
            identity.pubkey_hex,
            secrets.token_hex(32),
            "",
            self.clock.now(),
            self.clock.now() + 86_400,
            None,
        )
        await self.sessions.add(session)
        answer = await self.desk.poll(session)
        offer = await self.desk.ack(session, answer.offers[0].id)
        assert offer.request_json is not None
        request = RequestParser(identity, IntakePolicy()).parse(
            offer.request_json, now=self.clock.now()
        )
        assert isinstance(request, JobRequest)
        await self.payouts.follow()
        return offer, request

    async def status(self, offer: Offer) -> OfferStatus:
        found = await self.offers.get(offer.id)
        assert found is not None
        return found.status

    async def settled(self, offer: Offer) -> Offer:
        async def done() -> bool:
            return await self.status(offer) is OfferStatus.COMPLETED

        await until(done, timeout=5)
        found = await self.offers.get(offer.id)
        assert found is not None
        return found


def invoice_event(who: NostrIdentity, request: JobRequest, bolt11: str) -> SignedEvent:
    return build_feedback(
        who, request, FeedbackStatus.PAYMENT_REQUIRED, amount_msat=PRICE_MSAT, bolt11=bolt11
    )


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    store = await Store.open(tmp_path / "nexus.sqlite3", NEXUS_MIGRATIONS)
    clock = ManualClock()
    nexus, lessee = generate_identity(), generate_identity()
    offers, sessions, receipts = Offers(store), Sessions(store), Receipts(store)

    def sign_request(offer: Offer) -> tuple[str, str]:
        assert offer.execution_expires_at is not None
        event = build_job_request(
            nexus,
            offer.kind,
            offer.prompt,
            bid_msat=offer.price_msat,
            providers=[offer.provider],
            expires_at=int(offer.execution_expires_at),
            created_at=int(clock.now()),
            extra_tags=[["starter", offer.id]],
        )
        return event.id, event.json

    async def eligible(session: Session) -> str | None:
        return None

    async def published(offer: Offer) -> None:
        return None

    desk = StarterDesk(
        offers=offers,
        receipts=receipts,
        settings=DeskSettings(
            dispatch_interval_s=0, templates=(Template(5050, "Say hi.", PRICE_MSAT // 1000),)
        ),
        clock=clock,
        eligibility=eligible,
        funds=lambda price, reserved: None,
        sign=sign_request,
        publish=published,
    )
    treasury = Treasury()
    timers = Timers(clock)
    payouts = Payouts(
        subscription=Subscription(),
        desk=desk,
        offers=offers,
        treasury=treasury,
        clock=clock,
        timers=timers,
    )
    try:
        async with asyncio.TaskGroup() as tg:
            running = tg.create_task(timers.run())
            yield Bench(clock, desk, offers, sessions, payouts, treasury, nexus, lessee)
            running.cancel()
    finally:
        await store.close()


async def test_only_the_lessees_own_result_and_invoice_are_paid(bench: Bench) -> None:
    offer, request = await bench.lease()
    stranger = generate_identity()
    theirs = bench.treasury.invoice()
    await bench.payouts.consider(build_result(stranger, request, "x"))
    await bench.payouts.consider(invoice_event(stranger, request, theirs))
    ours = bench.treasury.invoice()
    await bench.payouts.consider(invoice_event(bench.lessee, request, ours))
    assert await bench.status(offer) is OfferStatus.RUNNING  # a stranger's result is no result
    note = sign(bench.lessee, 1, "x", [["e", request.id]])  # the lessee's, but not a result
    await bench.payouts.consider(note)
    assert await bench.status(offer) is OfferStatus.RUNNING
    result = build_result(bench.lessee, request, "hi")
    await bench.payouts.consider(result)
    paid = await bench.settled(offer)
    assert paid.payment_hash == bench.treasury.invoices[ours].payment_hash
    for event in (result, invoice_event(bench.lessee, request, bench.treasury.invoice())):
        await bench.payouts.consider(event)
    assert bench.treasury.paid == [paid.payment_hash]


async def test_an_invoice_above_the_price_or_not_an_invoice_is_ignored(bench: Bench) -> None:
    offer, request = await bench.lease()
    await bench.payouts.consider(build_result(bench.lessee, request, "hi"))
    for bolt11 in (
        bench.treasury.invoice(PRICE_MSAT + 1),
        bench.treasury.invoice(None),
        "lnbcrt1notaninvoice",
    ):
        await bench.payouts.consider(invoice_event(bench.lessee, request, bolt11))
        assert await bench.status(offer) is OfferStatus.RUNNING, bolt11
    fair = bench.treasury.invoice(PRICE_MSAT - 1000)  # below the price is fine
    await bench.payouts.consider(invoice_event(bench.lessee, request, fair))
    assert (await bench.settled(offer)).payment_hash == bench.treasury.invoices[fair].payment_hash


async def test_an_ended_lease_is_never_paid(bench: Bench) -> None:
    released, request = await bench.lease()
    session = await bench.sessions.get(released.session_id)
    assert session is not None
    await bench.desk.fail(session, released.id, "no model")
    expired, late = await bench.lease()
    bench.clock.advance(31)  # no heartbeat
    for req in (request, late):
        bolt11 = bench.treasury.invoice()
        await bench.payouts.consider(build_result(bench.lessee, req, "hi"))
        await bench.payouts.consider(invoice_event(bench.lessee, req, bolt11))
    assert await bench.status(released) is OfferStatus.RELEASED
    assert await bench.status(expired) is OfferStatus.EXPIRED
    assert bench.treasury.paid == []


async def test_an_invoice_already_bound_to_another_offer_is_not_paid_again(bench: Bench) -> None:
    first, request = await bench.lease()
    bolt11 = bench.treasury.invoice()
    await bench.payouts.consider(build_result(bench.lessee, request, "hi"))
    await bench.payouts.consider(invoice_event(bench.lessee, request, bolt11))
    await bench.settled(first)
    second, again = await bench.lease()
    await bench.payouts.consider(build_result(bench.lessee, again, "hi"))
    await bench.payouts.consider(invoice_event(bench.lessee, again, bolt11))
    assert await bench.status(second) is OfferStatus.RUNNING
    assert len(bench.treasury.paid) == 1


async def test_a_treasury_that_is_not_ready_is_asked_again(bench: Bench) -> None:
    offer, request = await bench.lease()
    bench.treasury.not_ready = {"decode": 1, "pay": 1}
    await bench.payouts.consider(build_result(bench.lessee, request, "hi"))
    await bench.payouts.consider(invoice_event(bench.lessee, request, bench.treasury.invoice()))
    assert await bench.status(offer) is OfferStatus.RUNNING
    bench.clock.advance(RETRY_S)  # decoded now: paying, but the send is refused once

    async def paying() -> bool:
        refused = bench.treasury.not_ready == {"decode": 0, "pay": 0}
        return refused and await bench.status(offer) is OfferStatus.PAYING

    await until(paying, timeout=5)
    bench.clock.advance(RETRY_S)
    await bench.settled(offer)
    assert len(bench.treasury.paid) == 1


async def test_payouts_follow_the_requests_of_live_leases(bench: Bench) -> None:
    offer, request = await bench.lease()
    subscription = bench.payouts._sub
    assert isinstance(subscription, Subscription)
    [wanted] = subscription.filters
    assert wanted.e == (request.id,) and 7000 in wanted.kinds and 6050 in wanted.kinds
    await bench.payouts.consider(build_result(bench.lessee, request, "hi"))
    await bench.payouts.consider(invoice_event(bench.lessee, request, bench.treasury.invoice()))
    await bench.settled(offer)
    await until(lambda: subscription.filters == [], timeout=5)
