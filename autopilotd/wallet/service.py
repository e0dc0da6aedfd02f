"""The wallet service: the node's lifecycle, sends and receipts, reconciliation, the snapshot.

Lifecycle: `starting` (seed, node start) → `syncing` (chain sync, then reconciliation of every
open send with the node's own payment store) → `ready`. Failures move it to `error` with the
reason and what to do. Node events are handled one at a time, recorded in the ledger, and only
then acknowledged to the node, so a crash replays the event instead of losing it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from autopilotd.config import split_list
from autopilotd.crashpoints import crash_point
from autopilotd.errors import NotReady, UserError
from autopilotd.runtime.context import Runtime
from autopilotd.runtime.snapshot import WalletBalance, WalletSection, WalletState
from autopilotd.wallet.ledger import Ledger, PaymentRow
from autopilotd.wallet.port import (
    LightningNode,
    NodeError,
    NodeEvent,
    OtherEvent,
    PaymentFailed,
    PaymentReceived,
    PaymentSucceeded,
)
from autopilotd.wallet.seed import load_or_create_seed

logger = logging.getLogger(__name__)

NodeFactory = Callable[[str], LightningNode]
"""Builds the (not yet started) node from the mnemonic."""

BALANCE_REFRESH_S = 5.0
START_TIMEOUT_S = 120.0
MIN_DEFAULT_FEE_SATS = 10


class Wallet:
    """Everything the wallet commands do, over one node and one ledger."""

    def __init__(self, rt: Runtime, node_factory: NodeFactory) -> None:
        self.rt = rt
        self.ledger = Ledger(rt.store)
        self._node_factory = node_factory
        self.node: LightningNode | None = None
        self._settled = asyncio.Event()
        self.receive_listeners: list[Callable[[PaymentRow], None]] = []

    # -- state -----------------------------------------------------------------------------

    def section(self) -> WalletSection:
        return self.rt.state.current.wallet

    def set_state(
        self, state: WalletState, reason: str, next_step: str | None = None, **more: Any
    ) -> None:
        old = self.section()
        new = dataclasses.replace(
            old, state=state, reason=reason, next_step=next_step, updated_at=time.time(), **more
        )
        self.rt.state.replace(wallet=new)
        if old.state is not state:
            self.rt.events.publish("wallet.state_changed", state=state.value, reason=reason)

    def require_node(self) -> LightningNode:
        section = self.section()
        if self.node is None or section.state is not WalletState.READY:
            raise NotReady(f"the wallet is {section.state.value}: {section.reason}")
        return self.node

    async def refresh(self) -> None:
        """Publish the node's balances (and the ledger's reservations) to the snapshot."""
        if self.node is None:
            return
        b = await self.node.balances()
        reserved = await self.ledger.reserved_msat()
        last = await self.ledger.last_payment()
        balance = WalletBalance(
            lightning_sats=b.lightning_sats,
            spendable_sats=max(0, b.spendable_msat - reserved) // 1000,
            receivable_sats=b.receivable_msat // 1000,
            onchain_sats=b.onchain_sats,
            onchain_spendable_sats=b.onchain_spendable_sats,
            pending_sats=b.pending_sats,
            reserved_sats=-(-reserved // 1000),
        )
        section = self.section()
        last_json = None if last is None else _summary(last)
        if section.balance != balance or section.last_payment != last_json:
            self.rt.state.replace(
                wallet=dataclasses.replace(section, balance=balance, last_payment=last_json)
            )

    # -- start-up ----------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.rt.config
        self.set_state(WalletState.STARTING, "opening the wallet", network=cfg.wallet_network)
        mnemonic, created = load_or_create_seed(cfg.paths.data_dir)
        if created:
            logger.warning(
                "a new wallet seed was created; back it up: autopilotctl wallet.reveal_mnemonic"
            )
        node = self._node_factory(mnemonic)
        del mnemonic
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await node.start()
        except TimeoutError:
            raise NodeError(
                f"it did not start within {START_TIMEOUT_S:.0f} s; is the chain source "
                "(wallet_bitcoind_rpc_url or wallet_esplora_url) reachable?"
            ) from None
        self.node = node
        self.set_state(
            WalletState.SYNCING,
            "syncing with the chain",
            node_id=node.node_id(),
            listening=node.listening(),
        )
        await node.sync()
        await self._connect_peers(node)
        await self.reconcile()
        await self.refresh()
        self.set_state(WalletState.READY, "ready to receive and send")

    async def _connect_peers(self, node: LightningNode) -> None:
        """Reach the configured peers (an LSP, the devnet hub) so channels are usable at once.

        A peer that cannot be reached now is logged, not fatal: the node keeps retrying it.
        """
        for entry in split_list(self.rt.config.wallet_peers):
            node_id, _, address = entry.partition("@")
            if not node_id or not address:
                continue
            try:
                await node.connect(node_id, address)
            except NodeError as exc:
                logger.warning("peer %s at %s: %s", node_id[:16], address, exc.reason)

    async def reconcile(self) -> None:
        """Settle every open send from the node's own store, and credit missed receipts (M2, M6)."""
        assert self.node is not None
        for row in await self.ledger.open_sends():
            p = await self.node.payment(row.payment_hash)
            if p is None:
                await self.ledger.settle_out(
                    row.payment_hash,
                    succeeded=False,
                    failure="not sent: autopilotd stopped before the node took the payment",
                )
            elif p.status == "succeeded":
                await self.ledger.settle_out(
                    row.payment_hash, succeeded=True, fee_msat=p.fee_msat, preimage=p.preimage
                )
            elif p.status == "failed":
                await self.ledger.settle_out(row.payment_hash, succeeded=False, failure="failed")
            else:
                await self.ledger.mark_pending(row.payment_hash)
        for p in await self.node.payments():
            known = await self.ledger.get(p.payment_hash)
            if p.direction == "in" and p.status == "succeeded" and p.amount_msat and known is None:
                await self._credit(p.payment_hash, p.amount_msat, p.preimage)

    # -- events ----------------------------------------------------------------------------

    async def handle_events(self) -> None:
        assert self.node is not None
        node = self.node
        while True:
            event = await node.next_event()
            await self.handle(event)
            crash_point("wallet.before_event_ack")
            await node.event_handled()
            await self.refresh()

    async def handle(self, event: NodeEvent) -> None:
        assert self.node is not None
        if isinstance(event, PaymentReceived):
            p = await self.node.payment(event.payment_hash)
            await self._credit(event.payment_hash, event.amount_msat, p.preimage if p else None)
        elif isinstance(event, PaymentSucceeded):
            crash_point("pay.after_success_before_ledger")
            row = await self.ledger.settle_out(
                event.payment_hash, succeeded=True, fee_msat=event.fee_msat, preimage=event.preimage
            )
            if row is not None and row.status == "succeeded":
                self.rt.events.publish(
                    "wallet.payment_sent",
                    payment_hash=row.payment_hash,
                    amount_sats=row.amount_msat // 1000,
                    fee_msat=row.fee_msat,
                )
            elif row is not None:
                logger.error("send %s: %s", row.payment_hash, row.failure)
            self._wake()
        elif isinstance(event, PaymentFailed):
            if event.payment_hash is not None:
                row = await self.ledger.settle_out(
                    event.payment_hash, succeeded=False, failure=event.reason
                )
                if row is not None and row.status == "failed":
                    self.rt.events.publish(
                        "wallet.payment_failed", payment_hash=row.payment_hash, reason=event.reason
                    )
            self._wake()
        elif isinstance(event, OtherEvent):
            logger.info("node event %s", event.kind)

    async def _credit(self, payment_hash: str, amount_msat: int, preimage: str | None) -> None:
        invoice = await self.ledger.invoice(payment_hash)
        description = invoice["description"] if invoice else ""
        crash_point("receive.before_credit")
        row, new = await self.ledger.credit_in(payment_hash, amount_msat, preimage, description)
        if row is None:
            logger.error(
                "inbound payment %s reported without a valid preimage: not credited", payment_hash
            )
            return
        if new:
            self.rt.events.publish(
                "wallet.payment_received",
                payment_hash=payment_hash,
                amount_sats=amount_msat // 1000,
                amount_msat=amount_msat,
            )
            for listener in self.receive_listeners:
                listener(row)
        self._wake()

    def _wake(self) -> None:
        settled, self._settled = self._settled, asyncio.Event()
        settled.set()

    async def wait_settled(self, payment_hash: str, timeout: float) -> PaymentRow | None:
        deadline = time.monotonic() + timeout
        while True:
            row = await self.ledger.get(payment_hash)
            if row is None or row.status in ("succeeded", "failed"):
                return row
            left = deadline - time.monotonic()
            if left <= 0:
                return row
            try:
                async with asyncio.timeout(left):
                    await self._settled.wait()
            except TimeoutError:
                return await self.ledger.get(payment_hash)

    # -- operations ------------------------------------------------------------------------

    async def receive(self, amount_sats: int, description: str, expiry_s: int) -> dict[str, Any]:
        node = self.require_node()
        if amount_sats <= 0:
            raise UserError("amount_sats must be positive")
        if not 60 <= expiry_s <= 7 * 24 * 3600:
            raise UserError("expiry_s must be between 60 s and 7 days")
        if len(description) > 256:
            raise UserError("description must be at most 256 characters")
        try:
            inv = await node.create_invoice(amount_sats * 1000, description, expiry_s)
        except NodeError as exc:
            raise UserError(f"the node could not create an invoice: {exc.reason}") from None
        await self.ledger.record_invoice(
            inv.payment_hash, inv.bolt11, inv.amount_msat, description, inv.expires_at
        )
        return {
            "bolt11": inv.bolt11,
            "payment_hash": inv.payment_hash,
            "amount_sats": amount_sats,
            "description": description,
            "expires_at": inv.expires_at,
        }

    async def pay(
        self, bolt11: str, amount_sats: int | None, max_fee_sats: int | None, description: str
    ) -> dict[str, Any]:
        """Pay a BOLT11 invoice once, whatever the retries, double clicks or crashes (M1–M4)."""
        node = self.require_node()
        bolt11 = _clean_bolt11(bolt11)
        try:
            inv = node.decode(bolt11)
        except NodeError:
            raise UserError("that is not a valid BOLT11 invoice") from None
        if inv.network != node.network:
            raise UserError(f"this invoice is for {inv.network}; the wallet runs on {node.network}")
        if inv.expires_at <= time.time():
            raise UserError("this invoice has expired; ask for a new one")
        if inv.amount_msat is None:
            if amount_sats is None:
                raise UserError("this invoice names no amount: give amount_sats")
            amount_msat = amount_sats * 1000
        else:
            if amount_sats is not None and amount_sats * 1000 != inv.amount_msat:
                raise UserError(
                    f"the invoice asks for {inv.amount_msat / 1000:g} sats, not {amount_sats}"
                )
            amount_msat = inv.amount_msat
        if amount_msat <= 0:
            raise UserError("the amount must be positive")
        if max_fee_sats is None:
            max_fee_sats = self.default_max_fee_sats(amount_msat)
        if max_fee_sats < 0:
            raise UserError("max_fee_sats must not be negative")
        crash_point("pay.before_intent")

        async def spendable() -> int:
            return (await node.balances()).spendable_msat

        row, new = await self.ledger.begin_send(
            payment_hash=inv.payment_hash,
            bolt11=bolt11,
            amount_msat=amount_msat,
            max_fee_msat=max_fee_sats * 1000,
            description=description or inv.description,
            spendable_msat=spendable,
        )
        wait_s = self.rt.config.wallet_pay_wait_s
        if not new:
            if row.direction == "in":
                raise UserError("this invoice is one of this wallet's own, already paid to it")
            settled = await self.wait_settled(row.payment_hash, wait_s)
            await self.refresh()  # the snapshot is never behind what the caller is told
            return _result(settled or row, repeated=True)
        crash_point("pay.after_intent")
        self.rt.events.publish(
            "wallet.payment_started", payment_hash=inv.payment_hash, amount_sats=amount_msat // 1000
        )
        try:
            await node.pay(bolt11, None if inv.amount_msat else amount_msat, max_fee_sats * 1000)
        except NodeError as exc:
            existing = await node.payment(inv.payment_hash)
            if existing is None or existing.status == "failed":
                await self.ledger.settle_out(inv.payment_hash, succeeded=False, failure=exc.reason)
                self.rt.events.publish(
                    "wallet.payment_failed", payment_hash=inv.payment_hash, reason=exc.reason
                )
                await self.refresh()
                raise UserError(f"the payment failed: {exc.reason}") from None
        crash_point("pay.after_node_send")
        await self.ledger.mark_pending(inv.payment_hash)
        await self.refresh()
        settled = await self.wait_settled(inv.payment_hash, wait_s)
        await self.refresh()  # the snapshot is never behind what the caller is told
        return _result(settled or row, repeated=False)

    def default_max_fee_sats(self, amount_msat: int) -> int:
        """The fee cap of a send that names none: the configured ppm, at least 10 sats."""
        ppm = self.rt.config.wallet_default_max_fee_ppm
        return max(MIN_DEFAULT_FEE_SATS, math.ceil(amount_msat * ppm / 1e9))

    def decode(self, bolt11: str) -> dict[str, Any]:
        """What an invoice asks for, and the fee cap `pay` would apply to it; pays nothing."""
        node = self.require_node()
        bolt11 = _clean_bolt11(bolt11)
        try:
            inv = node.decode(bolt11)
        except NodeError:
            raise UserError("that is not a valid BOLT11 invoice") from None
        amount = inv.amount_msat
        return {
            "bolt11": bolt11,
            "payment_hash": inv.payment_hash,
            "amount_sats": None if amount is None else amount // 1000,
            "amount_msat": amount,
            "description": inv.description,
            "expires_at": inv.expires_at,
            "expired": inv.expires_at <= time.time(),
            "network": inv.network,
            "network_matches": inv.network == node.network,
            "max_fee_sats": None if amount is None else self.default_max_fee_sats(amount),
        }

    async def payment(self, payment_hash: str) -> dict[str, Any]:
        row = await self.ledger.get(payment_hash.lower())
        if row is None:
            raise UserError(f"no payment with hash {payment_hash} in this wallet")
        return _result(row, repeated=False)


def _clean_bolt11(bolt11: str) -> str:
    bolt11 = bolt11.strip()
    if bolt11.lower().startswith("lightning:"):
        bolt11 = bolt11[len("lightning:") :]
    return bolt11


def _summary(row: PaymentRow) -> dict[str, Any]:
    return {
        "payment_hash": row.payment_hash,
        "direction": row.direction,
        "status": row.status,
        "amount_sats": row.amount_msat // 1000,
        "at": row.updated_at,
    }


def _result(row: PaymentRow, *, repeated: bool) -> dict[str, Any]:
    data = row.to_json()
    data["repeated"] = repeated
    data["settled"] = row.status == "succeeded"
    if row.status in ("intent", "pending"):
        data["hint"] = "still in flight: check with 'autopilotctl wallet.payment --payment-hash …'"
    if row.status == "unknown":
        data["hint"] = "the outcome is not proven; the sats stay reserved until it is"
    return data


class WalletService:
    """Runs the wallet under the runtime's TaskGroup."""

    name = "wallet"

    def __init__(self, wallet: Wallet) -> None:
        self.wallet = wallet

    async def run(self, ready: Callable[[], None]) -> None:
        w = self.wallet
        try:
            await w.start()
        except NodeError as exc:
            w.set_state(
                WalletState.ERROR, f"the Lightning node could not start: {exc.reason}", _fix(w)
            )
            raise
        except Exception:
            w.set_state(WalletState.ERROR, "the Lightning node could not start", _fix(w))
            raise
        ready()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(w.handle_events())
                tg.create_task(self._refresh_loop())
        finally:
            node, w.node = w.node, None
            if node is not None:
                await asyncio.shield(node.stop())

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(BALANCE_REFRESH_S)
            try:
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


def _fix(w: Wallet) -> str:
    return "check the chain source in config.toml and 'autopilotctl logs', then restart autopilotd"
