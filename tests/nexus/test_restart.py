"""A restart loses nothing: the Nexus stopped and started again on the same home (same
database, relay storage and treasury node). Leases past their deadline expire on the first
pass, before any call; a payment in flight is asked of the wallet again and never made twice."""

from __future__ import annotations

import time
from typing import Any

from support.nexus import PRICE_SATS, NexusLab, Provider, provider_online, until

from autopilotd.adapters.fake_lightning import FakeNode
from autopilotd.ports.lightning import NodeError, NodePayment
from autopilotd.vocab import OfferStatus


class DeferredNode(FakeNode):
    """A treasury node whose sends stay in flight until the test lets them through, as a real
    node's outcome arrives later, as an event (and survives the Nexus's restart)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.deferring = True
        self.held: list[str] = []

    async def pay(self, bolt11: str, amount_msat: int | None, max_fee_msat: int) -> None:
        if not self.deferring:
            return await super().pay(bolt11, amount_msat, max_fee_msat)
        inv = self.decode(bolt11)
        if inv.payment_hash in self._payments:
            raise NodeError("this invoice was already paid or is being paid", kind="duplicate")
        self.sends += 1
        self._payments[inv.payment_hash] = NodePayment(
            inv.payment_hash, "out", "pending", inv.amount_msat or 0, None, None, int(time.time())
        )
        self.held.append(bolt11)
        return None

    async def release(self) -> None:
        """Complete the sends in flight (the same send: it is not counted again)."""
        self.deferring = False
        for bolt11 in self.held:
            del self._payments[self.decode(bolt11).payment_hash]
            self.sends -= 1
            await super().pay(bolt11, None, 10**9)
        self.held.clear()


async def test_a_restart_expires_what_is_due_and_never_pays_twice(lab: NexusLab) -> None:
    treasury = lab.treasury = DeferredNode(lab.lightning, "treasury", 10_000_000)
    async with lab.running() as nexus:
        async with (
            provider_online(lab, nexus, "paid") as paid,
            provider_online(lab, nexus, "running") as running,
            provider_online(lab, nexus, "waiting") as waiting,
        ):
            offer = await paid.leased()
            await paid.act(offer["request_id"], "ack")
            invoice = await paid.deliver(await paid.next_request())
            await lab.offer_until(nexus, offer["request_id"], OfferStatus.PAYING)
            await until(lambda: treasury.held == [invoice.bolt11])  # the node has it in flight
            in_progress = await running.leased()
            await running.act(in_progress["request_id"], "ack")
            unacked = await waiting.leased()

    lab.clock.advance(40)  # while it is down, the leases pass their ack and heartbeat deadlines
    await treasury.release()  # and the payment in flight settles on the node

    async with lab.running() as nexus:
        # the first pass ran before the Nexus served: no call was needed
        for offer_id, reason in (
            (in_progress["request_id"], "starter_offer_heartbeat_missed"),
            (unacked["request_id"], "starter_offer_start_confirm_missed"),
        ):
            ended = await lab.offer(nexus, offer_id)
            assert (ended.status, ended.reason) == (OfferStatus.EXPIRED, reason)
        done = await lab.offer_until(nexus, offer["request_id"], OfferStatus.COMPLETED)
        assert done.payment_hash == invoice.payment_hash
        assert treasury.sends == 1 and paid.node.balance_msat == PRICE_SATS * 1000

        paid.nexus = nexus  # the same session, on the restarted Nexus
        status, answer = await paid.act(
            offer["request_id"], "complete", {"payment_hash": invoice.payment_hash}
        )
        assert status == 200 and answer["offer"]["status"] == "completed"
        stats = (await lab.get(nexus.url + "/stats"))[1]
        assert stats["starter_offers_24h"] | {"payment_failures": 0} == {
            "dispatched": 3,
            "started": 2,
            "completed": 1,
            "released": 0,
            "expired": 2,
            "payment_failures": 0,
        }
        assert stats["sessions_active"] == 3

    async with lab.running() as nexus:  # and once more: still paid once
        assert (await lab.offer(nexus, offer["request_id"])).status is OfferStatus.COMPLETED
        newcomer = Provider(lab, nexus, "newcomer")
        await newcomer.open_session()
        assert treasury.sends == 1
