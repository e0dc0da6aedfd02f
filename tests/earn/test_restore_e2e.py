"""A lost disk: the provider's home is deleted and its words restored into a new one, through
the first-run flow, on the devnet with the real relay. The identity is the same, its on-chain
coins come back by a rescan, its share of the channel the hub then closes is swept back, its
job history comes back from the relay (marked restored, no duplicate, no new earnings), and a
kill -9 in the middle of that reconciliation loses nothing.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable
from typing import Any

import pytest
from support.devnet import WalletDaemon

from autopilotd.wallet.seed import read_seed, seed_path

from .conftest import PRICE_SATS, Market
from .test_earn_e2e import _buy, _go_online

pytestmark = pytest.mark.asyncio(loop_scope="module")

ONCHAIN_SATS = 80_000
CHANNEL_PUSH_SATS = 50_000  # the provider's side of its hub channel (conftest.market)


async def _until(check: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except (AssertionError, json.JSONDecodeError, KeyError):
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.3)


def _steps(d: WalletDaemon) -> dict[str, tuple[str, bool]]:
    items = d.ctl_json("sync.history", "--limit", "1000")["items"]
    return {f"{i['type']}:{i['id']}": (i["step"], i["restored"]) for i in items}


async def test_restore_from_words_after_a_lost_disk(market: Market) -> None:
    provider, buyer, net = market.provider, market.buyer, market.net
    await _go_online(provider)
    rows = [await _buy(buyer, f"Say the word {w}.") for w in ("one", "two")]
    assert [r["status"] for r in rows] == ["done", "done"], rows
    address = provider.ctl_json("wallet.onchain_address")["address"]
    await net.client.fund(address, ONCHAIN_SATS)
    await _until(
        lambda: provider.ctl_json("wallet.balance")["onchain_sats"] == ONCHAIN_SATS,
        "the provider's on-chain coins never showed",
    )
    before = _steps(provider)
    paid = {f"job:{r['request_id']}" for r in rows}
    assert {k: v[0] for k, v in before.items() if k in paid} == dict.fromkeys(paid, "paid")
    assert not any(restored for _, restored in before.values())
    synced = provider.ctl_json("sync.now")["relays"]  # every record on the relay
    assert [(r["url"], r["have"], r["error"]) for r in synced] == [(market.relay_url, 0, None)]
    records = provider.ctl_json("sync.status")["records"]
    npub = provider.ctl_json("identity.show")["npub"]
    earned = provider.ctl_json("provider.status")["earnings"]["lifetime_sats"]
    assert earned == 2 * PRICE_SATS

    # The disk is lost; the words were written down.
    words = read_seed(seed_path(provider.paths.data_dir))
    provider.stop()
    shutil.rmtree(provider.home)

    # A new machine: the first run (no network chosen yet), restore, and a kill -9 in the
    # middle of the restored identity's first reconciliation.
    env = {k: v for k, v in provider.env.items() if k != "AUTOPILOTD_WALLET_NETWORK"}
    fresh = WalletDaemon(net.root / "restored", env)
    net.daemons.append(fresh)
    fresh.start(crash_at="sync.after_fetch_chunk", wait_ready=False)
    assert fresh.ctl_json("status")["wallet"]["state"] == "needs_setup"
    answer = fresh.ctl_json("setup.restore_wallet", "--words", words)
    assert answer["npub"] == npub and answer["restarting"]
    assert fresh.wait_exit(60) == 137  # it died at the crash point, after one chunk applied
    assert "crash point sync.after_fetch_chunk reached" in fresh.stderr()

    fresh.start(wait_ready=False)
    assert fresh.ctl_json("identity.show")["npub"] == npub
    fresh.ctl_json("setup.choose_profile", "--profile", "regtest")
    started = fresh.ctl_json("status")["daemon"]["started_at"]
    assert fresh.ctl_json("setup.finish")["restarting"]
    await _until(
        lambda: (
            fresh.ctl_json("status")["daemon"]["started_at"] != started
            and fresh.ctl_json("status")["wallet"]["state"] == "ready"
        ),
        "the restored wallet never started on regtest",
    )

    # The same identity; the on-chain coins found again by the rescan.
    assert fresh.ctl_json("identity.show")["npub"] == npub
    await _until(
        lambda: fresh.ctl_json("wallet.balance")["onchain_sats"] == ONCHAIN_SATS,
        "the restored wallet's on-chain coins never came back",
    )
    assert fresh.ctl_json("wallet.status")["restored_at"] is not None

    # The old channel: the hub closes it when the restored node connects and does not know it;
    # the restored wallet finds its share on chain and sweeps it back.
    share = CHANNEL_PUSH_SATS + 2 * PRICE_SATS

    def swept() -> dict[str, Any] | None:
        outputs = fresh.ctl_json("status")["recovery"]["outputs"]
        done = [o for o in outputs if o["status"] == "confirmed"]
        return done[0] if done else None

    async def mine_until_swept() -> dict[str, Any]:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            await net.client.mine(1)
            await asyncio.sleep(1.5)
            found = swept()
            if found:
                return found
        raise AssertionError(f"never swept: {fresh.ctl_json('status')['recovery']}")

    output = await mine_until_swept()
    assert output["sats"] == share and output["sent_sats"] == share - output["fee_sats"]
    assert fresh.ctl_json("status")["recovery"]["recovered_sats"] == output["sent_sats"]
    await _until(
        lambda: (
            fresh.ctl_json("wallet.balance")["onchain_sats"] == ONCHAIN_SATS + output["sent_sats"]
        ),
        "the swept share never reached the wallet's balance",
    )

    # The history, from the relay: the same steps, marked restored, once each, never earnings.
    await _until(lambda: fresh.ctl_json("sync.status")["records"] == records, "history")
    after = _steps(fresh)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}
    assert all(restored for _, restored in after.values())
    status = fresh.ctl_json("sync.status")
    assert status["records"] == records and status["restored"] == len(before)
    again = fresh.ctl_json("sync.now")["relays"]
    assert [(r["have"], r["need"], r["fetched"]) for r in again] == [(0, 0, 0)]
    earnings = fresh.ctl_json("provider.status")["earnings"]
    assert earnings["lifetime_sats"] == 0 and earnings["lifetime_jobs"] == 0
    assert fresh.ctl_json("jobs.history")["jobs"] == []
