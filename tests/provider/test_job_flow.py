"""The real provider (and buyer) through the job flow's hard cases, with fakes at the ports:
race and lost race (in both orders), the payment deadline, settlement after a restart, and
a request delivered twice. Each runs in well under a second."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

import pytest
from support.market import PRICE_SATS, Market, Peer
from support.nexus import until

from autopilotd.adapters.fake_lightning import FakeNode
from autopilotd.nostr.identity import NostrIdentity, generate_identity
from autopilotd.nostr.nip90 import KIND_FEEDBACK, KIND_HANDLER
from autopilotd.nostr.nip90_buyer import build_job_request
from autopilotd.ports.lightning import Invoice
from autopilotd.ports.relays import PublishOutcome, RelayAnswer
from autopilotd.runtime.sections import ProviderState

CONTRACT = [
    "provider.request_received",
    "provider.accepted",
    "provider.running",
    "provider.result_published",
    "provider.payment_requested",
    "provider.settlement_confirmed",
]


async def online(provider: Peer) -> None:
    await provider.call("provider.online")
    await provider.until(lambda s: s.provider.state is ProviderState.ONLINE)


def request(buyer: NostrIdentity, bid_sats: int = 30) -> tuple[str, str]:
    event = build_job_request(buyer, 5050, "Say hi.", bid_msat=bid_sats * 1000)
    return event.id, event.json


def feedback(market: Market, request_id: str, status: str) -> list[Any]:
    return [
        e
        for e in market.relays.published
        if e.kind == KIND_FEEDBACK
        and ["e", request_id] in [list(t[:2]) for t in e.tags]
        and (e.first("status") or ("", ""))[1] == status
    ]


async def test_a_paid_job_follows_the_contract(market: Market) -> None:
    async with (
        market.peer("provider") as provider,
        market.peer("buyer", balance_msat=10_000_000) as buyer,
    ):
        await online(provider)
        rid = await market.buy(buyer)
        row = await buyer.call("buy.wait", {"request_id": rid, "timeout_s": 5})
        assert row["status"] == "done" and row["result"] == "fake answer"
        job = await provider.job_until(rid, "paid")
        assert job["payment_hash"] == row["payment_hash"]
        earnings = provider.snapshot.earnings
        assert (earnings.lifetime_sats, earnings.lifetime_jobs) == (PRICE_SATS, 1)
        names = [e.name for e in provider.app.rt.events.since(0, 10_000)[0]]
        assert [n for n in names if n in CONTRACT] == CONTRACT
        successes = feedback(market, rid, "success")
        assert len({e.id for e in successes}) == 1  # sent again, it is the same event
        success = successes[0]
        assert success.first("amount") == ("amount", str(PRICE_SATS * 1000))


async def test_two_providers_race_and_the_loser_ends_unpaid(market: Market) -> None:
    async with (
        market.peer("first") as first,
        market.peer("second") as second,
        market.peer("buyer", balance_msat=10_000_000) as buyer,
    ):
        await online(first)
        await online(second)
        rid = await market.buy(buyer)
        row = await buyer.call("buy.wait", {"request_id": rid, "timeout_s": 5})
        assert row["status"] == "done"
        winner, loser = (
            (first, second)
            if row["provider"] == first.snapshot.identity.hex
            else (
                second,
                first,
            )
        )
        assert (await winner.job_until(rid, "paid"))["payment_hash"] == row["payment_hash"]
        lost = await loser.job_until(rid, "delivered_unpaid")
        assert "lost the race" in lost["reason"]
        assert loser.node.balance_msat == 0  # nothing was paid to it


class GatedNode(FakeNode):
    """A node whose invoices wait for the test: the job sits between result and invoice."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def create_invoice(self, amount_msat: int, description: str, expiry_s: int) -> Invoice:
        self.waiting.set()
        await self.gate.wait()
        return await super().create_invoice(amount_msat, description, expiry_s)


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_a_lost_race_heard_before_the_invoice_still_ends_the_job_unpaid(
    market: Market,
) -> None:
    """The buyer can pay the winner and tell the loser before the loser has recorded its own
    invoice: that lost-race must not be dropped (it once was, and the loser stayed
    `delivered` until its deadline)."""
    slow = GatedNode(market.lightning, "slow", 0)
    async with (
        market.peer("fast") as fast,
        market.peer("slow", node=slow) as late,
        market.peer("buyer", balance_msat=10_000_000) as buyer,
    ):
        await online(fast)
        await online(late)
        rid = await market.buy(buyer)
        await asyncio.wait_for(slow.waiting.wait(), 5)  # its result is out, its invoice not
        row = await buyer.call("buy.wait", {"request_id": rid, "timeout_s": 5})
        assert row["status"] == "done" and row["provider"] == fast.snapshot.identity.hex
        await _until(lambda: bool(feedback(market, rid, "error")))  # the lost-race went out
        late_flow = late.service("provider").flow
        await _until(lambda: rid in late_flow._lost)  # and the slow provider heard it
        slow.gate.set()
        lost = await late.job_until(rid, "delivered_unpaid")
        assert "lost the race" in lost["reason"]
        assert feedback(market, rid, "payment-required")  # one, from the winner


async def test_a_job_not_paid_by_its_deadline_ends_delivered_unpaid(market: Market) -> None:
    async with market.peer("provider") as provider:
        await online(provider)
        rid, event = request(generate_identity())
        market.relays.inject(event)  # a buyer who never pays
        await provider.job_until(rid, "delivered")
        market.clock.advance(provider.app.rt.config.provider_payment_timeout_s - 1)
        assert (await provider.job(rid) or {})["stage"] == "delivered"
        market.clock.advance(2)
        job = await provider.job_until(rid, "delivered_unpaid")
        assert job["reason"] == "not paid in time"
        await _until(lambda: bool(provider.events("provider.delivered_unpaid")))
        assert provider.events("provider.delivered_unpaid") == [
            {"request_id": rid, "reason": "deadline"}
        ]


async def test_a_payment_that_settles_while_the_provider_is_down_is_credited_once(
    market: Market,
) -> None:
    node = FakeNode(market.lightning, "provider", 0)
    payer = FakeNode(market.lightning, "payer", 10_000_000)
    rid, event = request(generate_identity())
    async with market.peer("provider", node=node) as provider:
        await online(provider)
        market.relays.inject(event)
        job = await provider.job_until(rid, "delivered")
    assert job["bolt11"]
    await payer.pay(job["bolt11"], None, 10_000)  # settles while the provider is stopped
    async with market.peer("provider", node=node) as provider:
        job = await provider.job_until(rid, "paid")
        assert job["payment_hash"] and job["paid_at"]
        await provider.until(lambda s: s.earnings.lifetime_jobs == 1)
        assert provider.snapshot.earnings.lifetime_sats == PRICE_SATS
        # one success event (the outbox may send the same signed event twice: one id)
        await _until(lambda: len({e.id for e in feedback(market, rid, "success")}) == 1)
        assert provider.snapshot.provider.state is ProviderState.OFFLINE  # never by itself
    async with market.peer("provider", node=node) as provider:  # and again: nothing new
        await provider.until(lambda s: s.earnings.lifetime_jobs == 1)
        assert provider.events("provider.settlement_confirmed") == []


async def test_a_request_delivered_again_after_a_restart_is_one_job(market: Market) -> None:
    rid, event = request(generate_identity())
    node = FakeNode(market.lightning, "provider", 0)
    async with market.peer("provider", node=node) as provider:
        await online(provider)
        market.relays.inject(event)
        await provider.job_until(rid, "delivered")
    async with market.peer("provider", node=node) as provider:
        await online(provider)
        started = time.monotonic()
        market.relays.inject(event)  # a fresh subscription sees it again (catch-up)
        await provider.until(lambda s: s.jobs.rejections.get("already-taken", 0) == 1)
        assert provider.events("provider.request_received") == []
        history = await provider.call("jobs.history")
        assert [j["request_id"] for j in history["jobs"]] == [rid]
        assert provider.events("provider.accepted") == []
        assert time.monotonic() - started < 5


async def test_a_relay_that_comes_back_gets_the_job_events_and_the_handler_it_missed(
    market: Market,
) -> None:
    """A job's buyer may read only one relay (a Nexus reads its own): when that relay was
    down as the job's events went out, it gets them when it reconnects, although another
    relay accepted them; and the provider's handler is announced on it again."""
    down = market.relays.relays[1]
    market.relays.answer(
        lambda url, event: RelayAnswer(url, PublishOutcome.SKIPPED, "down") if url == down else None
    )
    async with (
        market.peer("provider") as provider,
        market.peer("buyer", balance_msat=10_000_000) as buyer,
    ):
        await online(provider)
        rid = await market.buy(buyer)
        await provider.job_until(rid, "paid")

        def on_down() -> list[str]:
            rows = sqlite3.connect(provider.app.rt.store.path).execute(
                "SELECT o.purpose FROM job_publish_results r JOIN job_outbox o "
                "ON o.id = r.outbox_id WHERE r.relay = ? AND r.outcome = 'accepted'",
                (down,),
            )
            return sorted(p for (p,) in rows)

        assert on_down() == []
        handlers = len([e for e in market.relays.published if e.kind == KIND_HANDLER])
        market.relays.answer(None)  # the relay is back
        await provider.service("relays")._pool.reconnect(down)
        await until(lambda: len(on_down()) == 4)
        assert on_down() == ["payment_required", "processing", "result", "success"]
        await until(
            lambda: len([e for e in market.relays.published if e.kind == KIND_HANDLER]) > handlers
        )


async def test_an_unpaid_jit_invoice_says_the_lsp_may_be_why(market: Market) -> None:
    """A job whose invoice went over a just-in-time channel that never carried a payment (the
    LSP failed to open it, silently) ends unpaid with that possibility in its reason."""
    node = FakeNode(market.lightning, "newcomer", 0)
    node.receivable_msat = 0
    node.lsp_fee_msat = 2_000
    async with market.peer("newcomer", node=node, wallet_lsp="02" + "ab" * 32 + "@h:1") as p:
        await online(p)
        rid, event = request(generate_identity())
        market.relays.inject(event)  # a buyer who never pays
        await p.job_until(rid, "delivered")
        market.clock.advance(p.app.rt.config.provider_payment_timeout_s + 1)
        job = await p.job_until(rid, "delivered_unpaid")
        assert job["reason"].startswith("not paid in time: its invoice needed a new channel")


@pytest.mark.parametrize(("rate_per_min", "limited"), [(12, 3), (600, 0)])
async def test_a_buyer_over_its_rate_is_dropped_unless_the_provider_allows_more(
    market: Market, rate_per_min: int, limited: int
) -> None:
    """Eight requests at once from one buyer: past the burst of 5 the default rate (12 a
    minute) drops the rest unanswered and counts them; provider_buyer_rate_per_min raises the
    rate and its burst (5 s of it)."""
    buyer = generate_identity()
    async with market.peer(
        "provider", provider_buyer_rate_per_min=rate_per_min, provider_queue_size=16
    ) as provider:
        await online(provider)
        for i in range(8):
            market.relays.inject(build_job_request(buyer, 5050, f"Say {i}.", bid_msat=30_000).json)
        s = await provider.until(lambda s: sum(s.jobs.rejections.values()) + len(s.jobs.inbox) >= 8)
        assert s.jobs.rejections.get("rate-limited", 0) == limited, s.jobs.rejections
        assert len(s.jobs.inbox) == 8 - limited, s.jobs.rejections


async def test_requests_sent_again_after_a_restart_do_not_spend_the_buyers_rate(
    market: Market,
) -> None:
    """A relay sends a provider the recent requests again when it subscribes, as after a
    restart. Those the provider has already taken are passed over before the buyer's rate is
    counted: they cannot crowd out the buyer's new requests (3 old + 3 new would be past the
    burst of 5)."""
    buyer = generate_identity()
    old = [build_job_request(buyer, 5050, f"Say {i}.", bid_msat=30_000).json for i in range(3)]
    async with market.peer("provider", provider_queue_size=16) as provider:
        await online(provider)
        for data in old:
            market.relays.inject(data)
        await provider.until(lambda s: len(s.jobs.inbox) >= 3)
    async with market.peer("provider", provider_queue_size=16) as provider:
        await online(provider)
        for data in old:  # the relay's catch-up
            market.relays.inject(data)
        for i in range(3):
            market.relays.inject(build_job_request(buyer, 5050, f"Now {i}.", bid_msat=30_000).json)
        s = await provider.until(
            lambda s: len(s.jobs.inbox) >= 6 or s.jobs.rejections.get("rate-limited", 0) > 0
        )
        assert s.jobs.rejections == {"already-taken": 3}, s.jobs.rejections
        assert len(s.jobs.inbox) == 6
