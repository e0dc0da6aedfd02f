"""How ldk-node 0.7's on-chain wallet prices a send, so that a send is quoted before it is made.

ldk-node has no call that prices a transaction without broadcasting it, and none that lists
the wallet's coins. Its wallet is BDK 2 over P2WPKH coins (BIP-84), and BDK's fee is a sum
of parts, each `ceil(rate × weight)`: the transaction without inputs, each input, and the
change (or, for a sweep, the one output). So the fee is known exactly once the number of
coins spent is known:

- a sweep spends every coin;
- a send from a wallet holding one coin spends it, and leaves change unless what is left
  would be dust (then the rest goes to the fee, as BDK does);
- a send from a wallet holding several coins spends some of them, chosen by BDK (branch
  and bound, else at random): its fee is bounded, for as many coins as the wallet holds.

How many coins the wallet holds comes from the node's record of its transactions
(`coin_bound`). Every figure here was checked against the node's own transactions on the
devnet (tests/wallet/test_onchain_e2e.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

from autopilotd.ports.lightning import NodeError
from autopilotd.ports.onchain import Destination, OnchainTx, Quote

INPUT_WU = 272
"""A P2WPKH input as BDK weighs it: outpoint, empty script, sequence, and the witness at its
largest (a 73-byte signature and a 33-byte key)."""
CHANGE_VBYTES = 31  # BDK's change output: a P2WPKH output of the wallet's own
CHANGE_DUST_SATS = 294  # change below this is not made: it goes to the fee
ANTI_REORG_DELAY = 6  # blocks after which LDK no longer reports a close's output as pending


def fee(fee_rate: int, weight_wu: int) -> int:
    """BDK's fee for `weight_wu` at `fee_rate` sat/vB (250 sat per 1,000 weight units per
    sat/vB), rounded up."""
    return -(-(fee_rate * 250 * weight_wu) // 1000)


def bare_weight(output_vbytes: Sequence[int]) -> int:
    """The weight of a transaction with these outputs and no inputs: version, input and
    output counts, outputs, lock time; rust-bitcoin counts a transaction without inputs as
    segwit-serialised, which adds the 2 weight units of the marker and flag."""
    return 4 * (4 + 1 + 1 + sum(output_vbytes) + 4) + 2


def coin_bound(txs: Iterable[OnchainTx], total_sats: int) -> tuple[int, bool]:
    """How many coins the on-chain wallet can hold, by the node's record of its transactions,
    and whether that is exactly how many it holds.

    Each incoming transaction pays the wallet one coin (a deposit to one of its addresses, a
    channel close); each outgoing one spends at least one and returns at most one as change,
    except a send to the wallet's own address (amount 0), which may return two. Where the
    record's running balance comes to zero, no coin is left. When the record does not add up
    to the node's balance (a transaction the node has not recorded yet, or a dropped one), the
    bound counts every coin ever received, and one more, and is not exact.
    """
    ordered = sorted(txs, key=lambda t: (t.height is None, t.height or 0))
    count = ever = balance = 0
    for _, block in itertools.groupby(ordered, key=lambda t: t.height):
        for t in block:
            paid = t.fee_sats or 0
            if t.direction == "in":
                count, ever, balance = count + 1, ever + 1, balance + t.amount_sats - paid
            else:
                balance -= t.amount_sats + paid
                if t.amount_sats == 0:
                    count, ever = count + 1, ever + 1
        if balance == 0:
            count = 0
    if balance != total_sats:
        return ever + 1, False
    return count, count <= 1


def _insufficient(reason: str) -> NodeError:
    return NodeError(reason, kind="InsufficientFunds")


def quote_send(
    dest: Destination,
    amount_sats: int,
    fee_rate: int,
    *,
    total_sats: int,
    spendable_sats: int,
    txs: Iterable[OnchainTx],
) -> Quote:
    """What a send of `amount_sats` to `dest` costs: exact from one coin, else bounded."""
    bare = fee(fee_rate, bare_weight([dest.output_vbytes]))
    per_coin = fee(fee_rate, INPUT_WU)
    change = fee(fee_rate, 4 * CHANGE_VBYTES)
    least = bare + per_coin
    if amount_sats + least > spendable_sats:
        raise _insufficient(
            f"{amount_sats:,} sats and a fee of at least {least:,} sats are more than the "
            f"{spendable_sats:,} sats spendable on chain"
        )
    coins, exact = coin_bound(txs, total_sats)
    if exact and coins == 1:
        left = total_sats - amount_sats - bare - per_coin
        paid = total_sats - amount_sats if left - change < CHANGE_DUST_SATS else least + change
        if amount_sats + paid > spendable_sats:
            raise _insufficient(
                f"{amount_sats:,} sats and a fee of {paid:,} sats are more than the "
                f"{spendable_sats:,} sats spendable on chain"
            )
        return Quote(amount_sats, paid, True, 1)
    coins = max(coins, 1)
    most = bare + per_coin * coins + change + CHANGE_DUST_SATS - 1
    return Quote(amount_sats, min(most, spendable_sats - amount_sats), False, coins)


def quote_sweep(
    dest: Destination,
    fee_rate: int,
    *,
    total_sats: int,
    txs: Iterable[OnchainTx],
    incoming: Sequence[int | None] = (),
) -> Quote:
    """What sending every coin (those held and those `incoming`) to `dest` moves and costs."""
    held, exact = coin_bound(txs, total_sats)
    if total_sats == 0:  # no coin at all, whatever the record says
        held, exact = 0, True
    arriving = [sats for sats in incoming if sats is None or sats > 0]
    coins = held + len(arriving)
    if coins == 0:
        raise _insufficient("there is nothing on chain to send")
    paid = fee(fee_rate, bare_weight([])) + fee(fee_rate, INPUT_WU) * coins
    paid += fee(fee_rate, 4 * dest.output_vbytes)
    if any(sats is None for sats in arriving):
        return Quote(None, paid, False, coins)
    amount = total_sats + sum(s for s in arriving if s is not None) - paid
    if amount < dest.dust_sats:
        raise _insufficient(
            f"after a fee of {paid:,} sats, {max(amount, 0):,} sats would be left: below the "
            f"{dest.dust_sats} sats an output to that address needs"
        )
    return Quote(amount, paid, exact, coins)
