"""ldk-node's on-chain pricing, without a node: the figures the devnet test checked against
real transactions, and the cases it cannot easily reach (dust change, a record that does not
add up, a wallet emptied and refilled)."""

from __future__ import annotations

import pytest

from autopilotd.adapters.ldk_onchain import coin_bound, quote_send, quote_sweep
from autopilotd.ports.lightning import NodeError
from autopilotd.ports.onchain import Destination, OnchainTx

P2WPKH = Destination("bcrt1q…", "regtest", 22, witness=True)
P2TR = Destination("bcrt1p…", "regtest", 34, witness=True)


def tx(direction: str, sats: int, fee: int = 0, height: int | None = 1) -> OnchainTx:
    return OnchainTx(f"{direction}{sats}{height}", direction, sats, fee, height)  # type: ignore[arg-type]


def test_figures_seen_on_the_devnet() -> None:
    one = [tx("in", 500_000)]
    q = quote_send(P2TR, 100_000, 5, total_sats=500_000, spendable_sats=500_000, txs=one)
    assert (q.amount_sats, q.fee_sats, q.exact, q.coins) == (100_000, 763, True, 1)
    held = [*one, tx("out", 100_000, 763, 2)]  # one coin of change; the close still to come
    q = quote_sweep(P2WPKH, 3, total_sats=399_237, txs=held, incoming=[150_000])
    assert (q.amount_sats, q.fee_sats, q.exact, q.coins) == (548_704, 533, True, 2)
    # Once the close is on chain, two coins are on record: the same fee, as a bound.
    landed = [*held, tx("in", 150_000, 0, 3)]
    q = quote_sweep(P2WPKH, 3, total_sats=549_237, txs=landed)
    assert (q.amount_sats, q.fee_sats, q.exact, q.coins) == (548_704, 533, False, 2)
    two = [tx("in", 60_000, 0, 1), tx("in", 45_000, 0, 2)]
    q = quote_send(P2WPKH, 80_000, 2, total_sats=105_000, spendable_sats=105_000, txs=two)
    assert (q.fee_sats, q.exact, q.coins) == (710, False, 2)  # it paid 417


def test_change_below_the_dust_limit_goes_to_the_fee() -> None:
    one = [tx("in", 100_000)]
    # 100,000 - 99,000 - (bare 83 + input 136) leaves 781; less the change's 62 is 719: change.
    q = quote_send(P2WPKH, 99_000, 2, total_sats=100_000, spendable_sats=100_000, txs=one)
    assert q.fee_sats == 83 + 136 + 62
    # 500 sats more to the address leaves 219 of change: dust, so all of it is fee.
    q = quote_send(P2WPKH, 99_500, 2, total_sats=100_000, spendable_sats=100_000, txs=one)
    assert q.fee_sats == 500 and q.exact
    with pytest.raises(NodeError, match="more than the 100,000 sats spendable"):
        quote_send(P2WPKH, 99_900, 2, total_sats=100_000, spendable_sats=100_000, txs=one)


def test_coin_bound_follows_the_record() -> None:
    assert coin_bound([], 0) == (0, True)
    deposits = [tx("in", 10_000, 0, 1), tx("in", 20_000, 0, 2)]
    assert coin_bound(deposits, 30_000) == (2, False)
    emptied = [*deposits, tx("out", 29_700, 300, 3)]
    assert coin_bound(emptied, 0) == (0, True)
    refilled = [*emptied, tx("in", 5_000, 0, 4)]
    assert coin_bound(refilled, 5_000) == (1, True)
    # A spend the record does not hold yet: every coin ever received, and one more.
    assert coin_bound(refilled, 1_000) == (4, False)
    # A send to the wallet's own address (amount 0) may leave two coins.
    assert coin_bound([*refilled, tx("out", 0, 150, 5)], 4_850) == (2, False)


def test_a_sweep_with_a_closing_fee_still_to_agree_has_no_amount() -> None:
    q = quote_sweep(P2WPKH, 1, total_sats=0, txs=[], incoming=[None])
    assert q.amount_sats is None and not q.exact and q.coins == 1
    with pytest.raises(NodeError, match="nothing on chain"):
        quote_sweep(P2WPKH, 1, total_sats=0, txs=[], incoming=[0])
    with pytest.raises(NodeError, match="below the 294 sats"):
        quote_sweep(P2WPKH, 10, total_sats=1_000, txs=[tx("in", 1_000)])
