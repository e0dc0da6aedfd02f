"""The real buyer against honest and dishonest providers, with fakes at the ports: an
invoice above the budget is never paid, a request nobody serves expires at its deadline,
and a result sent twice is paid once."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

from support.market import PRICE_SATS, Market, Peer

from autopilotd.adapters.fake_lightning import FakeNode
from autopilotd.nostr.identity import NostrIdentity, generate_identity
from autopilotd.nostr.intake import IntakePolicy, RequestParser
from autopilotd.nostr.nip90 import (
    KIND_TEXT_GENERATION,
    FeedbackStatus,
    JobRequest,
    build_feedback,
    build_result,
)
from autopilotd.ports.relays import SubscriptionFilter
from autopilotd.runtime.sections import ProviderState


class Cheat:
    """A provider that answers every request, and asks more than the buyer bid."""

    def __init__(self, market: Market, ask_sats: int) -> None:
        self.identity: NostrIdentity = generate_identity()
        self.node = FakeNode(market.lightning, "cheat", 0)
        self.pool = market.relays.pool()
        self.ask_sats = ask_sats
        self.answered: list[str] = []

    async def serve(self) -> None:
        sub = self.pool.subscription("cheat")
        await sub.set_filters([SubscriptionFilter(kinds=(KIND_TEXT_GENERATION,))])
        parser = RequestParser(self.identity, IntakePolicy())
        async for incoming in sub.events():
            request = parser.parse(incoming.event, now=incoming.event.created_at)
            assert isinstance(request, JobRequest)
            await self.answer(request)

    async def answer(self, request: JobRequest, times: int = 1) -> None:
        invoice = await self.node.create_invoice(self.ask_sats * 1000, "cheat", 600)
        for _ in range(times):
            await self.pool.publish(build_result(self.identity, request, "cheap words"))
            await self.pool.publish(
                build_feedback(
                    self.identity,
                    request,
                    FeedbackStatus.PAYMENT_REQUIRED,
                    amount_msat=self.ask_sats * 1000,
                    bolt11=invoice.bolt11,
                )
            )
        self.answered.append(request.id)


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def wait_row(buyer: Peer, rid: str) -> dict[str, Any]:
    row: dict[str, Any] = await buyer.call("buy.wait", {"request_id": rid, "timeout_s": 5})
    return row


async def test_an_invoice_above_the_budget_is_never_paid(market: Market) -> None:
    cheat = Cheat(market, ask_sats=50)
    async with market.peer("buyer", balance_msat=10_000_000) as buyer, asyncio.TaskGroup() as tg:
        serving = tg.create_task(cheat.serve())
        rid = await market.buy(buyer, budget_sats=30, timeout_s=60)
        await _until(lambda: rid in cheat.answered)
        row = await buyer.call("buy.status", {"request_id": rid})
        assert row["status"] == "open" and row["provider"] is None
        market.clock.advance(61)  # past the request's deadline
        row = await wait_row(buyer, rid)
        assert row["status"] == "expired"
        assert row["reason"] == (
            "no provider delivered in time (an invoice above the budget was refused)"
        )
        assert buyer.node.sends == 0 and cheat.node.balance_msat == 0
        serving.cancel()


async def test_a_chat_buy_approved_by_the_owner_refuses_an_invoice_above_its_budget(
    market: Market,
) -> None:
    cheat = Cheat(market, ask_sats=50)
    workspace = Path(tempfile.mkdtemp(prefix="autopilotd-chat-buy-"))
    async with market.peer("buyer", balance_msat=10_000_000) as buyer, asyncio.TaskGroup() as tg:
        serving = tg.create_task(cheat.serve())
        thread = await buyer.call("thread.start", {"workspace": str(workspace)})
        turn = await buyer.call("turn.start", {"thread_id": thread["id"], "input": "/buy 30 hi"})

        async def asked() -> dict[str, Any]:
            async with asyncio.timeout(10):
                while True:
                    now = await buyer.call("turn.wait", {"turn_id": turn["id"], "timeout_s": 0})
                    item: dict[str, Any] = now["items"][-1]
                    if item["body"].get("approval", {}).get("status") == "pending":
                        return item
                    await asyncio.sleep(0.01)

        item = await asked()
        assert cheat.answered == []  # nothing is published before the owner approves
        await buyer.call("approval.answer_spend", {"item_id": item["id"], "decision": "approve"})
        await _until(lambda: len(cheat.answered) == 1)
        await _until(lambda: bool(buyer.events("buyer.invoice_refused")))
        (refused,) = buyer.events("buyer.invoice_refused")
        assert (refused["reason"], refused["amount_msat"]) == ("invoice above budget", 50_000)
        market.clock.advance(121)  # past the request's deadline
        done = await buyer.call("turn.wait", {"turn_id": turn["id"], "timeout_s": 10})
        request = done["items"][-1]
        assert (done["status"], request["status"]) == ("completed", "failed"), done
        assert request["body"]["error"] == (
            "not bought: no provider delivered in time (an invoice above the budget was refused)"
        )
        assert request["body"]["request_id"] == cheat.answered[0]
        assert request["body"]["payment_hash"] is None
        assert buyer.node.sends == 0 and cheat.node.balance_msat == 0
        serving.cancel()
    shutil.rmtree(workspace, ignore_errors=True)


async def test_an_honest_provider_wins_over_one_above_budget(market: Market) -> None:
    cheat = Cheat(market, ask_sats=50)
    async with (
        market.peer("provider") as provider,
        market.peer("buyer", balance_msat=10_000_000) as buyer,
        asyncio.TaskGroup() as tg,
    ):
        serving = tg.create_task(cheat.serve())
        await provider.call("provider.online")
        await provider.until(lambda s: s.provider.state is ProviderState.ONLINE)
        rid = await market.buy(buyer, budget_sats=30)
        row = await wait_row(buyer, rid)
        assert row["status"] == "done" and row["provider"] == provider.snapshot.identity.hex
        assert buyer.node.sends == 1 and cheat.node.balance_msat == 0
        assert provider.node.balance_msat == PRICE_SATS * 1000
        serving.cancel()


async def test_a_result_sent_twice_is_paid_once(market: Market) -> None:
    cheat = Cheat(market, ask_sats=20)  # within budget this time: an ordinary provider
    async with market.peer("buyer", balance_msat=10_000_000) as buyer:
        sub = cheat.pool.subscription("cheat")
        await sub.set_filters([SubscriptionFilter(kinds=(KIND_TEXT_GENERATION,))])
        rid = await market.buy(buyer, budget_sats=30)
        incoming = await anext(sub.events())
        parsed = RequestParser(cheat.identity, IntakePolicy()).parse(
            incoming.event, now=incoming.event.created_at
        )
        assert isinstance(parsed, JobRequest) and parsed.id == rid
        await cheat.answer(parsed, times=2)  # the same answer twice, as two relays would
        await buyer.until(lambda s: s.buyer.paid_requests == 1)
        row = await buyer.call("buy.status", {"request_id": rid})
        assert buyer.node.sends == 1
        assert row["status"] == "paid" and cheat.node.balance_msat == 20_000
        assert len(buyer.events("buyer.payment_sent")) == 1
