"""T2 (reduced): kill -9 the provider at named points of the job flow, then restart.

After each: one job for the request, one result event, the payment credited exactly once, the
provider's balance up by exactly the price, and the buyer's request done.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest
from support.devnet import WalletDaemon

from .conftest import CHANNEL_SATS, PRICE_SATS, Market
from .test_earn_e2e import _buy_start, _go_online, _lightning, _wait_buy

pytestmark = pytest.mark.asyncio(loop_scope="module")

POINTS = [
    "job.after_accept",
    "job.after_result_published",
    "job.after_invoice_published",
    "job.after_settlement_before_credit",
]


def _count(d: WalletDaemon, sql: str, *args: object) -> int:
    conn = sqlite3.connect(d.paths.database_file)
    try:
        return int(conn.execute(sql, args).fetchone()[0])
    finally:
        conn.close()


async def _channel_back(market: Market, provider: WalletDaemon) -> bool:
    """Wait for the channel after a restart; True when LDK had force-closed it.

    A kill -9 in the instant after the node claimed a payment can leave ldk-node's
    ChannelManager one update behind its ChannelMonitor, and LDK then force-closes the channel
    on restart (an LDK limitation, rust-lightning issue 4286; docs/wallet.md). The payment is
    still the wallet's, on chain: what this test checks, one credit bound to one settled
    payment, holds either way, but the Lightning balance no longer shows it, so a new channel
    is opened for the rest of the run.
    """
    try:
        provider.wait_usable(timeout=30)
    except AssertionError:
        await market.net.channel(provider, CHANNEL_SATS, 50_000)
        provider.wait_usable()
        return True
    return False


def _wait_runtime(d: WalletDaemon) -> None:
    r = d.ctl("wait", "runtime-ready", "--timeout", "240")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("point", POINTS)
async def test_kill_the_provider_mid_job(market: Market, point: str) -> None:
    provider, buyer = market.provider, market.buyer
    provider.stop()
    provider.start(crash_at=point)
    provider.wait_usable()
    _wait_runtime(provider)
    await _go_online(provider)
    p0 = _lightning(provider)
    rid = _buy_start(buyer, f"Crash test at {point}.", timeout_s=240)
    deadline = time.monotonic() + 120
    while provider.proc is not None and provider.proc.poll() is None:
        assert time.monotonic() < deadline, f"{point} was never reached"
        await asyncio.sleep(0.2)
    assert provider.wait_exit() == 137
    provider.start()  # resume: open jobs continue, settled payments are credited
    closed = await _channel_back(market, provider)
    row = await _wait_buy(buyer, rid, timeout_s=240)
    assert row["status"] == "done", (point, row)
    if not closed:
        for _ in range(40):
            if _lightning(provider) == p0 + PRICE_SATS:
                break
            await asyncio.sleep(0.5)
        assert _lightning(provider) == p0 + PRICE_SATS, point
    assert _count(provider, "SELECT COUNT(*) FROM jobs WHERE request_id = ?", rid) == 1
    assert (
        _count(provider, "SELECT COUNT(*) FROM jobs WHERE request_id = ? AND stage = 'paid'", rid)
        == 1
    )
    assert _count(provider, "SELECT COUNT(*) FROM earnings WHERE request_id = ?", rid) == 1
    assert (
        _count(
            provider,
            "SELECT COUNT(*) FROM job_outbox WHERE request_id = ? AND purpose = 'result'",
            rid,
        )
        == 1
    )
    assert (
        _count(
            provider,
            "SELECT COUNT(*) FROM wallet_payments w JOIN jobs j ON j.payment_hash = w.payment_hash "
            "WHERE j.request_id = ? AND w.direction = 'in' AND w.status = 'succeeded' "
            "AND w.amount_msat = ?",
            rid,
            PRICE_SATS * 1000,
        )
        == 1
    )
    assert _count(provider, "SELECT COUNT(*) FROM jobs WHERE request_id = ?", rid) == 1
