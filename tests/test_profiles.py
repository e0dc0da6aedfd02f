"""Network profiles: each one parses into a valid config, and each real-network profile builds
a real ldk-node (not started: nothing here reaches the network).

The public services a profile names cannot be exercised offline; profiles.py says where each
default came from and docs/onboarding.md shows them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autopilotd.adapters.ldk_node import LdkNode, ldk_node_factory
from autopilotd.config import CHAIN_SOURCES, Config, load_config, split_list
from autopilotd.paths import Paths
from autopilotd.profiles import PROFILES, NetworkProfile

REAL = [p for p in PROFILES.values() if p.name != "regtest"]
DEVNET_SHIM = "http://u:p@127.0.0.1:18443"
MNEMONIC = "abandon " * 11 + "about"


def profile_config(home: Path, profile: str, **env: str) -> Config:
    variables = {"AUTOPILOTD_NETWORK_PROFILE": profile}
    variables |= {f"AUTOPILOTD_{k.upper()}": v for k, v in env.items()}
    return load_config(Paths.for_home(home), env=variables)


def test_the_registry_names_each_profile_once() -> None:
    assert list(PROFILES) == ["regtest", "signet", "mutinynet", "bitcoin"]
    for name, profile in PROFILES.items():
        assert profile.name == name and profile.sources
        assert profile.chain_kind in CHAIN_SOURCES


@pytest.mark.parametrize("profile", REAL, ids=lambda p: p.name)
def test_a_real_network_profile_fills_the_config(tmp_path: Path, profile: NetworkProfile) -> None:
    cfg = profile_config(tmp_path, profile.name)
    assert cfg.wallet_network == profile.network
    assert getattr(cfg, CHAIN_SOURCES[profile.chain_kind]) == profile.chain_url != ""
    assert cfg.wallet_rgs_url == profile.rgs_url
    assert (cfg.wallet_lsp, cfg.wallet_lsp_token) == (profile.lsp, profile.lsp_token)
    assert cfg.nexus_url == "" and split_list(cfg.relays) == profile.relays
    assert cfg.relay_urls() == profile.relays
    assert cfg.wallet_chain() == profile.name
    assert cfg.public()["network_profile"] == profile.name


def test_the_regtest_profile_takes_the_devnet_chain_source_from_the_config(tmp_path: Path) -> None:
    cfg = profile_config(tmp_path, "regtest", wallet_bitcoind_rpc_url=DEVNET_SHIM)
    assert (cfg.wallet_network, cfg.wallet_bitcoind_rpc_url) == ("regtest", DEVNET_SHIM)
    assert (cfg.relays, cfg.nexus_url, cfg.wallet_lsp, cfg.wallet_rgs_url) == ("", "", "", "")


@pytest.mark.parametrize("profile", REAL, ids=lambda p: p.name)
def test_a_real_network_profile_builds_a_node(tmp_path: Path, profile: NetworkProfile) -> None:
    """The daemon's own factory, with a real ldk_node.Builder: `build()` opens the stores and
    sets the chain and gossip sources up without contacting them (that happens at `start`)."""
    pytest.importorskip("ldk_node", reason="make native builds the ldk-node bindings")
    cfg = profile_config(tmp_path, profile.name)
    node = ldk_node_factory(cfg)(MNEMONIC)
    assert isinstance(node, LdkNode)
    assert node.network == profile.network
    assert node.settings.chain.esplora_url == profile.chain_url
    assert node.settings.rgs_url == profile.rgs_url
    assert len(node.node_id()) == 66
    assert (tmp_path / "data" / "wallet" / "ldk").is_dir()


def test_an_electrum_chain_source_builds_a_node(tmp_path: Path) -> None:
    pytest.importorskip("ldk_node", reason="make native builds the ldk-node bindings")
    electrum = "ssl://electrum.blockstream.info:50002"
    cfg = profile_config(tmp_path, "bitcoin", wallet_electrum_url=electrum)
    assert cfg.wallet_esplora_url == ""  # the chain source is one choice: the profile's is out
    node = ldk_node_factory(cfg)(MNEMONIC)
    assert isinstance(node, LdkNode) and node.settings.chain.electrum_url == electrum
