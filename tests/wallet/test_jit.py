"""Invoices over a just-in-time channel (LSPS2) against the fake node: when the wallet asks
the LSP, the fee it agrees to, what it credits, and each refusal with its reason. The real
LSP on the devnet is in tests/earn/test_jit_e2e.py."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest
from support import DaemonFactory, InProcessDaemon, wallet_daemon

from autopilotd.adapters.fake_lightning import FakeNetwork, FakeNode
from autopilotd.app import Adapters
from autopilotd.client import RpcError
from autopilotd.provider.settlement import credit_job
from autopilotd.store import Store
from autopilotd.store.jobs import Jobs
from autopilotd.store.ledger import Ledger

LSP = "02" + "ab" * 32 + "@127.0.0.1:9735"


async def _provider(
    factory: DaemonFactory, net: FakeNetwork, **config: object
) -> tuple[InProcessDaemon, FakeNode]:
    node = FakeNode(net, "provider", 0)
    node.receivable_msat = 0  # a new wallet: no channel
    d = await factory(
        adapters=Adapters(node_factory=lambda mnemonic: node),
        wallet_network="regtest",
        wallet_bitcoind_rpc_url="http://u:p@127.0.0.1:1",
        **config,
    )
    assert (await d.call("wait.until", {"condition": "wallet-ready", "timeout_s": 10}))["met"]
    return d, node


async def test_no_capacity_goes_over_the_lsp_and_credits_what_arrived(
    daemon_factory: DaemonFactory,
) -> None:
    net = FakeNetwork(fee_msat=0)
    provider, pnode = await _provider(daemon_factory, net, wallet_lsp=LSP)
    pnode.lsp_fee_msat = 2_000
    buyer, _ = await wallet_daemon(daemon_factory, net, "buyer", 100_000_000)
    inv = await provider.call("wallet.receive", {"amount_sats": 21, "description": "job"})
    assert inv["lsp_fee_sats"] == 2  # known before anyone pays
    paid = await buyer.call("wallet.pay", {"bolt11": inv["bolt11"]})
    assert paid["settled"]
    for _ in range(200):
        history = (await provider.call("wallet.history"))["payments"]
        if history:
            break
        await asyncio.sleep(0.02)
    row = history[0]
    assert (row["direction"], row["amount_sats"], row["fee_msat"]) == ("in", 19, 2_000)
    events = await provider.call("events.wait", {"after": 0, "timeout_s": 0, "limit": 1000})
    names = [e["name"] for e in events["events"]]
    assert "wallet.jit_invoice" in names and "wallet.payment_received" in names


async def test_capacity_means_no_lsp(daemon_factory: DaemonFactory) -> None:
    net = FakeNetwork()
    provider, pnode = await _provider(daemon_factory, net, wallet_lsp=LSP)
    pnode.receivable_msat = 10**9
    pnode.lsp_fee_msat = 2_000
    inv = await provider.call("wallet.receive", {"amount_sats": 21})
    assert inv["lsp_fee_sats"] == 0 and not net.jit_fees


@pytest.mark.parametrize(
    ("lsp", "fee_msat", "limit", "amount", "reason"),
    [
        ("", 2_000, 100, 21, "no inbound capacity for 21 sats and no LSP"),
        (LSP, 200_000, 100, 1_000, "above your limit of 100 sats"),
        (LSP, 2_000, 100, 2, "will not open a channel for a payment of 2 sats"),
        (LSP, None, 100, 21, "the LSP is unreachable or not configured"),
    ],
)
async def test_each_refusal_says_why(
    daemon_factory: DaemonFactory,
    lsp: str,
    fee_msat: int | None,
    limit: int,
    amount: int,
    reason: str,
) -> None:
    provider, pnode = await _provider(
        daemon_factory, FakeNetwork(), wallet_lsp=lsp, wallet_jit_max_fee_sats=limit
    )
    pnode.lsp_fee_msat = fee_msat
    with pytest.raises(RpcError) as err:
        await provider.call("wallet.receive", {"amount_sats": amount})
    assert reason in err.value.message


async def test_untrusted_lsp_needs_a_reserve(daemon_factory: DaemonFactory) -> None:
    provider, pnode = await _provider(
        daemon_factory, FakeNetwork(), wallet_lsp=LSP, wallet_lsp_trusted=False
    )
    pnode.lsp_fee_msat = 2_000
    with pytest.raises(RpcError) as err:
        await provider.call("wallet.receive", {"amount_sats": 21})
    assert "needs 25,000 sats on chain as a reserve" in err.value.message


async def test_a_job_paid_over_a_jit_channel_counts_its_agreed_fee_only(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "db.sqlite3")
    try:
        jobs, ledger = Jobs(store), Ledger(store)
        for request_id, skimmed, paid in (("r1", 2_000, True), ("r2", 3_000, False)):
            preimage = os.urandom(32).hex()
            payment_hash = hashlib.sha256(bytes.fromhex(preimage)).hexdigest()
            await jobs.receive(
                request_id=request_id,
                buyer_pubkey="b",
                kind=5050,
                request_json="{}",
                price_msat=21_000,
            )
            for stage in ("accepted", "running"):
                await jobs.advance(request_id, stage)  # type: ignore[arg-type]
            await jobs.advance(
                request_id,
                "delivered",  # type: ignore[arg-type]
                payment_hash=payment_hash,
                bolt11="lnbc…",
                pay_deadline_at=9e9,
            )
            await ledger.record_invoice(payment_hash, "lnbc…", 21_000, "", 9e9, lsp_fee_msat=2_000)
            await ledger.credit_in(payment_hash, 21_000 - skimmed, preimage, "", skimmed)
            job, new = await credit_job(store, payment_hash, 1.0)
            assert job is not None and new is paid  # M8: more than the agreed fee is underpaid
            assert job.stage == ("paid" if paid else "delivered")
    finally:
        await store.close()
