"""A wallet keeps the network it was created on: a changed profile or wallet_network is refused,
visibly, before any node is built (fast: the in-memory fake node)."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from support import DaemonFactory, wallet_daemon

from autopilotd.adapters.fake_lightning import FakeNetwork, FakeNode
from autopilotd.app import Adapters
from autopilotd.config import Config
from autopilotd.errors import StartupCheckFailed
from autopilotd.paths import Paths
from autopilotd.wallet.network import check_network, network_path


def test_the_first_start_records_the_network_and_later_ones_must_match(tmp_path: Path) -> None:
    check_network(tmp_path, "mutinynet")
    path = network_path(tmp_path)
    assert path.read_text() == "mutinynet\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    check_network(tmp_path, "mutinynet")  # the same network opens
    with pytest.raises(StartupCheckFailed, match=r"created on mutinynet.*now says signet"):
        check_network(tmp_path, "signet")  # another signet is another chain
    assert path.read_text() == "mutinynet\n"  # never rewritten


def test_mutinynet_is_a_chain_of_its_own(tmp_path: Path) -> None:
    paths = Paths.for_home(tmp_path)
    esplora = "https://e.example/api"
    mutinynet = Config(paths, network_profile="mutinynet", wallet_network="signet")
    assert mutinynet.wallet_chain() == "mutinynet"
    assert Config(paths, wallet_network="signet", wallet_esplora_url=esplora).wallet_chain() == (
        "signet"
    )
    assert Config(paths, network_profile="bitcoin", wallet_network="bitcoin").wallet_chain() == (
        "bitcoin"
    )


async def test_a_wallet_is_not_opened_on_another_network(daemon_factory: DaemonFactory) -> None:
    net = FakeNetwork()
    first, _ = await wallet_daemon(daemon_factory, net, "first", 0)
    assert network_path(first.paths.data_dir).read_text() == "regtest\n"
    await first.stop()
    built: list[str] = []

    def factory(mnemonic: str) -> Any:
        built.append(mnemonic)
        return FakeNode(net, "again", 0)

    again = await daemon_factory(
        home=first.paths.home,
        adapters=Adapters(node_factory=factory),
        wallet_network="signet",
        wallet_esplora_url="https://e.example/api",
    )
    status = await again.call("status")
    while status["wallet"]["state"] in ("off", "starting"):
        status = await again.call("status.wait", {"after_seq": status["seq"], "timeout_s": 5})
    wallet = status["wallet"]
    assert wallet["state"] == "error", wallet
    assert "created on regtest" in wallet["reason"] and "now says signet" in wallet["reason"]
    assert built == []  # no node was built for the other network
    assert network_path(first.paths.data_dir).read_text() == "regtest\n"
