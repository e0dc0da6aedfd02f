"""Go Online refuses with clear blockers; the daemon starts offline (fast, fake wallet node)."""

from __future__ import annotations

import pytest
from support import DaemonFactory

from autopilotd.adapters.fake_lightning import FakeNetwork, FakeNode
from autopilotd.app import Adapters
from autopilotd.client import RpcError


async def test_go_online_is_blocked_without_a_ready_model(daemon_factory: DaemonFactory) -> None:
    node = FakeNode(FakeNetwork(), "provider", 0)
    d = await daemon_factory(
        adapters=Adapters(node_factory=lambda m: node),
        wallet_network="regtest",
        wallet_bitcoind_rpc_url="http://u:p@127.0.0.1:1",
        relays="ws://127.0.0.1:9",  # nothing listens: no relay can connect
    )
    assert (await d.call("wait.until", {"condition": "wallet-ready", "timeout_s": 10}))["met"]
    status = await d.call("provider.status")
    assert status["provider"]["state"] == "offline"
    with pytest.raises(RpcError) as refused:
        await d.call("provider.online")
    assert "no model ready" in refused.value.message
    assert "no relay is connected" in refused.value.message
    blockers = {b["id"] for b in refused.value.raw_data["blockers"]}
    assert blockers == {"model", "relays"}
    status = await d.call("provider.status")
    assert status["provider"]["state"] == "offline"
    assert {b["id"] for b in status["provider"]["blockers"]} == {"model", "relays"}
    identity = await d.call("identity.show")
    assert identity["npub"].startswith("npub1") and len(identity["hex"]) == 64


@pytest.mark.parametrize("lsp", ["", "02" + "ab" * 32 + "@127.0.0.1:9735"])
async def test_a_wallet_that_cannot_be_paid_blocks_going_online(
    daemon_factory: DaemonFactory, lsp: str
) -> None:
    node = FakeNode(FakeNetwork(), "provider", 0)
    node.receivable_msat = 0  # no channel with room to receive
    d = await daemon_factory(
        adapters=Adapters(node_factory=lambda m: node),
        wallet_network="regtest",
        wallet_bitcoind_rpc_url="http://u:p@127.0.0.1:1",
        wallet_lsp=lsp,
    )
    assert (await d.call("wait.until", {"condition": "wallet-ready", "timeout_s": 10}))["met"]
    with pytest.raises(RpcError) as refused:
        await d.call("provider.online")
    blockers = {b["id"]: b for b in refused.value.raw_data["blockers"]}
    if lsp:  # the LSP opens a channel when the first job is paid
        assert "inbound" not in blockers
    else:
        assert "no LSP is set" in blockers["inbound"]["reason"]
        assert "wallet_lsp" in blockers["inbound"]["next_step"]
