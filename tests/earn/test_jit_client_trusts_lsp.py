"""The LSP's other trust model (bLIP-52 "client trusts LSP"), on a devnet of its own.

Here the LSP broadcasts a just-in-time channel's funding transaction only once the client
has claimed the payment, so the client takes the payment over a channel whose funding is not
yet on the chain; the default model (tests/earn/test_jit_e2e.py) is the reverse. A new wallet
is paid over a JIT channel with the LSP's fee taken, the funding then confirms, and a second
payment goes over the same channel with no fee.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from support.devnet import Net, WalletDaemon

from autopilotd.devnet import Devnet
from autopilotd.devnet.lsp import LspTerms

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def net(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Net]:
    root = tmp_path_factory.mktemp("jit-client-trusts")
    async with Devnet(root / "devnet", lsp_client_trusts_lsp=True) as devnet:
        n = Net(devnet, devnet.client, root)
        try:
            yield n
        finally:
            for d in n.daemons:
                d.stop()


async def _paid(payer: WalletDaemon, receiver: WalletDaemon, sats: int) -> dict[str, object]:
    invoice = receiver.ctl_json("wallet.receive", "--amount-sats", str(sats))
    sent = payer.ctl_json("wallet.pay", "--bolt11", invoice["bolt11"])
    assert sent["settled"], sent
    deadline = time.monotonic() + 30
    while True:
        r = receiver.ctl("--json", "wallet.payment", "--payment-hash", invoice["payment_hash"])
        if r.returncode == 0:
            return {
                **invoice,
                "received": receiver.ctl_json(
                    "wallet.payment", "--payment-hash", invoice["payment_hash"]
                ),
            }
        assert time.monotonic() < deadline, r.stderr
        await asyncio.sleep(0.2)


async def test_a_new_wallet_is_paid_before_its_channel_is_on_chain(net: Net) -> None:
    info = net.devnet.info
    payer = net.daemon(
        "payer", wallet_trusted_peers_no_reserve=info.lsp_node_id, wallet_peers=info.lsp
    ).start()
    status = payer.ctl_json("wallet.status")
    await net.client.lsp_open_channel(status["node_id"], status["listening"], 1_000_000, 400_000)
    newcomer = net.daemon(
        "newcomer", wallet_lsp=info.lsp, wallet_peers="", wallet_trusted_peers_no_reserve=""
    ).start()
    first = await _paid(payer, newcomer, 21)
    fee_msat = LspTerms().min_fee_msat
    assert first["lsp_fee_sats"] == fee_msat / 1000
    received = first["received"]
    assert isinstance(received, dict)
    assert received["amount_msat"] == 21_000 - fee_msat and received["fee_msat"] == fee_msat
    node_id = newcomer.ctl_json("wallet.status")["node_id"]
    deadline = time.monotonic() + 30
    while True:  # the LSP broadcasts the funding once the client claimed the payment
        lsp = (await net.client.status())["lsp"]
        [channel] = [c for c in lsp["channels"] if c["counterparty"] == node_id]
        if channel["funding_txid"] and (await net.client.status())["mempool"] > 0:
            break
        assert time.monotonic() < deadline, lsp
        await asyncio.sleep(0.2)
    await net.client.mine(6)
    second = await _paid(payer, newcomer, 30)
    assert second["lsp_fee_sats"] == 0
    received = second["received"]
    assert isinstance(received, dict) and received["fee_msat"] is None
    lsp = (await net.client.status())["lsp"]
    assert [c["counterparty"] for c in lsp["channels"]].count(node_id) == 1
