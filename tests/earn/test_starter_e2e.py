"""Starter demand end to end on the devnet: a real Nexus process (its relay, its ldk-node
treasury with a channel to the hub), the real provider daemon with psionic, real payments.

A starter job is paid over Lightning by the treasury and credited from the provider's own
wallet; then the Nexus is killed (exit 137, as kill -9 leaves it) at the points of a lease
where a crash could lose or repeat money, restarted on the same home and port, and each time
the lease finishes with exactly one payment per completed offer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from support.devnet import NexusDaemon, WalletDaemon

from autopilotd.loopback import free_port

from .conftest import Market
from .test_earn_e2e import _go_online, _lightning

pytestmark = pytest.mark.asyncio(loop_scope="module")

TREASURY_CHANNEL_SATS, TREASURY_PUSH_SATS = 1_000_000, 400_000
CRASH_POINTS = ["nexus.after_ack_recorded", "nexus.after_paying_recorded", "nexus.after_paid"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def nexus(market: Market) -> AsyncIterator[NexusDaemon]:
    """The Nexus, its treasury funded over a channel from the hub, set as the provider's."""
    d = NexusDaemon(market.net.root / "nexus", market.net.env(), free_port()).start()
    try:
        treasury = d.operator("GET", "/operator/treasury")
        await market.net.client.open_channel(
            treasury["node_id"], treasury["listening"], TREASURY_CHANNEL_SATS, TREASURY_PUSH_SATS
        )
        for _ in range(240):
            if d.operator("GET", "/operator/treasury")["balance"]["spendable_sats"] > 0:
                break
            await asyncio.sleep(0.5)
        changed = market.provider.ctl_json("settings.update", "--nexus-url", d.url)
        assert changed["changed"] == ["nexus_url"]
        yield d
    finally:
        d.stop()


async def _starter_until(
    provider: WalletDaemon, check: Callable[[dict[str, Any]], bool], timeout: float = 180
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = provider.ctl_json("starter.status")
        if check(status):
            return status
        assert time.monotonic() < deadline, f"starter never reached the state: {status}"
        await asyncio.sleep(0.5)


def _one_payment_per_completed_offer(nexus: NexusDaemon) -> int:
    """Every completed offer has exactly one succeeded treasury payment, its own; returns the
    number of completed offers."""
    completed = nexus.sql("SELECT payment_hash FROM starter_offers WHERE status = 'completed'")
    paid = nexus.sql(
        "SELECT payment_hash FROM wallet_payments WHERE direction = 'out' AND status = 'succeeded'"
    )
    assert sorted(h for (h,) in completed) == sorted(h for (h,) in paid)
    return len(completed)


async def test_a_starter_job_is_paid_by_the_treasury_over_lightning(
    market: Market, nexus: NexusDaemon
) -> None:
    provider = market.provider
    before = _lightning(provider)
    await _go_online(provider)
    status = await _starter_until(provider, lambda s: s["jobs_done"] >= 1)
    assert status["eligible"] is True and status["nexus_url"] == nexus.url
    jobs = [j for j in provider.ctl_json("jobs.history")["jobs"] if j["source"] == "starter"]
    job = jobs[-1]
    assert job["stage"] == "paid" and job["buyer_pubkey"] == status["nexus_pubkey"]
    payment = provider.ctl_json("wallet.payment", "--payment-hash", job["payment_hash"])
    assert payment["status"] == "succeeded" and payment["direction"] == "in"
    assert status["sats_earned"] == sum(j["price_sats"] for j in jobs if j["stage"] == "paid")
    for _ in range(40):  # the node's balance follows the payment it already reported
        if _lightning(provider) >= before + job["price_sats"]:
            break
        await asyncio.sleep(0.5)
    assert _lightning(provider) >= before + job["price_sats"]
    [offer] = nexus.sql(
        "SELECT status, price_msat FROM starter_offers WHERE payment_hash = ?",
        job["payment_hash"],
    )
    assert offer == ("completed", job["price_sats"] * 1000)
    assert _one_payment_per_completed_offer(nexus) >= 1
    stats = nexus.public("/stats")
    assert stats["starter_offers_24h"]["completed"] >= 1
    assert stats["starter_demand_paid_sats_24h"] >= job["price_sats"]
    assert job["payment_hash"] not in str(stats)  # no payment ids in public stats


@pytest.mark.parametrize("point", CRASH_POINTS)
async def test_kill_the_nexus_mid_lease(market: Market, nexus: NexusDaemon, point: str) -> None:
    provider = market.provider
    provider.ctl_json("provider.offline")
    await _starter_until(provider, lambda s: s["offer"] is None, timeout=120)
    done = provider.ctl_json("starter.status")["jobs_done"]
    completed = _one_payment_per_completed_offer(nexus)
    nexus.stop()
    nexus.start(crash_at=point)
    await _go_online(provider)
    deadline = time.monotonic() + 120
    while nexus.proc is not None and nexus.proc.poll() is None:
        assert time.monotonic() < deadline, f"{point} was never reached"
        await asyncio.sleep(0.2)
    assert nexus.wait_exit() == 137, nexus.stderr()[-2000:]
    nexus.start()  # the lease goes on: no payment lost, none made twice
    await _starter_until(provider, lambda s: s["jobs_done"] > done)
    provider.ctl_json("provider.offline")  # no new offers: the figures below hold still
    await _starter_until(provider, lambda s: s["offer"] is None, timeout=120)
    assert _one_payment_per_completed_offer(nexus) > completed
    history = provider.ctl_json("jobs.history", "--limit", "500")["jobs"]
    paid = [j for j in history if j["stage"] == "paid"]
    for _ in range(40):  # the scoreboard follows the credit (each paid job once)
        credited = provider.ctl_json("provider.status")["earnings"]
        if credited["lifetime_jobs"] == len(paid):
            break
        await asyncio.sleep(0.25)
    assert credited["lifetime_jobs"] == len(paid)
    assert credited["lifetime_sats"] == sum(j["price_sats"] for j in paid)
