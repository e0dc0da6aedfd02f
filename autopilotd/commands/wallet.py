"""Wallet commands: balance, receive, decode, pay and withdraw, history, on-chain sends and
cash-out, address, mnemonic."""

from __future__ import annotations

from typing import Annotated, Any

from autopilotd.codec import Bounds
from autopilotd.errors import UserError
from autopilotd.ports.onchain import FEE_RATE_MAX_SAT_VB, FEE_RATE_MIN_SAT_VB
from autopilotd.registry import Registry
from autopilotd.runtime.context import Runtime
from autopilotd.store.ledger import PaymentRow
from autopilotd.store.onchain import OnchainSendRow
from autopilotd.vocab import OnchainStatus, PaymentStatus
from autopilotd.wallet.onchain import OnchainWallet
from autopilotd.wallet.seed import read_seed, seed_path
from autopilotd.wallet.service import Wallet

FeeRate = Annotated[int, Bounds(FEE_RATE_MIN_SAT_VB, FEE_RATE_MAX_SAT_VB)]


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


ONCHAIN_HINTS = {
    OnchainStatus.CLOSING: "the channels are closing: the sweep goes out once each closing "
    "transaction is in a block",
    OnchainStatus.INTENT: "being handed to the node",
    OnchainStatus.BROADCAST: "broadcast: the fee paid shows once a block holds it",
    OnchainStatus.UNKNOWN: "not proven either way yet: it resolves at the next block",
}


def onchain_json(row: OnchainSendRow, *, repeated: bool) -> dict[str, Any]:
    """An on-chain send or cash-out as the commands answer it."""
    data = row.to_json()
    data["repeated"] = repeated
    hint = ONCHAIN_HINTS.get(row.status)
    if hint is not None:
        data["hint"] = hint
    return data


REVEAL_CONFIRMATION = "I understand this shows my wallet's secret words"


def register(reg: Registry, rt: Runtime, wallet: Wallet, onchain: OnchainWallet) -> None:
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
        """Return a new on-chain address of this wallet, and its bitcoin: link for a QR code.

        Coins sent to it are this wallet's on-chain funds: they can be sent on or cashed out,
        and they hold the on-chain reserve a channel from an LSP you do not trust needs.
        """
        address = await wallet.require_node().onchain_address()
        return {"address": address, "uri": f"bitcoin:{address}"}

    @reg.command("wallet.onchain_preview", needs={"wallet"})
    async def wallet_onchain_preview(
        address: str, amount_sats: int, fee_rate_sat_vb: FeeRate
    ) -> dict[str, Any]:
        """Show what sending amount_sats on chain to address would cost, without sending it.

        amount_sats is exactly what the address receives. fee_sats is the fee at
        fee_rate_sat_vb: exact when fee_exact is true (the wallet holds one coin), otherwise
        the most it can be (the node chooses which coins to spend; coins says how many the
        figure allows for). Confirm with wallet.onchain_send, passing fee_sats as max_fee_sats.
        """
        return await onchain.preview_send(address, amount_sats, fee_rate_sat_vb)

    @reg.command("wallet.onchain_send", access="owner", moves_money=True, needs={"wallet"})
    async def wallet_onchain_send(
        address: str, amount_sats: int, fee_rate_sat_vb: FeeRate, max_fee_sats: int | None = None
    ) -> dict[str, Any]:
        """Send amount_sats on chain to address at fee_rate_sat_vb (1 to 1,000 sat/vB), once.

        max_fee_sats is the fee you confirmed (wallet.onchain_preview's fee_sats): if the send
        could now cost more, it is refused and nothing is sent. The same amount to the same
        address while an earlier one is not yet in a block returns that one, not a second
        send. The answer has the txid; wallet.onchain_sends shows the fee paid once a block
        holds it. Withdrawing by paying an invoice (wallet.withdraw) stays the quick way out.
        """
        row, repeated = await onchain.send(address, amount_sats, fee_rate_sat_vb, max_fee_sats)
        return onchain_json(row, repeated=repeated)

    @reg.command("wallet.cash_out_preview", needs={"wallet"})
    async def wallet_cash_out_preview(address: str, fee_rate_sat_vb: FeeRate) -> dict[str, Any]:
        """Show what cashing out to address would do, without doing it.

        channels lists each channel with this wallet's balance and what its cooperative close
        returns (the peer that opened a channel pays its closing fee). amount_sats and fee_sats
        are the sweep of everything to address at fee_rate_sat_vb: exact when exact is true,
        otherwise the fee is the most and the amount the least it can be (amount_sats is null
        while a closing fee is still to be agreed). Confirm with wallet.cash_out.
        """
        return await onchain.preview_cash_out(address, fee_rate_sat_vb)

    @reg.command("wallet.cash_out", access="owner", moves_money=True, needs={"wallet"})
    async def wallet_cash_out(
        address: str, fee_rate_sat_vb: FeeRate, max_fee_sats: int | None = None
    ) -> dict[str, Any]:
        """Cash out: close every channel cooperatively, then send everything on chain to address.

        Answers at once: status closing while the closing transactions wait for a block, then
        the wallet sends everything to address at fee_rate_sat_vb (broadcast, then confirmed
        with sent_sats and fee_sats next to the quoted figures). wallet.onchain_sends follows
        it. max_fee_sats is the sweep fee you confirmed (wallet.cash_out_preview's fee_sats):
        if it could now be more, nothing is done. Asking again returns the cash-out under way.
        """
        row, repeated = await onchain.cash_out(address, fee_rate_sat_vb, max_fee_sats)
        return onchain_json(row, repeated=repeated)

    @reg.command("wallet.onchain_sends")
    async def wallet_onchain_sends(limit: Annotated[int, Bounds(1, 200)] = 20) -> dict[str, Any]:
        """List on-chain sends and cash-outs, newest first.

        Each shows what was quoted before confirming (quoted_sats, quoted_fee_sats, and
        quote_exact: false when the fee shown was the most it could be) next to what moved
        (sent_sats and fee_sats, from the node's record once a block holds the transaction).
        """
        rows = await onchain.sends.recent(limit)
        return {"sends": [onchain_json(r, repeated=False) for r in rows]}

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
