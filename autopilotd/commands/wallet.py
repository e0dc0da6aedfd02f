"""Wallet commands: balance, receive, decode, pay and withdraw, history, address, mnemonic."""

from __future__ import annotations

from typing import Annotated, Any

from autopilotd.codec import Bounds
from autopilotd.errors import UserError
from autopilotd.registry import Registry
from autopilotd.runtime.context import Runtime
from autopilotd.store.ledger import PaymentRow
from autopilotd.vocab import PaymentStatus
from autopilotd.wallet.seed import read_seed, seed_path
from autopilotd.wallet.service import Wallet


def payment_json(row: PaymentRow, *, repeated: bool) -> dict[str, Any]:
    """A ledger row as the commands answer it, with what the user should know about it."""
    data = row.to_json()
    data["repeated"] = repeated
    data["settled"] = row.status is PaymentStatus.SUCCEEDED
    if row.status in (PaymentStatus.INTENT, PaymentStatus.PENDING):
        data["hint"] = "still in flight: check with 'autopilotctl wallet.payment --payment-hash …'"
    if row.status is PaymentStatus.UNKNOWN:
        data["hint"] = "the outcome is not proven; the sats stay reserved until it is"
    return data


REVEAL_CONFIRMATION = "I understand this shows my wallet's secret words"


def register(reg: Registry, rt: Runtime, wallet: Wallet) -> None:
    """Wallet commands exist whether or not the wallet runs; when off they say so."""

    @reg.command("wallet.status")
    async def wallet_status() -> dict[str, Any]:
        """Show the wallet's state (with the reason and what to do), network, node id, balance."""
        section: dict[str, Any] = rt.state.current.to_json(rt.clock.now())["wallet"]
        return section

    @reg.command("wallet.balance", needs={"wallet"})
    async def wallet_balance() -> dict[str, Any]:
        """Show the balance as the Lightning node reports it right now.

        spendable_sats is what can be sent now (channel outbound capacity minus sats reserved
        by sends in flight); onchain and pending figures come from the node's on-chain wallet.
        """
        await wallet.refresh()
        balance = rt.state.current.to_json(rt.clock.now())["wallet"]["balance"]
        assert isinstance(balance, dict)
        return balance

    @reg.command("wallet.receive", access="control", needs={"wallet"})
    async def wallet_receive(
        amount_sats: int,
        description: Annotated[str, Bounds(max_length=256)] = "",
        expiry_s: Annotated[int, Bounds(60, 7 * 24 * 3600)] = 3600,
    ) -> dict[str, Any]:
        """Create a BOLT11 invoice for amount_sats; returns the invoice and its payment hash.

        Without the inbound capacity for it, the invoice goes over a just-in-time channel
        from the LSP: lsp_fee_sats is what the LSP takes from the payment to open it.
        The payment counts only when this wallet's node reports it settled.
        """
        if amount_sats <= 0:
            raise UserError("amount_sats must be positive")
        inv, lsp_fee_msat = await wallet.receive_any(amount_sats * 1000, description, expiry_s)
        return {
            "bolt11": inv.bolt11,
            "payment_hash": inv.payment_hash,
            "amount_sats": amount_sats,
            "description": description,
            "expires_at": inv.expires_at,
            "lsp_fee_sats": -(-lsp_fee_msat // 1000),  # rounded up: never shown smaller
            "lsp_fee_msat": lsp_fee_msat,
        }

    @reg.command("wallet.pay", access="owner", moves_money=True, needs={"wallet"})
    async def wallet_pay(
        bolt11: str, amount_sats: int | None = None, max_fee_sats: int | None = None
    ) -> dict[str, Any]:
        """Pay a BOLT11 invoice at most once: paying it again returns the first payment's result.

        amount_sats is needed only for invoices that name no amount. max_fee_sats caps the
        routing fee (default 1 %, at least 10 sats); amount + max fee is reserved until the
        payment settles. Waits up to 20 s for the outcome, then answers 'pending'.
        """
        row, repeated = await wallet.pay(bolt11, amount_sats, max_fee_sats, description="")
        return payment_json(row, repeated=repeated)

    @reg.command("wallet.withdraw", access="owner", moves_money=True, needs={"wallet"})
    async def wallet_withdraw(
        bolt11: str, amount_sats: int | None = None, max_fee_sats: int | None = None
    ) -> dict[str, Any]:
        """Withdraw: pay an invoice from your other wallet, with wallet.pay's guarantees."""
        row, repeated = await wallet.pay(bolt11, amount_sats, max_fee_sats, "withdrawal")
        return payment_json(row, repeated=repeated)

    @reg.command("wallet.decode", needs={"wallet"})
    async def wallet_decode(bolt11: str) -> dict[str, Any]:
        """Decode a BOLT11 invoice without paying it: amount, description, expiry, network.

        Also shows max_fee_sats, the routing-fee cap wallet.pay applies when it is given none,
        so a person sees what a payment can cost before confirming it.
        """
        return wallet.decode(bolt11)

    @reg.command("wallet.payment")
    async def wallet_payment(payment_hash: str) -> dict[str, Any]:
        """Show one payment of this wallet, by payment hash, as the ledger records it."""
        return payment_json(await wallet.payment(payment_hash), repeated=False)

    @reg.command("wallet.history")
    async def wallet_history(
        limit: Annotated[int, Bounds(1, 500)] = 50, before_seq: int | None = None
    ) -> dict[str, Any]:
        """List payments newest first; pass next_before_seq back as before_seq for the next page.

        The order is the ledger's own and stays the same across restarts.
        """
        rows = await wallet.ledger.history(limit=limit, before_seq=before_seq)
        return {
            "payments": [r.to_json() for r in rows],
            "next_before_seq": rows[-1].seq if len(rows) == limit else None,
        }

    @reg.command("wallet.onchain_address", access="control", needs={"wallet"})
    async def wallet_onchain_address() -> dict[str, Any]:
        """Return a new on-chain address of this wallet (to fund channels)."""
        return {"address": await wallet.require_node().onchain_address()}

    @reg.command("wallet.reveal_mnemonic", access="owner")
    async def wallet_reveal_mnemonic(confirm: str) -> dict[str, Any]:
        """Show the wallet's 24 secret words, the one backup of its funds and identity.

        Anyone who sees them can take the funds. confirm must be exactly:
        "I understand this shows my wallet's secret words". Never exposed over MCP.
        """
        if confirm != REVEAL_CONFIRMATION:
            raise UserError(f'to reveal the words, pass confirm="{REVEAL_CONFIRMATION}"')
        path = seed_path(rt.config.paths.data_dir)
        if not path.exists():
            raise UserError("this home has no wallet seed yet (the wallet has never started)")
        rt.events.publish("wallet.mnemonic_revealed")
        return {"mnemonic": read_seed(path)}
