"""The hub: the devnet's own Lightning node, which opens channels to participants.

A buyer's payment to a provider routes through the hub like through a node on the real
network: the hub opens an (unannounced) channel to each participant, pushing sats to the
ones that need outbound liquidity; a provider's invoice carries a route hint through its
channel with the hub. The hub consumes its node's events so it can tell when a channel is
pending (funding broadcast) and ready (confirmed and usable).
"""

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autopilotd.devnet.ldk import ChainSource, build_regtest_node, ldk_node_module
from autopilotd.loopback import LOOPBACK

logger = logging.getLogger(__name__)


class HubError(RuntimeError):
    """The hub could not do what was asked (the message says why)."""


@dataclass
class _ChannelProgress:
    funding_txid: str | None = None
    ready: bool = False
    closed_reason: str | None = None


@dataclass
class _PaymentOutcome:
    succeeded: bool
    fee_paid_msat: int | None = None
    reason: str | None = None


@dataclass
class _EventBook:
    """What the event loop has seen, for the coroutines waiting on it."""

    channels: dict[str, _ChannelProgress] = field(default_factory=dict)
    payments: dict[str, _PaymentOutcome] = field(default_factory=dict)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)


class HubNode:
    """An ldk-node run by the devnet, with a small async API over its blocking calls."""

    def __init__(self, storage_dir: Path, listen_port: int, chain: ChainSource) -> None:
        self._storage_dir = storage_dir
        self._listen_port = listen_port
        self._chain = chain
        self._node: Any = None
        self._book = _EventBook()
        self.node_id = ""

    @property
    def address(self) -> str:
        """The hub's P2P address (loopback)."""
        return f"{LOOPBACK}:{self._listen_port}"

    @property
    def node(self) -> Any:
        """The underlying ldk_node.Node (only while started)."""
        if self._node is None:
            raise HubError("the hub node is not running")
        return self._node

    async def start(self) -> None:
        """Build and start the node (it syncs with the chain through the shim)."""
        self._node = await asyncio.to_thread(
            lambda: build_regtest_node(
                self._storage_dir,
                self._listen_port,
                self._chain,
                alias="hub",
                forward_to_unannounced_channels=True,
            )
        )
        await asyncio.to_thread(self._node.start)
        self.node_id = str(await asyncio.to_thread(self._node.node_id))
        logger.info("hub node %s listening on %s", self.node_id, self.address)

    async def stop(self) -> None:
        """Stop the node; safe to call twice."""
        node, self._node = self._node, None
        if node is not None:
            await asyncio.to_thread(node.stop)
            logger.info("hub node stopped")

    async def run_events(self) -> None:
        """Consume the node's events until cancelled, acknowledging each after recording it."""
        ldk = ldk_node_module()
        while True:
            event = await self.node.next_event_async()
            async with self._book.changed:
                self._record(ldk, event)
                self._book.changed.notify_all()
            await asyncio.to_thread(self.node.event_handled)

    def _record(self, ldk: Any, event: Any) -> None:
        book = self._book
        if isinstance(event, ldk.Event.CHANNEL_PENDING):
            progress = book.channels.setdefault(str(event.user_channel_id), _ChannelProgress())
            progress.funding_txid = str(event.funding_txo.txid)
            logger.info("channel %s pending, funding %s", event.user_channel_id, event.funding_txo)
        elif isinstance(event, ldk.Event.CHANNEL_READY):
            book.channels.setdefault(str(event.user_channel_id), _ChannelProgress()).ready = True
            logger.info("channel %s ready", event.user_channel_id)
        elif isinstance(event, ldk.Event.CHANNEL_CLOSED):
            progress = book.channels.setdefault(str(event.user_channel_id), _ChannelProgress())
            progress.closed_reason = str(event.reason)
            logger.info("channel %s closed: %s", event.user_channel_id, event.reason)
        elif isinstance(event, ldk.Event.PAYMENT_SUCCESSFUL):
            if event.payment_id is not None:
                book.payments[str(event.payment_id)] = _PaymentOutcome(
                    True, fee_paid_msat=event.fee_paid_msat
                )
            logger.info("payment %s succeeded", event.payment_hash)
        elif isinstance(event, ldk.Event.PAYMENT_FAILED):
            if event.payment_id is not None:
                book.payments[str(event.payment_id)] = _PaymentOutcome(
                    False, reason=str(event.reason)
                )
            logger.info("payment %s failed: %s", event.payment_hash, event.reason)
        elif isinstance(event, ldk.Event.PAYMENT_FORWARDED):
            logger.info(
                "forwarded %s msat, earned %s msat",
                event.outbound_amount_forwarded_msat,
                event.total_fee_earned_msat,
            )
        else:
            logger.info("hub event: %s", event)

    async def sync(self) -> None:
        """Sync the node's wallets with the chain now instead of at the next poll."""
        await asyncio.to_thread(self.node.sync_wallets)

    async def new_onchain_address(self) -> str:
        """A fresh on-chain address of the hub's wallet."""
        return str(await asyncio.to_thread(lambda: self.node.onchain_payment().new_address()))

    async def balances(self) -> dict[str, int]:
        """On-chain and Lightning balances in sats, as the node reports them."""
        details = await asyncio.to_thread(self.node.list_balances)
        return {
            "total_onchain_sats": details.total_onchain_balance_sats,
            "spendable_onchain_sats": details.spendable_onchain_balance_sats,
            "anchor_reserve_sats": details.total_anchor_channels_reserve_sats,
            "lightning_sats": details.total_lightning_balance_sats,
        }

    async def channels(self) -> list[dict[str, Any]]:
        """The hub's channels, in plain JSON types."""
        channels = await asyncio.to_thread(self.node.list_channels)
        return [
            {
                "channel_id": str(channel.channel_id),
                "user_channel_id": str(channel.user_channel_id),
                "counterparty_node_id": str(channel.counterparty_node_id),
                "funding_txid": str(channel.funding_txo.txid) if channel.funding_txo else None,
                "channel_value_sats": channel.channel_value_sats,
                "outbound_capacity_msat": channel.outbound_capacity_msat,
                "inbound_capacity_msat": channel.inbound_capacity_msat,
                "is_channel_ready": channel.is_channel_ready,
                "is_usable": channel.is_usable,
            }
            for channel in channels
        ]

    async def open_channel(self, node_id: str, address: str, sats: int, push_sats: int = 0) -> str:
        """Ask the node to open a channel; returns its user channel id once the peer agreed."""
        push_msat = push_sats * 1000 if push_sats else None
        user_channel_id = await asyncio.to_thread(
            self.node.open_channel, node_id, address, sats, push_msat, None
        )
        logger.info("opening %d sat channel to %s (push %d sats)", sats, node_id, push_sats)
        return str(user_channel_id)

    async def wait_channel_pending(self, user_channel_id: str, timeout_s: float) -> str:
        """Wait for the funding transaction to be signed and broadcast; returns its txid."""
        progress = await self._wait_channel(
            user_channel_id,
            lambda p: p.funding_txid is not None or p.closed_reason is not None,
            timeout_s,
        )
        if progress.funding_txid is None:
            raise HubError(f"channel {user_channel_id} closed: {progress.closed_reason}")
        return progress.funding_txid

    async def wait_channel_ready(self, user_channel_id: str, timeout_s: float) -> None:
        """Wait until the channel is confirmed and usable."""
        progress = await self._wait_channel(
            user_channel_id, lambda p: p.ready or p.closed_reason is not None, timeout_s
        )
        if not progress.ready:
            raise HubError(f"channel {user_channel_id} closed: {progress.closed_reason}")

    async def _wait_channel(
        self,
        user_channel_id: str,
        done: Callable[[_ChannelProgress], bool],
        timeout_s: float,
    ) -> _ChannelProgress:
        book = self._book
        async with asyncio.timeout(timeout_s), book.changed:
            await book.changed.wait_for(
                lambda: done(book.channels.setdefault(user_channel_id, _ChannelProgress()))
            )
            return book.channels[user_channel_id]

    async def create_invoice(self, amount_msat: int, description: str, expiry_s: int) -> str:
        """A BOLT11 invoice the hub will settle (for withdraw tests and demos)."""
        ldk = ldk_node_module()
        described = ldk.Bolt11InvoiceDescription.DIRECT(description)
        invoice = await asyncio.to_thread(
            lambda: self.node.bolt11_payment().receive(amount_msat, described, expiry_s)
        )
        return str(invoice)

    async def payment(self, payment_id: str) -> dict[str, Any] | None:
        """The hub's record of a payment (for a BOLT11 invoice, the id is its payment hash)."""
        details = await asyncio.to_thread(self.node.payment, payment_id)
        if details is None:
            return None
        return {
            "payment_id": str(details.id),
            "status": details.status.name,
            "direction": details.direction.name,
            "amount_msat": details.amount_msat,
            "fee_paid_msat": details.fee_paid_msat,
        }

    async def pay_invoice(self, bolt11: str, timeout_s: float) -> dict[str, Any]:
        """Pay `bolt11` from the hub and wait for the outcome."""
        ldk = ldk_node_module()
        invoice = ldk.Bolt11Invoice.from_str(bolt11)
        started = time.monotonic()
        payment_id = str(
            await asyncio.to_thread(lambda: self.node.bolt11_payment().send(invoice, None))
        )
        book = self._book
        async with asyncio.timeout(timeout_s), book.changed:
            await book.changed.wait_for(lambda: payment_id in book.payments)
            outcome = book.payments[payment_id]
        return {
            "payment_id": payment_id,
            "succeeded": outcome.succeeded,
            "fee_paid_msat": outcome.fee_paid_msat,
            "reason": outcome.reason,
            "elapsed_s": round(time.monotonic() - started, 3),
        }
