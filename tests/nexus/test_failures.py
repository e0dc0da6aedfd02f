"""The failure table, each case on the injected clock: a missed ack, a missed heartbeat, an
empty treasury, a payment that fails and is retried, answers from someone else, an invoice
above the price. A case that must *not* pay waits for a later payment the Nexus makes after
it (the answers are taken in the order the relay stored them), then checks nothing else was
paid."""

from __future__ import annotations

from support.nexus import PRICE_SATS, NexusLab, provider_online

from autopilotd.adapters.fake_lightning import FakeNode
from autopilotd.vocab import OfferStatus


async def test_a_missed_ack_expires_the_offer_and_frees_its_budget(lab: NexusLab) -> None:
    async with (
        lab.running(reserve_cap_sats=PRICE_SATS) as nexus,
        provider_online(lab, nexus, "a") as a,
        provider_online(lab, nexus, "b") as b,
    ):
        offer = await a.leased()
        answer = await b.poll()
        assert answer["eligible"] and answer["offers"] == []
        assert answer["reason"] == "starter_demand_budget_exhausted"
        lab.clock.advance(15.5)
        taken = await b.leased()  # a's offer expired first: its price went back to the budget
        assert taken["request_id"] != offer["request_id"]
        status, late = await a.act(offer["request_id"], "ack")
        assert (status, late["error"]) == (409, "starter_offer_start_confirm_missed")
        expired = await lab.offer(nexus, offer["request_id"])
        assert expired.status is OfferStatus.EXPIRED
        stats = (await lab.get(nexus.url + "/stats"))[1]
        assert stats["starter_offers_24h"]["expired"] == 1
        assert stats["budget"]["reserved_sats"] == PRICE_SATS  # b's offer only


async def test_a_missed_heartbeat_ends_the_lease_and_a_late_invoice_is_not_paid(
    lab: NexusLab,
) -> None:
    async with (
        lab.running() as nexus,
        provider_online(lab, nexus, "a") as a,
        provider_online(lab, nexus, "b") as b,
    ):
        offer = await a.leased()
        await a.act(offer["request_id"], "ack")
        request = await a.next_request()
        lab.clock.advance(30.5)
        status, answer = await a.act(offer["request_id"], "heartbeat")
        assert (status, answer["error"]) == (409, "starter_offer_heartbeat_missed")
        other = await b.leased()
        await b.act(other["request_id"], "ack")
        b_request = await b.next_request()
        await a.deliver(request)  # too late
        await b.deliver(b_request)
        await lab.offer_until(nexus, other["request_id"], OfferStatus.COMPLETED)
        assert (await lab.offer(nexus, offer["request_id"])).status is OfferStatus.EXPIRED
        assert a.node.balance_msat == 0 and lab.treasury.sends == 1


async def test_an_empty_treasury_offers_nothing_new_but_pays_running_leases(
    lab: NexusLab,
) -> None:
    lab.treasury = FakeNode(lab.lightning, "treasury", 40_000)  # 21 sats + fees, not 42
    async with (
        lab.running() as nexus,
        provider_online(lab, nexus, "a") as a,
        provider_online(lab, nexus, "b") as b,
    ):
        offer = await a.leased()
        answer = await b.poll()
        assert answer["eligible"] and answer["offers"] == []
        assert answer["reason"] == "treasury_insufficient_funds"
        await a.act(offer["request_id"], "ack")
        await a.deliver(await a.next_request())
        await lab.offer_until(nexus, offer["request_id"], OfferStatus.COMPLETED)
        assert a.node.balance_msat == PRICE_SATS * 1000
        lab.clock.advance(61)  # past the stats cache
        stats = (await lab.get(nexus.url + "/stats"))[1]
        assert stats["treasury"] == {"state": "degraded", "reason": "low on funds"}
        assert stats["starter_offers_24h"]["completed"] == 1
        answer = await b.poll()
        assert answer["offers"] == [] and answer["reason"] == "treasury_insufficient_funds"


async def test_a_failed_payment_is_retried_with_the_same_invoice(lab: NexusLab) -> None:
    async with lab.running() as nexus, provider_online(lab, nexus, "a") as a:
        offer = await a.leased()
        await a.act(offer["request_id"], "ack")
        lab.lightning.fee_msat = 50_000  # above the fee cap: no route
        invoice = await a.deliver(await a.next_request())
        failed = await lab.offer_until(nexus, offer["request_id"], OfferStatus.PAYMENT_FAILED)
        assert failed.payment_hash == invoice.payment_hash
        assert (await a.act(offer["request_id"], "heartbeat"))[0] == 200  # still leased
        lab.lightning.fee_msat = 1000
        lab.clock.advance(5)  # the retry
        paid = await lab.offer_until(nexus, offer["request_id"], OfferStatus.COMPLETED)
        assert paid.payment_hash == invoice.payment_hash
        assert lab.treasury.sends == 2 and a.node.balance_msat == PRICE_SATS * 1000
        done = {"payment_hash": invoice.payment_hash}
        assert (await a.act(offer["request_id"], "complete", done))[0] == 200
        stats = (await lab.get(nexus.url + "/stats"))[1]
        assert stats["starter_offers_24h"]["payment_failures"] == 1


async def test_answers_signed_by_anyone_but_the_lessee_are_ignored(lab: NexusLab) -> None:
    async with (
        lab.running() as nexus,
        provider_online(lab, nexus, "a") as a,
        provider_online(lab, nexus, "thief") as thief,
    ):
        offer = await a.leased()
        await a.act(offer["request_id"], "ack")
        request = await a.next_request()
        invoice = await thief.invoice()
        for event in (thief.result(request), thief.payment_required(request, invoice)):
            assert (await thief.publish(event)).any_accepted
        await a.deliver(request)
        await lab.offer_until(nexus, offer["request_id"], OfferStatus.COMPLETED)
        assert thief.node.balance_msat == 0 and lab.treasury.sends == 1
        status, answer = await thief.act(
            offer["request_id"], "complete", {"payment_hash": invoice.payment_hash}
        )
        assert (status, answer["error"]) == (404, "starter_offer_not_found")


async def test_an_invoice_above_the_offer_price_is_not_paid(lab: NexusLab) -> None:
    async with lab.running() as nexus, provider_online(lab, nexus, "a") as a:
        offer = await a.leased()
        await a.act(offer["request_id"], "ack")
        request = await a.next_request()
        greedy = await a.deliver(request, sats=PRICE_SATS + 1)
        fair = await a.deliver(request)  # a later invoice within the price is still paid
        paid = await lab.offer_until(nexus, offer["request_id"], OfferStatus.COMPLETED)
        assert paid.payment_hash == fair.payment_hash != greedy.payment_hash
        assert lab.treasury.sends == 1 and a.node.balance_msat == PRICE_SATS * 1000
