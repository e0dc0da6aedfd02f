"""From zero to first sats over a just-in-time channel, on the devnet with its LSPS2 LSP.

A brand-new provider (0 on-chain sats, 0 channels, only an LSP configured) goes online; the
Nexus offers it a starter job; its invoice goes over a JIT channel from the LSP (the
treasury's channel comes from the LSP, like a payer on a real network reaching the LSP over
the network); the LSP opens the channel as the payment arrives and takes its quoted fee; the
provider credits what its wallet received. The second job goes over the same channel with
no fee. A fee above the user's limit ends the job failed with that reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from support.devnet import Net, NexusDaemon, WalletDaemon

from autopilotd.adapters.local_relay import local_relay
from autopilotd.devnet import Devnet
from autopilotd.devnet.lsp import LspTerms
from autopilotd.loopback import free_port

from .test_earn_e2e import _go_online

pytestmark = pytest.mark.asyncio(loop_scope="module")

PRICE_SATS = 21
LSP_FEE_MSAT = LspTerms().min_fee_msat  # 1 % of 21 sats is below the LSP's minimum fee


@dataclass
class Onboarding:
    net: Net
    nexus: NexusDaemon
    newcomer: WalletDaemon
    friend: WalletDaemon  # another wallet the newcomer withdraws to, its channel from the LSP


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def onboarding(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Onboarding]:
    root = tmp_path_factory.mktemp("jit-e2e")
    async with Devnet(root / "devnet") as devnet, local_relay(port=0) as relay:
        net = Net(devnet, devnet.client, root)
        info = devnet.info
        payer_env = {
            **net.env(),
            "AUTOPILOTD_WALLET_TRUSTED_PEERS_NO_RESERVE": f"{info.hub_node_id},{info.lsp_node_id}",
        }
        nexus = NexusDaemon(root / "nexus", payer_env, free_port()).start()
        newcomer = net.daemon(
            "newcomer",
            relays=relay.url,
            runtime_mode="spawn",
            runtime_args="--threads 1",
            provider_price_sats=str(PRICE_SATS),
            provider_max_tokens="16",
            wallet_lsp=info.lsp,
            wallet_peers="",
            wallet_trusted_peers_no_reserve="",
        )
        friend = net.daemon(
            "friend",
            wallet_trusted_peers_no_reserve=info.lsp_node_id,
            wallet_peers=info.lsp,
        )
        try:
            treasury = nexus.operator("GET", "/operator/treasury")
            await net.client.lsp_open_channel(
                treasury["node_id"], treasury["listening"], 1_000_000, 400_000
            )
            friend.start()
            status = friend.ctl_json("wallet.status")
            await net.client.lsp_open_channel(
                status["node_id"], status["listening"], 1_000_000, 400_000
            )
            newcomer.start()
            yield Onboarding(net, nexus, newcomer, friend)
        finally:
            newcomer.stop()
            friend.stop()
            nexus.stop()


async def _until(d: WalletDaemon, command: str, check: Any, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        answer = d.ctl_json(command)
        if check(answer):
            return answer
        assert time.monotonic() < deadline, f"{command} never got there: {answer}"
        await asyncio.sleep(0.5)


def _refusal(d: WalletDaemon, amount_sats: int) -> str:
    r = d.ctl("--json", "wallet.receive", "--amount-sats", str(amount_sats))
    assert r.returncode != 0, r.stdout
    return r.stderr


async def test_each_way_the_lsp_cannot_help_says_why(onboarding: Onboarding) -> None:
    """Against the real LSP, before the newcomer has any channel: no invoice is made, and the
    reason is the one a job that needed it ends `failed` with."""
    newcomer, net = onboarding.newcomer, onboarding.net
    terms = LspTerms()
    too_small = terms.min_payment_msat // 1000 - 1
    assert "will not open a channel for a payment of" in _refusal(newcomer, too_small)
    too_big = terms.max_payment_msat // 1000 + 1
    assert "will not open a channel for a payment of" in _refusal(newcomer, too_big)
    newcomer.ctl_json("settings.update", "--wallet-jit-max-fee-sats", "1")
    try:
        assert "above your limit of 1 sats" in _refusal(newcomer, PRICE_SATS)
    finally:
        newcomer.ctl_json("settings.update", "--wallet-jit-max-fee-sats", "100")
    info = net.devnet.info
    down = net.daemon(
        "lsp-down", wallet_lsp=f"{info.lsp_node_id}@127.0.0.1:{free_port()}", wallet_peers=""
    ).start()
    untrusted = net.daemon(
        "untrusted", wallet_lsp=info.lsp, wallet_lsp_trusted="false", wallet_peers=""
    ).start()
    try:
        assert "the LSP is unreachable" in _refusal(down, PRICE_SATS)
        assert "needs 25,000 sats on chain as a reserve" in _refusal(untrusted, PRICE_SATS)
    finally:
        down.stop()
        untrusted.stop()
    assert newcomer.ctl_json("wallet.balance")["receivable_sats"] == 0  # nothing was opened


def _starter_jobs(d: WalletDaemon) -> list[dict[str, Any]]:
    jobs = d.ctl_json("jobs.history")["jobs"]
    return [j for j in jobs if j["source"] == "starter"]


async def test_a_new_wallet_earns_its_first_sats_over_a_jit_channel(
    onboarding: Onboarding,
) -> None:
    newcomer = onboarding.newcomer
    balance = newcomer.ctl_json("wallet.balance")
    assert balance["onchain_sats"] == 0 and balance["lightning_sats"] == 0
    assert balance["receivable_sats"] == 0  # no channel: nothing could reach it before
    newcomer.ctl_json("settings.update", "--nexus-url", onboarding.nexus.url)
    await _go_online(newcomer)
    status = await _until(newcomer, "starter.status", lambda s: s["jobs_done"] >= 1)
    [job] = [j for j in _starter_jobs(newcomer) if j["stage"] == "paid"][:1]
    payment = newcomer.ctl_json("wallet.payment", "--payment-hash", job["payment_hash"])
    # What the wallet received, and the LSP's fee shown as such: together, the price.
    assert payment["direction"] == "in" and payment["status"] == "succeeded"
    assert payment["fee_msat"] == LSP_FEE_MSAT
    assert payment["amount_msat"] + payment["fee_msat"] == job["price_sats"] * 1000
    earned = newcomer.ctl_json("provider.status")["earnings"]
    assert earned["lifetime_sats"] == (job["price_sats"] * 1000 - LSP_FEE_MSAT) // 1000
    assert status["sats_earned"] == earned["lifetime_sats"]
    events = newcomer.ctl_json("events.wait", "--after", "0", "--timeout-s", "0", "--limit", "1000")
    [jit] = [e for e in events["events"] if e["name"] == "wallet.jit_invoice"]
    assert jit["fields"]["lsp_fee_sats"] == LSP_FEE_MSAT / 1000  # known before it was paid
    channels = (await onboarding.net.client.status())["lsp"]["channels"]
    mine = [
        c for c in channels if c["counterparty"] == newcomer.ctl_json("wallet.status")["node_id"]
    ]
    assert len(mine) == 1 and mine[0]["usable"]

    # The next job goes over the channel the first one opened: no LSP, no fee.
    await _until(newcomer, "starter.status", lambda s: s["jobs_done"] >= 2)
    paid = [j for j in _starter_jobs(newcomer) if j["stage"] == "paid"]
    [later] = [j for j in paid if j["payment_hash"] != job["payment_hash"]][-1:]
    second = newcomer.ctl_json("wallet.payment", "--payment-hash", later["payment_hash"])
    assert second["fee_msat"] is None and second["amount_msat"] == later["price_sats"] * 1000
    channels = (await onboarding.net.client.status())["lsp"]["channels"]
    assert [c["counterparty"] for c in channels].count(mine[0]["counterparty"]) == 1
    newcomer.ctl_json("provider.offline")


async def test_the_newcomer_withdraws_over_its_new_channel(onboarding: Onboarding) -> None:
    """Above the channel's reserve (1 % of it, which the LSP asks the wallet to keep), the
    newcomer's earnings leave by paying an invoice of its other wallet: withdrawal stays one
    payment, over the channel its first job opened."""
    newcomer, friend = onboarding.newcomer, onboarding.friend
    earned = newcomer.ctl_json("wallet.receive", "--amount-sats", "5000")
    assert earned["lsp_fee_sats"] == 0  # over the channel that exists
    assert friend.ctl_json("wallet.pay", "--bolt11", earned["bolt11"])["settled"]
    await _until(newcomer, "wallet.balance", lambda b: b["spendable_sats"] >= 1_000)
    invoice = friend.ctl_json("wallet.receive", "--amount-sats", "1000")
    out = newcomer.ctl_json("wallet.withdraw", "--bolt11", invoice["bolt11"])
    assert out["settled"] and out["amount_msat"] == 1_000_000
    received = await _until(
        friend,
        "wallet.history",
        lambda h: any(p["payment_hash"] == invoice["payment_hash"] for p in h["payments"]),
    )
    [row] = [p for p in received["payments"] if p["payment_hash"] == invoice["payment_hash"]]
    assert row["direction"] == "in" and row["amount_msat"] == 1_000_000
