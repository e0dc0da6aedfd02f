"""The wallet: sends and receipts over one Lightning node and the ledger, and the snapshot.

`Wallet` is what the rest of the daemon gets: the provider as `Payments` (invoices, and the
stream of settled inbound payments), the buyer as `Payer` (decode, pay once), the wallet
commands as itself. It owns the snapshot's `wallet` section. The node's lifecycle and its
events are run by `WalletService` (runner.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from autopilotd.config import Config
from autopilotd.crashpoints import crash_point
from autopilotd.errors import NotReady, UserError
from autopilotd.ports.lightning import (
    Invoice,
    LightningNode,
    NodeError,
)
from autopilotd.ports.payments import (
    DecodedInvoice,
    IssuedInvoice,
    PayOutcome,
    SettledPayment,
)
from autopilotd.runtime.configs import LiveConfig
from autopilotd.runtime.events import EventBus
from autopilotd.runtime.sections import WalletBalance, WalletSection, WalletState
from autopilotd.runtime.state import SectionWriter
from autopilotd.store.ledger import Ledger, PaymentRow
from autopilotd.vocab import PaymentDirection, PaymentStatus
from autopilotd.wallet.setup import needs_setup, restored_at

logger = logging.getLogger(__name__)

MIN_DEFAULT_FEE_SATS = 10
SAVE_WAIT_S = 2.0  # how long the wallet waits for the node to save its channel state
# What ldk-node keeps on chain per anchor channel unless the opener is trusted.
ANCHOR_RESERVE_SATS = 25_000


class Wallet:
    """Everything the wallet does, over one node and one ledger (see the module docstring)."""

    def __init__(
        self,
        *,
        config: LiveConfig,
        ledger: Ledger,
        writer: SectionWriter[WalletSection],
        events: EventBus,
    ) -> None:
        self._config = config
        self.ledger = ledger
        self._writer = writer
        self.events = events
        self.node: LightningNode | None = None
        self._settled = asyncio.Event()
        self._streams: list[asyncio.Queue[SettledPayment]] = []
        self._writer.set(restored_at=restored_at(config.current.paths.data_dir))
        if needs_setup(config.current):
            self.set_state(
                WalletState.NEEDS_SETUP,
                "back up its words (or restore yours) and choose a network",
                "set up your rig: the Set Up pane in the web UI, or 'autopilotctl setup.status'",
            )

    # -- state -----------------------------------------------------------------------------

    @property
    def config(self) -> Config:
        return self._config.current

    def section(self) -> WalletSection:
        return self._writer.current

    def set_state(
        self, state: WalletState, reason: str, next_step: str | None = None, **more: Any
    ) -> None:
        self._writer.set(state=state, reason=reason, next_step=next_step, **more)

    def require_node(self) -> LightningNode:
        section = self.section()
        if self.node is None or section.state is not WalletState.READY:
            raise NotReady(f"the wallet is {section.state.words}: {section.reason}")
        return self.node

    async def refresh(self) -> None:
        """Publish the node's balances (and the ledger's reservations) to the snapshot."""
        if self.node is None:
            return
        b = await self.node.balances()
        reserved = await self.ledger.reserved_msat()
        last = await self.ledger.last_payment()
        self._writer.set(
            balance=WalletBalance(
                lightning_sats=b.lightning_sats,
                spendable_sats=max(0, b.spendable_msat - reserved) // 1000,
                receivable_sats=b.receivable_msat // 1000,
                onchain_sats=b.onchain_sats,
                onchain_spendable_sats=b.onchain_spendable_sats,
                pending_sats=b.pending_sats,
                reserved_sats=-(-reserved // 1000),
            ),
            last_payment=None if last is None else _summary(last),
        )

    async def credit_received(
        self, payment_hash: str, amount_msat: int, preimage: str | None, lsp_fee_msat: int = 0
    ) -> None:
        """Record an inbound payment the node reports settled (once), and tell the streams.

        `amount_msat` is what the wallet received; `lsp_fee_msat` what an LSP took from it to
        open a just-in-time channel."""
        invoice = await self.ledger.invoice(payment_hash)
        description = invoice["description"] if invoice else ""
        crash_point("receive.before_credit")
        row, new = await self.ledger.credit_in(
            payment_hash, amount_msat, preimage, description, lsp_fee_msat
        )
        if row is None:
            logger.error(
                "inbound payment %s reported without a valid preimage: not credited", payment_hash
            )
            return
        if new:
            self.events.publish(
                "wallet.payment_received",
                payment_hash=payment_hash,
                amount_sats=amount_msat // 1000,
                amount_msat=amount_msat,
                lsp_fee_msat=lsp_fee_msat,
            )
            for queue in self._streams:
                queue.put_nowait(SettledPayment(payment_hash, amount_msat))
        self.settled_changed()

    def settled_changed(self) -> None:
        """A send's outcome was recorded: wake `wait_settled`."""
        settled, self._settled = self._settled, asyncio.Event()
        settled.set()

    async def wait_settled(self, payment_hash: str, timeout: float) -> PaymentRow | None:
        deadline = time.monotonic() + timeout
        while True:
            row = await self.ledger.get(payment_hash)
            if row is None or row.status in (PaymentStatus.SUCCEEDED, PaymentStatus.FAILED):
                return row
            left = deadline - time.monotonic()
            if left <= 0:
                return row
            try:
                async with asyncio.timeout(left):
                    await self._settled.wait()
            except TimeoutError:
                return await self.ledger.get(payment_hash)

    # -- Payments (the provider's port) ------------------------------------------------------

    async def create_invoice(
        self, amount_msat: int, description: str, expiry_s: int
    ) -> IssuedInvoice:
        inv, lsp_fee_msat = await self.receive_any(amount_msat, description, expiry_s)
        assert inv.amount_msat is not None
        return IssuedInvoice(
            inv.bolt11, inv.payment_hash, inv.amount_msat, inv.expires_at, lsp_fee_msat
        )

    async def lsp_fee_msat(self, payment_hash: str) -> int:
        invoice = await self.ledger.invoice(payment_hash)
        return int(invoice["lsp_fee_msat"]) if invoice else 0

    def settlements(self) -> AsyncIterator[SettledPayment]:
        queue: asyncio.Queue[SettledPayment] = asyncio.Queue()
        self._streams.append(queue)
        return self._drain(queue)

    async def _drain(self, queue: asyncio.Queue[SettledPayment]) -> AsyncIterator[SettledPayment]:
        try:
            while True:
                yield await queue.get()
        finally:
            self._streams.remove(queue)

    # -- Payer (the buyer's port) ----------------------------------------------------------

    def check_ready(self) -> None:
        self.require_node()

    def decode_invoice(self, bolt11: str) -> DecodedInvoice:
        inv = self._decode(bolt11)
        return DecodedInvoice(
            inv.payment_hash, inv.amount_msat, inv.description, inv.expires_at, inv.network
        )

    async def pay_invoice(self, bolt11: str, *, description: str) -> PayOutcome:
        row, repeated = await self.pay(bolt11, None, None, description=description)
        return PayOutcome(
            payment_hash=row.payment_hash,
            status=row.status,
            amount_msat=row.amount_msat,
            fee_msat=row.fee_msat,
            failure=row.failure,
            repeated=repeated,
        )

    # -- operations ------------------------------------------------------------------------

    async def receive(self, amount_msat: int, description: str, expiry_s: int) -> Invoice:
        node = self.require_node()
        if amount_msat <= 0:
            raise UserError("the amount must be positive")
        try:
            inv = await node.create_invoice(amount_msat, description, expiry_s)
        except NodeError as exc:
            raise UserError(f"the node could not create an invoice: {exc.reason}") from None
        await self.ledger.record_invoice(
            inv.payment_hash, inv.bolt11, inv.amount_msat, description, inv.expires_at
        )
        return inv

    async def receive_any(
        self, amount_msat: int, description: str, expiry_s: int
    ) -> tuple[Invoice, int]:
        """An invoice the wallet can be paid on now: over its channels when they have the
        inbound capacity, else over a just-in-time channel from the LSP (with its fee).

        Returns the invoice and the LSP's opening fee (0 over existing channels). Every way
        it cannot be paid raises UserError with the reason: no capacity and no LSP, the LSP
        unreachable, its fee above the limit, an amount it will not open a channel for.
        """
        node = self.require_node()
        balances = await node.balances()
        cfg = self.config
        if balances.receivable_msat >= amount_msat or amount_msat <= 0:
            return await self.receive(amount_msat, description, expiry_s), 0
        if not cfg.wallet_lsp:
            raise UserError(
                f"no inbound capacity for {amount_msat / 1000:g} sats and no LSP to open a "
                "channel: set wallet_lsp (or the network profile's LSP) in config.toml"
            )
        if not cfg.wallet_lsp_trusted and balances.onchain_spendable_sats < ANCHOR_RESERVE_SATS:
            raise UserError(
                f"a channel from the LSP needs {ANCHOR_RESERVE_SATS:,} sats on chain as a "
                "reserve, which this wallet does not have: fund it, or trust the LSP "
                "(wallet_lsp_trusted = true)"
            )
        limit_msat = cfg.wallet_jit_max_fee_sats * 1000
        try:
            jit = await node.create_jit_invoice(amount_msat, description, expiry_s, limit_msat)
        except NodeError as exc:
            raise UserError(_jit_failure(exc, amount_msat, cfg.wallet_jit_max_fee_sats)) from None
        inv = jit.invoice
        await self.ledger.record_invoice(
            inv.payment_hash,
            inv.bolt11,
            inv.amount_msat,
            description,
            inv.expires_at,
            lsp_fee_msat=jit.lsp_fee_msat,
        )
        self.events.publish(
            "wallet.jit_invoice",
            payment_hash=inv.payment_hash,
            amount_sats=amount_msat // 1000,
            lsp_fee_sats=-(-jit.lsp_fee_msat // 1000),
            lsp_fee_msat=jit.lsp_fee_msat,
        )
        return inv, jit.lsp_fee_msat

    def _decode(self, bolt11: str) -> Invoice:
        node = self.require_node()
        try:
            return node.decode(clean_bolt11(bolt11))
        except NodeError:
            raise UserError("that is not a valid BOLT11 invoice") from None

    async def pay(
        self, bolt11: str, amount_sats: int | None, max_fee_sats: int | None, description: str
    ) -> tuple[PaymentRow, bool]:
        """Pay a BOLT11 invoice once, whatever the retries, double clicks or crashes (M1–M4).

        Returns the ledger row after the wait, and whether an earlier attempt was found.
        """
        node = self.require_node()
        bolt11 = clean_bolt11(bolt11)
        inv = self._decode(bolt11)
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
        wait_s = self.config.wallet_pay_wait_s
        if not new:
            if row.direction is PaymentDirection.IN:
                raise UserError("this invoice is one of this wallet's own, already paid to it")
            settled = await self.wait_settled(row.payment_hash, wait_s)
            await self.refresh()  # the snapshot is never behind what the caller is told
            return settled or row, True
        crash_point("pay.after_intent")
        self.events.publish(
            "wallet.payment_started", payment_hash=inv.payment_hash, amount_sats=amount_msat // 1000
        )
        try:
            await node.pay(bolt11, None if inv.amount_msat else amount_msat, max_fee_sats * 1000)
        except NodeError as exc:
            existing = await node.payment(inv.payment_hash)
            if existing is None or existing.status == "failed":
                await self.ledger.settle_out(inv.payment_hash, succeeded=False, failure=exc.reason)
                self.events.publish(
                    "wallet.payment_failed", payment_hash=inv.payment_hash, reason=exc.reason
                )
                await self.refresh()
                raise UserError(f"the payment failed: {exc.reason}") from None
        # The node took the payment and changed the channel; a crash before it has saved that
        # change may cost the channel (docs/wallet.md). Let it save before our own next steps.
        await self.wait_node_saved(node)
        crash_point("pay.after_node_send")
        await self.ledger.mark_pending(inv.payment_hash)
        await self.refresh()
        settled = await self.wait_settled(inv.payment_hash, wait_s)
        await self.refresh()  # the snapshot is never behind what the caller is told
        return settled or row, False

    async def wait_node_saved(self, node: LightningNode) -> None:
        """Let the node save a channel update before the wallet's own next steps.

        LDK saves a channel's monitor before the channel manager; a process killed between
        the two may find its channel force-closed at the next start (docs/wallet.md, "After a
        hard crash"). Waiting here keeps what the wallet does next (ledger writes, a crash in
        them) out of that window; it cannot close the window for a kill from outside.
        """
        if not await node.wait_saved(SAVE_WAIT_S):
            logger.info("the node had not saved its channel state after %.0f s", SAVE_WAIT_S)

    def default_max_fee_sats(self, amount_msat: int) -> int:
        """The fee cap of a send that names none: the configured ppm, at least 10 sats."""
        ppm = self.config.wallet_default_max_fee_ppm
        return max(MIN_DEFAULT_FEE_SATS, math.ceil(amount_msat * ppm / 1e9))

    def decode(self, bolt11: str) -> dict[str, Any]:
        """What an invoice asks for, and the fee cap `pay` would apply to it; pays nothing."""
        node = self.require_node()
        inv = self._decode(bolt11)
        amount = inv.amount_msat
        return {
            "bolt11": clean_bolt11(bolt11),
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

    async def payment(self, payment_hash: str) -> PaymentRow:
        row = await self.ledger.get(payment_hash.lower())
        if row is None:
            raise UserError(f"no payment with hash {payment_hash} in this wallet")
        return row


def _jit_failure(exc: NodeError, amount_msat: int, limit_sats: int) -> str:
    """Why the LSP sold no just-in-time channel, in the user's terms."""
    amount = f"{amount_msat / 1000:g} sats"
    return {
        "LiquidityFeeTooHigh": (
            f"the LSP's fee for a channel is above your limit of {limit_sats} sats "
            "(wallet_jit_max_fee_sats)"
        ),
        "LiquidityRequestFailed": (
            f"the LSP will not open a channel for a payment of {amount} (below its minimum, "
            "above its maximum, or the fee would take it all)"
        ),
        "ConnectionFailed": "the LSP is unreachable (wallet_lsp)",
        "LiquiditySourceUnavailable": "the LSP is unreachable or not configured (wallet_lsp)",
    }.get(exc.kind, f"the LSP could not open a channel: {exc.reason}")


def clean_bolt11(bolt11: str) -> str:
    bolt11 = bolt11.strip()
    if bolt11.lower().startswith("lightning:"):
        bolt11 = bolt11[len("lightning:") :]
    return bolt11


def _summary(row: PaymentRow) -> dict[str, Any]:
    return {
        "payment_hash": row.payment_hash,
        "direction": row.direction.value,
        "status": row.status.value,
        "amount_sats": row.amount_msat // 1000,
        "at": row.updated_at,
    }
