"""On-chain money on the devnet: what a preview shows is what moves, to the sat.

A daemon with a real ldk-node wallet is funded on chain, sends to an address at a fee rate,
takes a channel from the hub, and cashes out (cooperative close, then everything to an
address). Each amount and fee shown before confirming is checked against the transaction as
btcd holds it (outputs, and inputs' values for the fee) and against the node's own record:
equal where the preview says exact, within it where it says "at most" (a send from two coins).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from embit import bech32
from support.devnet import Net, WalletDaemon

from autopilotd.devnet.rpc import BtcdRpc, RpcError

pytestmark = pytest.mark.asyncio(loop_scope="module")

FUNDING_SATS = 500_000
SEND_SATS = 100_000
CHANNEL_SATS = 400_000
PUSH_SATS = 150_000
SATS_PER_BTC = 100_000_000


def _btcd(net: Net) -> BtcdRpc:
    info = net.devnet.info
    url = f"https://127.0.0.1:{info.btcd_rpc_port}"
    return BtcdRpc(url, info.btcd_rpc_user, info.btcd_rpc_password, Path(info.btcd_cert))


async def _transaction(net: Net, txid: str) -> dict[str, Any]:
    """The transaction as btcd holds it: what each address received, and the fee it paid."""
    async with _btcd(net) as rpc:
        for _ in range(100):  # ldk-node broadcasts in the background, a moment after the send
            try:
                tx = await rpc.call("getrawtransaction", txid, 1)
                break
            except RpcError:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"{txid} never reached btcd")
        spent = 0
        for vin in tx["vin"]:
            prev = await rpc.call("getrawtransaction", vin["txid"], 1)
            spent += round(prev["vout"][vin["vout"]]["value"] * SATS_PER_BTC)
    outputs: dict[str, int] = {}
    for vout in tx["vout"]:
        address = vout["scriptPubKey"]["addresses"][0]
        outputs[address] = outputs.get(address, 0) + round(vout["value"] * SATS_PER_BTC)
    return {"outputs": outputs, "fee": spent - sum(outputs.values()), "inputs": len(tx["vin"])}


async def _wait_for(d: WalletDaemon, what: str, check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.25)
    raise AssertionError(f"{d.home.name}: {what} not within {timeout} s")


def _send(d: WalletDaemon, send_id: int) -> dict[str, Any]:
    sends = d.ctl_json("wallet.onchain_sends")["sends"]
    row: dict[str, Any] = next(s for s in sends if s["id"] == send_id)
    return row


async def test_receive_send_and_cash_out_move_what_was_shown(net: Net) -> None:
    d = net.daemon("onchain").start()

    # Receive: a new address (its QR code is the bitcoin: link), funded from the devnet.
    receive = d.ctl_json("wallet.onchain_address")
    assert receive["uri"] == f"bitcoin:{receive['address']}"
    await net.client.fund(receive["address"], FUNDING_SATS)
    await _wait_for(
        d, "the deposit", lambda: d.ctl_json("wallet.balance")["onchain_sats"] == FUNDING_SATS
    )

    # An address of another network is refused, and nothing moves.
    mainnet = str(bech32.encode("bc", 0, os.urandom(20)))
    refused = d.ctl(
        "--json", "wallet.onchain_preview", "--address", mainnet, "--amount-sats", "1000",
        "--fee-rate-sat-vb", "2",
    )  # fmt: skip
    assert refused.returncode != 0 and "for bitcoin (mainnet)" in refused.stdout + refused.stderr

    # Send to a taproot address at 5 sat/vB: preview, confirm, check btcd and the node.
    taproot = str(bech32.encode("bcrt", 1, os.urandom(32)))
    args = ("--address", taproot, "--amount-sats", str(SEND_SATS), "--fee-rate-sat-vb", "5")
    preview = d.ctl_json("wallet.onchain_preview", *args)
    assert preview["amount_sats"] == SEND_SATS and preview["fee_exact"], preview
    sent = d.ctl_json("wallet.onchain_send", *args, "--max-fee-sats", str(preview["fee_sats"]))
    assert sent["status"] == "broadcast" and sent["quoted_fee_sats"] == preview["fee_sats"]
    tx = await _transaction(net, sent["txid"])
    assert tx["outputs"][taproot] == SEND_SATS  # exactly the amount shown
    assert tx["fee"] == preview["fee_sats"]  # exactly the fee shown
    await net.client.mine(1)
    done = await _confirmed(d, sent["id"])
    assert (done["sent_sats"], done["fee_sats"]) == (SEND_SATS, preview["fee_sats"])
    left = FUNDING_SATS - SEND_SATS - preview["fee_sats"]
    await _wait_for(d, "the change", lambda: d.ctl_json("wallet.balance")["onchain_sats"] == left)

    # A channel from the hub, then cash-out to a P2WPKH address at 3 sat/vB.
    await net.channel(d, CHANNEL_SATS, PUSH_SATS)
    to = str(bech32.encode("bcrt", 0, os.urandom(20)))
    args = ("--address", to, "--fee-rate-sat-vb", "3")
    plan = d.ctl_json("wallet.cash_out_preview", *args)
    [channel] = plan["channels"]
    assert (channel["opened_by"], channel["closing_fee_sats"]) == ("the peer", 0)
    assert channel["returns_sats"] == PUSH_SATS
    assert plan["exact"] and plan["coins"] == 2 and plan["onchain_sats"] == left
    assert plan["amount_sats"] == left + PUSH_SATS - plan["fee_sats"]
    started = d.ctl_json("wallet.cash_out", *args, "--max-fee-sats", str(plan["fee_sats"]))
    assert started["status"] == "closing", started
    await _mine_once_in_mempool(net)  # the closing transaction
    swept = await _wait_for(d, "the sweep", lambda: _send(d, started["id"])["txid"])
    tx = await _transaction(net, swept)
    assert tx["outputs"] == {to: plan["amount_sats"]} and tx["inputs"] == plan["coins"]
    assert tx["fee"] == plan["fee_sats"]
    await net.client.mine(1)
    done = await _confirmed(d, started["id"])
    assert (done["sent_sats"], done["fee_sats"]) == (plan["amount_sats"], plan["fee_sats"])
    await _wait_for(d, "an empty wallet", lambda: _empty(d.ctl_json("wallet.balance")))

    # Two coins, and a send that needs both: the node picks the coins, so the fee shown is
    # the most it can be; the amount is exact all the same, and the fee paid is within it.
    for sats in (60_000, 45_000):
        await net.client.fund(d.ctl_json("wallet.onchain_address")["address"], sats)
    await _wait_for(
        d, "two deposits", lambda: d.ctl_json("wallet.balance")["onchain_sats"] == 105_000
    )
    to = str(bech32.encode("bcrt", 0, os.urandom(20)))
    args = ("--address", to, "--amount-sats", "80000", "--fee-rate-sat-vb", "2")
    preview = d.ctl_json("wallet.onchain_preview", *args)
    assert not preview["fee_exact"] and preview["coins"] == 2, preview
    sent = d.ctl_json("wallet.onchain_send", *args, "--max-fee-sats", str(preview["fee_sats"]))
    tx = await _transaction(net, sent["txid"])
    assert tx["outputs"][to] == 80_000 and tx["inputs"] == 2
    assert tx["fee"] <= preview["fee_sats"]
    await net.client.mine(1)
    done = await _confirmed(d, sent["id"])
    assert (done["sent_sats"], done["fee_sats"]) == (80_000, tx["fee"])
    assert done["quoted_fee_sats"] == preview["fee_sats"] and not done["quote_exact"]


def _empty(balance: dict[str, Any]) -> bool:
    return balance["onchain_sats"] == balance["lightning_sats"] == balance["spendable_sats"] == 0


async def _confirmed(d: WalletDaemon, send_id: int) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        row = _send(d, send_id)
        return row if row["status"] == "confirmed" else None

    row: dict[str, Any] = await _wait_for(d, f"send {send_id}'s confirmation", check)
    return row


async def _mine_once_in_mempool(net: Net) -> None:
    """Mine one block once btcd holds a transaction to put in it."""
    async with _btcd(net) as rpc:
        for _ in range(300):
            if await rpc.call("getrawmempool"):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("no transaction reached the mempool")
    await net.client.mine(1)
