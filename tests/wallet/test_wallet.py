"""Wallet service and ledger against the in-memory fake node (fast; the real node is in e2e).

Covers the money rules that do not need a chain: idempotent sends (T4), reservations under
concurrency (T5), the fee cap, preimage checks (M7, M9), crediting once (M5), reconciliation
(M2, M6) and the seed file (S1).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from support import DaemonFactory, wallet_daemon

from autopilotd.adapters.fake_lightning import FakeNetwork, FakeNode
from autopilotd.app import Adapters
from autopilotd.client import RpcError
from autopilotd.errors import UserError
from autopilotd.paths import Paths
from autopilotd.store import Store
from autopilotd.store.ledger import Ledger, preimage_matches
from autopilotd.wallet.seed import import_seed, load_or_create_seed, seed_path
from autopilotd.wallet.setup import mark_backed_up


def _const(value: int) -> Any:
    async def spendable() -> int:
        return value

    return spendable


@pytest.fixture
def net() -> FakeNetwork:
    return FakeNetwork()


async def test_pay_credits_once_and_repeats_return_the_first_result(
    daemon_factory: DaemonFactory, net: FakeNetwork
) -> None:
    provider, _ = await wallet_daemon(daemon_factory, net, "provider", 0)
    buyer, bnode = await wallet_daemon(daemon_factory, net, "buyer", 100_000_000)
    inv = await provider.call("wallet.receive", {"amount_sats": 1000, "description": "job"})
    first = await buyer.call("wallet.pay", {"bolt11": inv["bolt11"]})
    assert first["status"] == "succeeded" and first["settled"] and not first["repeated"]
    again = await buyer.call("wallet.pay", {"bolt11": inv["bolt11"]})
    assert again["repeated"] and again["payment_hash"] == first["payment_hash"]
    results = await asyncio.gather(
        *(buyer.call("wallet.pay", {"bolt11": inv["bolt11"]}) for _ in range(10))
    )
    assert all(r["status"] == "succeeded" for r in results)
    assert bnode.sends == 1  # T4: exactly one wallet send
    for _ in range(100):
        history = await provider.call("wallet.history")
        if history["payments"]:
            break
        await asyncio.sleep(0.02)
    received = history["payments"]
    assert [(p["direction"], p["status"], p["amount_sats"]) for p in received] == [
        ("in", "succeeded", 1000)
    ]
    assert received[0]["description"] == "job"
    balance = await provider.call("wallet.balance")
    assert balance["lightning_sats"] == 1000  # from the node, not the ledger
    events = await provider.call("events.wait", {"after": 0, "timeout_s": 0, "limit": 1000})
    assert sum(e["name"] == "wallet.payment_received" for e in events["events"]) == 1


async def test_concurrent_withdrawals_cannot_overdraw(
    daemon_factory: DaemonFactory, net: FakeNetwork
) -> None:
    """T5: 50 concurrent sends of 60 % of the balance: exactly one goes through."""
    payee, _ = await wallet_daemon(daemon_factory, net, "payee", 0)
    payer, node = await wallet_daemon(daemon_factory, net, "payer", 1_000_000)  # 1000 sats
    invoices = [
        (await payee.call("wallet.receive", {"amount_sats": 600}))["bolt11"] for _ in range(50)
    ]
    node.hold.clear()  # keep the first send in flight while the others race

    async def withdraw(bolt11: str) -> Any:
        try:
            return await payer.call("wallet.withdraw", {"bolt11": bolt11, "max_fee_sats": 10})
        except RpcError as exc:
            return exc

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(withdraw(b)) for b in invoices]
        async with asyncio.timeout(10):  # the 49 others are refused while the first is held
            while sum(t.done() for t in tasks) < 49:
                await asyncio.sleep(0.01)
        node.hold.set()
    outcomes = [t.result() for t in tasks]
    ok = [o for o in outcomes if isinstance(o, dict)]
    refused = [o for o in outcomes if isinstance(o, RpcError)]
    assert len(ok) == 1 and ok[0]["status"] == "succeeded"
    assert len(refused) == 49 and all("not enough" in e.message for e in refused)
    assert node.sends == 1
    assert node.balance_msat == 1_000_000 - 600_000 - net.fee_msat  # one send and its fee
    status = await payer.call("wallet.status")
    assert status["balance"]["reserved_sats"] == 0


async def test_fee_cap_refuses_and_releases_the_reserve(
    daemon_factory: DaemonFactory, net: FakeNetwork
) -> None:
    payee, _ = await wallet_daemon(daemon_factory, net, "payee", 0)
    payer, node = await wallet_daemon(daemon_factory, net, "payer", 1_000_000)
    net.fee_msat = 50_000  # the route costs 50 sats
    inv = await payee.call("wallet.receive", {"amount_sats": 100})
    result = await payer.call("wallet.pay", {"bolt11": inv["bolt11"], "max_fee_sats": 5})
    assert result["status"] == "failed" and not result["settled"]
    status = await payer.call("wallet.status")
    assert status["balance"]["reserved_sats"] == 0
    assert node.balance_msat == 1_000_000
    net.fee_msat = 1000  # a failed attempt may be retried
    retry = await payer.call("wallet.pay", {"bolt11": inv["bolt11"], "max_fee_sats": 5})
    assert retry["status"] == "succeeded"


async def test_bad_input_gets_clear_errors(daemon_factory: DaemonFactory, net: FakeNetwork) -> None:
    payee, _ = await wallet_daemon(daemon_factory, net, "payee", 0)
    payer, node = await wallet_daemon(daemon_factory, net, "payer", 10_000)
    inv = await payee.call("wallet.receive", {"amount_sats": 5})
    cases = [
        ({"bolt11": "lnbc1garbage"}, "not a valid BOLT11"),
        ({"bolt11": inv["bolt11"], "amount_sats": 6}, "asks for 5 sats"),
        ({"bolt11": inv["bolt11"], "max_fee_sats": -1}, "negative"),
    ]
    for params, message in cases:
        with pytest.raises(RpcError, match=message):
            await payer.call("wallet.pay", params)
    big = await payee.call("wallet.receive", {"amount_sats": 500})
    with pytest.raises(RpcError, match="not enough"):
        await payer.call("wallet.pay", {"bolt11": big["bolt11"]})
    with pytest.raises(RpcError, match="amount_sats must be positive"):
        await payer.call("wallet.receive", {"amount_sats": 0})
    with pytest.raises(RpcError, match="confirm"):
        await payer.call("wallet.reveal_mnemonic", {"confirm": "yes"})
    assert node.sends == 0


async def test_wallet_off_says_so(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    first_run = await daemon_factory()
    status = await first_run.call("wallet.status")
    assert status["state"] == "needs_setup" and "setup.status" in status["next_step"]
    with pytest.raises(RpcError, match="wallet is not set up yet"):
        await first_run.call("wallet.balance")
    # Words backed up, no network chosen: the wallet is simply off.
    home = tmp_path / "backed-up"
    mark_backed_up(Paths.for_home(home).data_dir, "confirmed")
    off = await daemon_factory(home=home)
    status = await off.call("wallet.status")
    assert status["state"] == "off" and status["next_step"]
    with pytest.raises(RpcError, match="wallet is off"):
        await off.call("wallet.balance")


async def test_ledger_rules(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "db.sqlite3")
    ledger = Ledger(store)
    preimage = os.urandom(32).hex()
    payment_hash = hashlib.sha256(bytes.fromhex(preimage)).hexdigest()
    assert preimage_matches(preimage, payment_hash)
    assert not preimage_matches("00" * 32, payment_hash)
    # Credit needs a matching preimage and happens once.
    assert await ledger.credit_in(payment_hash, 5000, "11" * 32, "") == (None, False)
    row, new = await ledger.credit_in(payment_hash, 5000, preimage, "")
    assert row is not None and new
    _, again = await ledger.credit_in(payment_hash, 5000, preimage, "")
    assert not again
    # A send reported succeeded without a valid preimage is not 'paid'.
    out_hash = hashlib.sha256(b"x").hexdigest()
    await ledger.begin_send(
        payment_hash=out_hash,
        bolt11="b",
        amount_msat=1000,
        max_fee_msat=100,
        description="",
        spendable_msat=_const(10_000),
    )
    settled = await ledger.settle_out(out_hash, succeeded=True, preimage="22" * 32)
    assert settled is not None and settled.status == "unknown" and settled.reserved_msat == 1100
    await store.close()


async def test_reconcile_after_a_crash(daemon_factory: DaemonFactory, net: FakeNetwork) -> None:
    """M2: an intent the node never saw is closed as not sent; one the node took is recorded."""
    payee, _ = await wallet_daemon(daemon_factory, net, "payee", 0)
    payer, node = await wallet_daemon(daemon_factory, net, "payer", 1_000_000)
    inv1 = await payee.call("wallet.receive", {"amount_sats": 10})
    inv2 = await payee.call("wallet.receive", {"amount_sats": 20})
    await payer.stop()
    store = await Store.open(payer.paths.database_file)
    ledger = Ledger(store)
    for inv in (inv1, inv2):  # intents written, as if the daemon died right after
        await ledger.begin_send(
            payment_hash=inv["payment_hash"],
            bolt11=inv["bolt11"],
            amount_msat=inv["amount_sats"] * 1000,
            max_fee_msat=10_000,
            description="",
            spendable_msat=_const(1_000_000),
        )
    await store.close()
    await node.pay(inv2["bolt11"], None, 10_000)  # the node took the second before the crash
    restarted = await daemon_factory(
        home=payer.paths.home,
        adapters=Adapters(node_factory=lambda m: node),
        wallet_network="regtest",
        wallet_bitcoind_rpc_url="http://u:p@127.0.0.1:1",
    )
    assert (await restarted.call("wait.until", {"condition": "wallet-ready"}))["met"]
    first = await restarted.call("wallet.payment", {"payment_hash": inv1["payment_hash"]})
    second = await restarted.call("wallet.payment", {"payment_hash": inv2["payment_hash"]})
    assert first["status"] == "failed" and "not sent" in first["failure"]
    assert second["status"] == "succeeded" and second["preimage"]
    assert (await restarted.call("wallet.status"))["balance"]["reserved_sats"] == 0
    # The user may now retry the one that was never sent: it goes through, once.
    retry = await restarted.call("wallet.pay", {"bolt11": inv1["bolt11"]})
    assert retry["status"] == "succeeded"
    assert node.sends == 2


def test_seed_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        mnemonic, created = load_or_create_seed(tmp_path)
    finally:
        os.umask(old)
    path = seed_path(tmp_path)
    assert created and len(mnemonic.split()) == 24
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_or_create_seed(tmp_path) == (mnemonic, False)
    with pytest.raises(UserError, match="never overwritten"):
        import_seed(tmp_path, "abandon " * 11 + "about")
    other = tmp_path / "other"
    with pytest.raises(UserError, match="not a valid"):
        import_seed(other, "hello world")
    import_seed(other, "abandon " * 11 + "about")
    assert load_or_create_seed(other)[0] == "abandon " * 11 + "about"


class _SlowSyncNode(FakeNode):
    """A node whose chain sync never ends, and which records being stopped."""

    def __init__(self, net: FakeNetwork) -> None:
        super().__init__(net, "slow", 0)
        self.syncing = asyncio.Event()
        self.stopped = 0

    async def sync(self) -> None:
        self.syncing.set()
        await asyncio.Event().wait()

    async def stop(self) -> None:
        self.stopped += 1


async def test_a_stop_during_start_up_stops_the_node(
    daemon_factory: DaemonFactory, net: FakeNetwork
) -> None:
    """SIGTERM (here `daemon.stop`) while the wallet syncs: the node is stopped, and so saves
    its channel state, instead of being left to die with the process as a kill would."""
    node = _SlowSyncNode(net)
    d = await daemon_factory(
        adapters=Adapters(node_factory=lambda mnemonic: node),
        wallet_network="regtest",
        wallet_bitcoind_rpc_url="http://u:p@127.0.0.1:1",
    )
    await asyncio.wait_for(node.syncing.wait(), 10)
    assert await d.stop() == 0
    assert node.stopped == 1
