"""Runs the wallet: the node's lifecycle, its events, reconciliation, the balance refresh.

Lifecycle: `starting` (seed, node start) → `syncing` (chain sync, then reconciliation of every
open send, Lightning and on-chain, with the node's own store) → `ready`. Failures move it to
`error` with the reason and what to do. Node events are handled one at a time, recorded in the
ledger, and only then acknowledged to the node, so a crash replays the event instead of losing
it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from autopilotd.config import split_list
from autopilotd.crashpoints import crash_point
from autopilotd.errors import StartupCheckFailed
from autopilotd.ports.lightning import (
    LightningNode,
    NodeError,
    NodeEvent,
    OtherEvent,
    PaymentFailed,
    PaymentReceived,
    PaymentSucceeded,
)
from autopilotd.runtime.sections import WalletState
from autopilotd.vocab import PaymentStatus
from autopilotd.wallet.network import check_network
from autopilotd.wallet.onchain import OnchainWallet
from autopilotd.wallet.seed import load_or_create_seed
from autopilotd.wallet.service import Wallet

logger = logging.getLogger(__name__)

NodeFactory = Callable[[str], LightningNode]
"""Builds the (not yet started) node from the mnemonic."""

BALANCE_REFRESH_S = 5.0
START_TIMEOUT_S = 120.0
FIX = "check the chain source in config.toml and 'autopilotctl logs', then restart autopilotd"
CHECK_FIX = "do what the reason says, then restart autopilotd"


class WalletService:
    """Runs the wallet under the runtime's TaskGroup."""

    name = "wallet"

    def __init__(
        self, wallet: Wallet, node_factory: NodeFactory, onchain: OnchainWallet | None = None
    ) -> None:
        self.wallet = wallet
        self._node_factory = node_factory
        self.onchain = onchain

    async def start(self) -> None:
        cfg = self.wallet.config
        self.wallet.set_state(
            WalletState.STARTING, "opening the wallet", network=cfg.wallet_network
        )
        mnemonic, created = load_or_create_seed(cfg.paths.data_dir)
        if created:
            logger.warning(
                "a new wallet seed was created; back it up: autopilotctl wallet.reveal_mnemonic"
            )
        check_network(cfg.paths.data_dir, cfg.wallet_chain())
        node = self._node_factory(mnemonic)
        del mnemonic
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await node.start()
        except TimeoutError:
            raise NodeError(
                f"it did not start within {START_TIMEOUT_S:.0f} s; is the chain source "
                "(wallet_bitcoind_rpc_url, wallet_esplora_url or wallet_electrum_url) reachable?"
            ) from None
        except asyncio.CancelledError:
            # A stop asked for while the node starts: ldk-node's stop waits for the start to
            # finish, then saves the channel state. A node left running would end as a kill
            # does, and could lose a channel (docs/wallet.md, "After a hard crash").
            await asyncio.shield(node.stop())
            raise
        self.wallet.node = node
        self.wallet.set_state(
            WalletState.SYNCING,
            "syncing with the chain",
            node_id=node.node_id(),
            listening=node.listening(),
            lsp=cfg.wallet_lsp.partition("@")[0] or None,
        )
        await node.sync()
        await self._connect_peers(node)
        await self.reconcile()
        if self.onchain is not None:
            try:
                await self.onchain.reconcile()
            except NodeError as exc:  # it moves on at the next refresh
                logger.warning("on-chain sends: %s", exc.reason)
        await self.wallet.refresh()
        self.wallet.set_state(WalletState.READY, "ready to receive and send")

    async def _connect_peers(self, node: LightningNode) -> None:
        """Reach the configured peers (an LSP, the devnet hub) so channels are usable at once.

        A peer that cannot be reached now is logged, not fatal: the node keeps retrying it.
        """
        for entry in split_list(self.wallet.config.wallet_peers):
            node_id, _, address = entry.partition("@")
            if not node_id or not address:
                continue
            try:
                await node.connect(node_id, address)
            except NodeError as exc:
                logger.warning("peer %s at %s: %s", node_id[:16], address, exc.reason)

    async def reconcile(self) -> None:
        """Settle every open send from the node's own store, and credit missed receipts (M2, M6)."""
        node = self.wallet.node
        assert node is not None
        ledger = self.wallet.ledger
        for row in await ledger.open_sends():
            p = await node.payment(row.payment_hash)
            if p is None:
                await ledger.settle_out(
                    row.payment_hash,
                    succeeded=False,
                    failure="not sent: autopilotd stopped before the node took the payment",
                )
            elif p.status == "succeeded":
                await ledger.settle_out(
                    row.payment_hash, succeeded=True, fee_msat=p.fee_msat, preimage=p.preimage
                )
            elif p.status == "failed":
                await ledger.settle_out(row.payment_hash, succeeded=False, failure="failed")
            else:
                await ledger.mark_pending(row.payment_hash)
        for p in await node.payments():
            known = await ledger.get(p.payment_hash)
            if p.direction == "in" and p.status == "succeeded" and p.amount_msat and known is None:
                await self.wallet.credit_received(
                    p.payment_hash, p.amount_msat, p.preimage, p.skimmed_fee_msat
                )

    async def handle_events(self) -> None:
        node = self.wallet.node
        assert node is not None
        while True:
            event = await node.next_event()
            if not isinstance(event, OtherEvent):
                # A payment event follows a channel update: as in `Wallet.pay`, let the node
                # save it before this event is recorded and acknowledged.
                await self.wallet.wait_node_saved(node)
            await self.handle(event)
            crash_point("wallet.before_event_ack")
            await node.event_handled()
            await self.wallet.refresh()

    async def handle(self, event: NodeEvent) -> None:
        node, ledger, events = self.wallet.node, self.wallet.ledger, self.wallet.events
        assert node is not None
        if isinstance(event, PaymentReceived):
            p = await node.payment(event.payment_hash)
            preimage = p.preimage if p else None
            skimmed = p.skimmed_fee_msat if p else 0
            await self.wallet.credit_received(
                event.payment_hash, event.amount_msat, preimage, skimmed
            )
        elif isinstance(event, PaymentSucceeded):
            crash_point("pay.after_success_before_ledger")
            row = await ledger.settle_out(
                event.payment_hash, succeeded=True, fee_msat=event.fee_msat, preimage=event.preimage
            )
            if row is not None and row.status is PaymentStatus.SUCCEEDED:
                events.publish(
                    "wallet.payment_sent",
                    payment_hash=row.payment_hash,
                    amount_sats=row.amount_msat // 1000,
                    fee_msat=row.fee_msat,
                )
            elif row is not None:
                logger.error("send %s: %s", row.payment_hash, row.failure)
            self.wallet.settled_changed()
        elif isinstance(event, PaymentFailed):
            if event.payment_hash is not None:
                row = await ledger.settle_out(
                    event.payment_hash, succeeded=False, failure=event.reason
                )
                if row is not None and row.status is PaymentStatus.FAILED:
                    events.publish(
                        "wallet.payment_failed", payment_hash=row.payment_hash, reason=event.reason
                    )
            self.wallet.settled_changed()
        elif isinstance(event, OtherEvent):
            logger.info("node event %s", event.kind)

    async def run(self, ready: Callable[[], None]) -> None:
        """Start the wallet, then handle its events until cancelled.

        Once the node has started, every way out (a stop during the chain sync or the
        reconciliation, a stop mid-payment, a failure) goes through `node.stop()`, which saves
        the channel state; only a kill skips it.
        """
        w = self.wallet
        try:
            try:
                await self.start()
            except NodeError as exc:
                w.set_state(
                    WalletState.ERROR, f"the Lightning node could not start: {exc.reason}", FIX
                )
                raise
            except StartupCheckFailed as exc:
                w.set_state(WalletState.ERROR, exc.message, CHECK_FIX)
                raise
            except Exception:
                w.set_state(WalletState.ERROR, "the Lightning node could not start", FIX)
                raise
            ready()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.handle_events())
                tg.create_task(self._refresh_loop())
        finally:
            node, w.node = w.node, None
            if node is not None:
                await asyncio.shield(node.stop())

    async def _refresh_loop(self) -> None:
        """The node's balances change without events (on-chain confirmations, channel updates);
        refreshing publishes a new snapshot only when a figure actually changed. On-chain sends
        and cash-outs move on here too (confirmations, a cash-out's sweep)."""
        while True:
            await asyncio.sleep(BALANCE_REFRESH_S)
            try:
                if self.onchain is not None:
                    await self.onchain.advance()
                await self.wallet.refresh()
            except NodeError as exc:
                self.wallet.set_state(
                    WalletState.DEGRADED,
                    f"the node does not answer: {exc.reason}",
                    "wait a minute; if it stays degraded, restart autopilotd",
                )
            else:
                if self.wallet.section().state is WalletState.DEGRADED:
                    self.wallet.set_state(WalletState.READY, "ready to receive and send")
