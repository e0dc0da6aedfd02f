"""End to end on the devnet: a buyer pays a provider through the hub; the provider withdraws."""

import asyncio
import hashlib
import time
from pathlib import Path

from autopilotd.devnet import Devnet
from autopilotd.devnet.ldk import ldk_node_module

from .participant import Participant, running_participant

CHANNEL_SATS = 1_000_000
BUYER_PUSH_SATS = 400_000
ONCHAIN_RESERVE_SATS = 100_000
AMOUNT_SATS = 21_000
WITHDRAW_SATS = 5_000


async def _fund_and_connect(net: Devnet, who: Participant, push_sats: int) -> None:
    await who.call(who.node.sync_wallets)
    await net.client.open_channel(who.node_id, who.address, CHANNEL_SATS, push_sats)
    await who.wait_event("CHANNEL_READY")
    # Route hints in the participant's invoices need the hub's fee policy for the channel,
    # which arrives in a channel_update just after channel_ready.
    deadline = time.monotonic() + 10.0
    while True:
        channels = await who.call(who.node.list_channels)
        if any(
            c.is_usable and c.counterparty_forwarding_info_fee_base_msat is not None
            for c in channels
        ):
            return
        assert time.monotonic() < deadline, "no channel_update from the hub"
        await asyncio.sleep(0.05)


async def _wait_spendable(who: Participant, msat: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        channels = await who.call(who.node.list_channels)
        if any(c.is_usable and c.next_outbound_htlc_limit_msat >= msat for c in channels):
            return
        assert time.monotonic() < deadline, "the received sats never became spendable"
        await asyncio.sleep(0.05)


async def test_buyer_pays_provider_through_the_hub(tmp_path: Path) -> None:
    ldk = ldk_node_module()
    started = time.monotonic()
    async with (
        Devnet(tmp_path / "devnet") as net,
        running_participant(tmp_path / "provider", net.chain_source, "provider") as provider,
        running_participant(tmp_path / "buyer", net.chain_source, "buyer") as buyer,
    ):
        # Accepting an anchor channel needs an on-chain reserve in the acceptor's wallet.
        for who in (provider, buyer):
            await net.client.fund(await who.onchain_address(), ONCHAIN_RESERVE_SATS, 0)
        await net.client.mine(1)
        async with asyncio.TaskGroup() as tasks:
            # The provider needs inbound liquidity, the buyer outbound: the hub pushes to it.
            tasks.create_task(_fund_and_connect(net, provider, 0))
            tasks.create_task(_fund_and_connect(net, buyer, BUYER_PUSH_SATS))
        assert await provider.lightning_sats() == 0
        assert await buyer.lightning_sats() == BUYER_PUSH_SATS

        description = ldk.Bolt11InvoiceDescription.DIRECT("devnet e2e")
        invoice = await provider.call(
            provider.node.bolt11_payment().receive, AMOUNT_SATS * 1000, description, 600
        )
        payment_hash = str(invoice.payment_hash())
        payment_id = await buyer.call(buyer.node.bolt11_payment().send, invoice, None)

        outcome = await buyer.wait_event(
            ("PAYMENT_SUCCESSFUL", "PAYMENT_FAILED"),
            lambda e: str(e.payment_id) == str(payment_id),
        )
        assert isinstance(outcome, ldk.Event.PAYMENT_SUCCESSFUL), outcome
        sent = outcome
        received = await provider.wait_event(
            "PAYMENT_RECEIVED", lambda e: str(e.payment_hash) == payment_hash
        )
        assert received.amount_msat == AMOUNT_SATS * 1000
        preimage = bytes.fromhex(str(sent.payment_preimage))
        assert hashlib.sha256(preimage).hexdigest() == payment_hash
        fee_msat = sent.fee_paid_msat
        assert fee_msat is not None and fee_msat > 0  # the hub charged for forwarding

        assert await provider.lightning_sats() == AMOUNT_SATS
        assert await buyer.lightning_sats() * 1000 == (
            BUYER_PUSH_SATS * 1000 - AMOUNT_SATS * 1000 - fee_msat
        )
        outbound = await buyer.call(buyer.node.payment, payment_id)
        assert outbound.status == ldk.PaymentStatus.SUCCEEDED
        assert outbound.amount_msat == AMOUNT_SATS * 1000
        assert outbound.fee_paid_msat == fee_msat
        inbound = [
            p
            for p in await provider.call(provider.node.list_payments)
            if p.direction == ldk.PaymentDirection.INBOUND
            and isinstance(p.kind, ldk.PaymentKind.BOLT11)
        ]
        assert [(p.status, p.amount_msat) for p in inbound] == [
            (ldk.PaymentStatus.SUCCEEDED, AMOUNT_SATS * 1000)
        ]
        assert str(inbound[0].kind.hash) == payment_hash

        # The provider withdraws by paying an invoice made by another node (the hub). The
        # received sats become spendable only once the HTLC's commitment update is done,
        # which can be a moment after PaymentReceived.
        await _wait_spendable(provider, WITHDRAW_SATS * 1000)
        bolt11 = await net.client.hub_invoice(WITHDRAW_SATS * 1000, "withdrawal")
        withdrawal = ldk.Bolt11Invoice.from_str(bolt11)
        withdrawal_id = await provider.call(provider.node.bolt11_payment().send, withdrawal, None)
        done = await provider.wait_event(
            ("PAYMENT_SUCCESSFUL", "PAYMENT_FAILED"),
            lambda e: str(e.payment_id) == str(withdrawal_id),
        )
        assert isinstance(done, ldk.Event.PAYMENT_SUCCESSFUL), done
        assert done.fee_paid_msat in (None, 0)  # a direct channel: no routing fee
        settled = await net.client.hub_payment(str(withdrawal.payment_hash()))
        assert settled is not None
        assert (settled["status"], settled["direction"], settled["amount_msat"]) == (
            "SUCCEEDED",
            "INBOUND",
            WITHDRAW_SATS * 1000,
        )
        assert await provider.lightning_sats() == AMOUNT_SATS - WITHDRAW_SATS

        hub = await net.client.status()
        assert {c["counterparty_node_id"] for c in hub["hub"]["channels"]} == {
            provider.node_id,
            buyer.node_id,
        }
    assert net.status() is None
    assert time.monotonic() - started < 240
