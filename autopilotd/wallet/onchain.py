"""On-chain money: a send to an address with a fee rate, and cash-out.

Every send is quoted before it is confirmed: the amount to the address exactly, the fee
exactly or as the most it can be (`Quote` in ports/onchain.py, priced by the node's adapter).
The rules, for every surface alike:

- the address must be valid on the wallet's network; the fee rate is 1 to 1,000 sat/vB; the
  amount at least the address's dust limit and, with the fee, at most what is spendable.
- A confirm carries the fee the person saw (`max_fee_sats`): if the send could now cost more
  (coins arrived or left in between), it is refused and nothing is sent.
- A send is recorded before the node is asked (`wallet_onchain_sends`); the same amount to
  the same address while an earlier one is not in a block returns that one (a double click, a
  retry): it is sent once.
- A send found recorded but without a txid at start (autopilotd stopped in between) is matched
  with the node's record; it is never sent again. It is `unknown` while the node's balance
  shows a spend its record does not hold yet, and `failed` ("not sent") once it shows none.
- A cash-out closes every channel cooperatively, waits until each closing transaction is a
  coin of the on-chain wallet, then sends everything to the address. Its sweep may be made
  again after a crash: everything to the same address, so a second one can only replace the
  first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from autopilotd.crashpoints import crash_point
from autopilotd.errors import UserError
from autopilotd.ports.lightning import LightningNode, NodeError
from autopilotd.ports.onchain import (
    FEE_RATE_MAX_SAT_VB,
    FEE_RATE_MIN_SAT_VB,
    AddressError,
    Destination,
    OnchainTx,
    Quote,
    parse_destination,
)
from autopilotd.store.onchain import OnchainSendRow, OnchainSends
from autopilotd.vocab import OnchainKind, OnchainStatus
from autopilotd.wallet.service import Wallet

logger = logging.getLogger(__name__)


def _failure(exc: NodeError) -> str:
    """Why the node would not send, in the user's terms."""
    if exc.kind == "InsufficientFunds":
        return f"not enough on chain: {exc.reason}"
    return exc.reason


UNKNOWN_HINT = (
    "autopilotd stopped while sending, and the node shows a spend it has not recorded yet: "
    "this resolves at the next block"
)


def _newest_out(txs: Iterable[OnchainTx], linked: set[str]) -> list[OnchainTx]:
    """The node's outgoing transactions no row has claimed, newest first."""
    out = [t for t in txs if t.direction == "out" and t.txid not in linked]
    return sorted(out, key=lambda t: (t.height is None, t.height or 0), reverse=True)


def _recorded_balance(txs: list[OnchainTx]) -> int:
    """What the node's record of its transactions adds up to."""
    total = 0
    for t in txs:
        paid = t.fee_sats or 0
        total += t.amount_sats - paid if t.direction == "in" else -(t.amount_sats + paid)
    return total


class OnchainWallet:
    """Sends and cash-outs over the wallet's node, recorded in `OnchainSends`."""

    def __init__(self, wallet: Wallet, sends: OnchainSends) -> None:
        self._wallet = wallet
        self.sends = sends
        self._lock = asyncio.Lock()  # one send, cash-out or advance at a time

    def _node(self) -> LightningNode:
        return self._wallet.require_node()

    def destination(self, address: str) -> Destination:
        try:
            return parse_destination(address, self._node().network)
        except AddressError as exc:
            raise UserError(str(exc)) from None

    @staticmethod
    def _check_rate(fee_rate: int) -> None:
        if not FEE_RATE_MIN_SAT_VB <= fee_rate <= FEE_RATE_MAX_SAT_VB:
            raise UserError(
                f"the fee rate must be between {FEE_RATE_MIN_SAT_VB} and "
                f"{FEE_RATE_MAX_SAT_VB:,} sat/vB"
            )

    # -- a send of an amount -------------------------------------------------------------------

    async def _quote_send(self, dest: Destination, amount_sats: int, fee_rate: int) -> Quote:
        self._check_rate(fee_rate)
        if amount_sats <= 0:
            raise UserError("amount_sats must be positive")
        if amount_sats < dest.dust_sats:
            raise UserError(
                f"{amount_sats:,} sats is below the dust limit of an output to that address "
                f"({dest.dust_sats} sats): nodes would not relay it"
            )
        try:
            return await self._node().quote_send(dest, amount_sats, fee_rate)
        except NodeError as exc:
            raise UserError(_failure(exc)) from None

    async def preview_send(self, address: str, amount_sats: int, fee_rate: int) -> dict[str, Any]:
        """What `send` would move and cost now; sends nothing."""
        dest = self.destination(address)
        quote = await self._quote_send(dest, amount_sats, fee_rate)
        balances = await self._node().balances()
        return {
            "address": dest.address,
            "uri": dest.uri,
            "network": dest.network,
            "amount_sats": amount_sats,
            "fee_rate_sat_vb": fee_rate,
            "fee_sats": quote.fee_sats,
            "fee_exact": quote.exact,
            "coins": quote.coins,
            "total_sats": amount_sats + quote.fee_sats,
            "spendable_sats": balances.onchain_spendable_sats,
        }

    async def send(
        self, address: str, amount_sats: int, fee_rate: int, max_fee_sats: int | None
    ) -> tuple[OnchainSendRow, bool]:
        """Send `amount_sats` to `address` once. Returns the row and whether it is an earlier
        identical send (not sent again)."""
        dest = self.destination(address)
        node = self._node()
        async with self._lock:
            for row in await self.sends.open():
                same = row.address == dest.address and row.quoted_sats == amount_sats
                if row.kind is OnchainKind.SEND and same:
                    return row, True
            quote = await self._quote_send(dest, amount_sats, fee_rate)
            if max_fee_sats is not None and quote.fee_sats > max_fee_sats:
                raise UserError(
                    f"the fee could now be up to {quote.fee_sats:,} sats, more than the "
                    f"{max_fee_sats:,} sats you confirmed: preview the send again"
                )
            row = await self.sends.begin(
                kind=OnchainKind.SEND,
                status=OnchainStatus.INTENT,
                address=dest.address,
                fee_rate=fee_rate,
                quoted_sats=amount_sats,
                quoted_fee_sats=quote.fee_sats,
                quote_exact=quote.exact,
            )
            crash_point("onchain.after_intent")
            try:
                txid = await node.send_onchain(dest, amount_sats, fee_rate)
            except NodeError as exc:
                reason = _failure(exc)
                await self.sends.update(row.id, OnchainStatus.FAILED, failure=reason)
                self._wallet.events.publish("wallet.onchain_failed", id=row.id, reason=reason)
                raise UserError(f"nothing was sent: {reason}") from None
            crash_point("onchain.after_node_send")
            row = await self.sends.update(row.id, OnchainStatus.BROADCAST, txid=txid)
            self._wallet.events.publish(
                "wallet.onchain_sent",
                id=row.id,
                txid=txid,
                amount_sats=amount_sats,
                quoted_fee_sats=quote.fee_sats,
            )
        await self._wallet.refresh()
        return row, False

    # -- cash-out ------------------------------------------------------------------------------

    async def preview_cash_out(self, address: str, fee_rate: int) -> dict[str, Any]:
        """What `cash_out` would close, bring back and send now; does nothing."""
        dest = self.destination(address)
        self._check_rate(fee_rate)
        node = self._node()
        channels = await node.channels()
        try:
            quote = await node.quote_sweep(dest, fee_rate, [c.returns_sats for c in channels])
        except NodeError as exc:
            raise UserError(_failure(exc)) from None
        balances = await node.balances()
        blocked = [c.peer_id for c in channels if not c.usable]
        return {
            "address": dest.address,
            "uri": dest.uri,
            "network": dest.network,
            "fee_rate_sat_vb": fee_rate,
            "channels": [c.to_json() for c in channels],
            "onchain_sats": balances.onchain_sats,
            "amount_sats": quote.amount_sats,
            "fee_sats": quote.fee_sats,
            "exact": quote.exact,
            "coins": quote.coins,
            "can_close": not blocked,
            "blocked_by": blocked,
        }

    async def cash_out(
        self, address: str, fee_rate: int, max_fee_sats: int | None
    ) -> tuple[OnchainSendRow, bool]:
        """Close every channel cooperatively, then (in `advance`) sweep everything to `address`.

        Returns the cash-out's row and whether it is one already under way (not started again).
        """
        dest = self.destination(address)
        node = self._node()
        async with self._lock:
            for row in await self.sends.open():
                if row.kind is OnchainKind.CASH_OUT:
                    if row.address != dest.address:
                        raise UserError(
                            f"a cash-out to {row.address} is under way ({row.status.value}); "
                            "it must finish first"
                        )
                    return row, True
            preview = await self.preview_cash_out(address, fee_rate)
            if not preview["can_close"]:
                peers = ", ".join(p[:16] for p in preview["blocked_by"])
                raise UserError(
                    f"a channel cannot close cooperatively now (its peer {peers} is not "
                    "connected): try again when it is; nothing was closed"
                )
            if max_fee_sats is not None and preview["fee_sats"] > max_fee_sats:
                raise UserError(
                    f"the fee could now be up to {preview['fee_sats']:,} sats, more than the "
                    f"{max_fee_sats:,} sats you confirmed: preview the cash-out again"
                )
            channels = await node.channels()
            row = await self.sends.begin(
                kind=OnchainKind.CASH_OUT,
                status=OnchainStatus.CLOSING if channels else OnchainStatus.INTENT,
                address=dest.address,
                fee_rate=fee_rate,
                quoted_sats=preview["amount_sats"],
                quoted_fee_sats=preview["fee_sats"],
                quote_exact=preview["exact"],
                channels=preview["channels"],
            )
            self._wallet.events.publish(
                "wallet.cash_out_started", id=row.id, channels=len(channels), address=dest.address
            )
            for channel in channels:
                try:
                    await node.close_channel(channel)
                except NodeError as exc:
                    reason = (
                        f"the channel with {channel.peer_id[:16]} could not be closed: "
                        f"{exc.reason}; channels already closing come back on chain"
                    )
                    await self.sends.update(row.id, OnchainStatus.FAILED, failure=reason)
                    self._wallet.events.publish("wallet.onchain_failed", id=row.id, reason=reason)
                    raise UserError(reason) from None
            crash_point("cash_out.after_close")
            if not channels:
                await self._sweep(row, node)
        await self._wallet.refresh()
        return await self._row(row.id), False

    async def _row(self, send_id: int) -> OnchainSendRow:
        row = await self.sends.get(send_id)
        assert row is not None
        return row

    # -- moving rows on ----------------------------------------------------------------------

    async def reconcile(self) -> None:
        """At start: channels a cash-out left open are closed again, and every row moves on
        as far as the node's record allows (see the module docstring)."""
        node = self._wallet.node
        assert node is not None
        for row in await self.sends.open():
            if row.kind is OnchainKind.CASH_OUT and row.status is OnchainStatus.CLOSING:
                for channel in await node.channels():
                    try:
                        await node.close_channel(channel)
                    except NodeError as exc:  # already closing, or its peer is away for now
                        logger.warning("cash-out %d: close: %s", row.id, exc.reason)
        await self.advance()

    async def advance(self) -> None:
        """Move each open row on: confirmations, matches, and a cash-out's sweep once its
        closes have landed on chain. Cheap when nothing is open."""
        node = self._wallet.node
        if node is None:
            return
        async with self._lock:
            rows = await self.sends.open()
            if not rows:
                return
            txs = await node.onchain_txs()
            by_txid = {t.txid: t for t in txs}
            linked = await self.sends.txids()
            unrecorded_spend = _recorded_balance(txs) > (await node.balances()).onchain_sats
            for row in rows:
                try:
                    await self._advance(row, node, by_txid, linked, unrecorded_spend)
                except NodeError as exc:
                    logger.warning("on-chain send %d: %s", row.id, exc.reason)
        await self._wallet.refresh()

    async def _advance(
        self,
        row: OnchainSendRow,
        node: LightningNode,
        by_txid: dict[str, OnchainTx],
        linked: set[str],
        unrecorded_spend: bool,
    ) -> None:
        events = self._wallet.events
        if row.status is OnchainStatus.BROADCAST:
            tx = by_txid.get(row.txid or "")
            if tx is not None and tx.height is not None:
                await self.sends.update(
                    row.id, OnchainStatus.CONFIRMED, sent_sats=tx.amount_sats, fee_sats=tx.fee_sats
                )
                events.publish(
                    "wallet.onchain_confirmed",
                    id=row.id,
                    txid=tx.txid,
                    sent_sats=tx.amount_sats,
                    fee_sats=tx.fee_sats,
                    quoted_sats=row.quoted_sats,
                    quoted_fee_sats=row.quoted_fee_sats,
                )
            return
        if row.status is OnchainStatus.CLOSING:
            if await node.closes_pending() == 0:
                await self._sweep(row, node)
            return
        # intent or unknown: left by a stop between recording a send and the node's answer
        if row.kind is OnchainKind.SEND:
            match = next(
                (
                    t
                    for t in _newest_out(by_txid.values(), linked)
                    if t.amount_sats == row.quoted_sats
                ),
                None,
            )
        else:
            match = None
        if match is None and unrecorded_spend:
            if row.status is not OnchainStatus.UNKNOWN:
                await self.sends.update(row.id, OnchainStatus.UNKNOWN, failure=UNKNOWN_HINT)
            return
        if match is None and row.kind is OnchainKind.CASH_OUT:
            if (await node.balances()).onchain_sats > 0:
                await self._sweep(row, node)  # everything to the same address: safe again
                return
            match = next(iter(_newest_out(by_txid.values(), linked)), None)
        if match is not None:
            linked.add(match.txid)
            await self.sends.update(row.id, OnchainStatus.BROADCAST, txid=match.txid)
            return
        await self.sends.update(
            row.id,
            OnchainStatus.FAILED,
            failure="not sent: autopilotd stopped before the node broadcast it; nothing left",
        )

    async def _sweep(self, row: OnchainSendRow, node: LightningNode) -> None:
        """A cash-out's last step: every coin to its address, at its fee rate."""
        dest = parse_destination(row.address, node.network)
        if row.status is not OnchainStatus.INTENT:
            await self.sends.update(row.id, OnchainStatus.INTENT)
        crash_point("cash_out.before_sweep")
        try:
            txid = await node.sweep_onchain(dest, row.fee_rate_sat_vb)
        except NodeError as exc:
            reason = f"the sweep to {row.address} failed: {_failure(exc)}"
            await self.sends.update(row.id, OnchainStatus.FAILED, failure=reason)
            self._wallet.events.publish("wallet.onchain_failed", id=row.id, reason=reason)
            return
        await self.sends.update(row.id, OnchainStatus.BROADCAST, txid=txid)
        self._wallet.events.publish(
            "wallet.onchain_sent",
            id=row.id,
            txid=txid,
            amount_sats=row.quoted_sats,
            quoted_fee_sats=row.quoted_fee_sats,
        )
