"""Building ldk-node nodes that use the devnet's chain (the shim, via bitcoind RPC).

ldk-node's Python bindings are built by scripts/build-ldk-node.sh; they are imported here
lazily so that the rest of the devnet (btcd, shim, faucet) works without them. Every call
into a node blocks, so async callers wrap them in `asyncio.to_thread`.
"""

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from autopilotd.adapters.ldk_node import ChainSource as WalletChainSource
from autopilotd.adapters.ldk_node import NodeSettings, build_node


@dataclass(frozen=True)
class ChainSource:
    """A bitcoind-compatible RPC endpoint (the devnet shim) and its credentials."""

    host: str
    port: int
    user: str
    password: str


def ldk_node_module() -> ModuleType:
    """The `ldk_node` bindings module, with a hint when they have not been built."""
    try:
        return importlib.import_module("ldk_node")
    except ImportError as exc:
        raise ImportError(
            "ldk_node is not installed: run scripts/build-ldk-node.sh .venv/bin/python"
        ) from exc


def build_regtest_node(
    storage_dir: Path,
    listen_port: int,
    chain: ChainSource,
    *,
    alias: str | None = None,
    trusted_peers_no_reserve: Sequence[str] = (),
    forward_to_unannounced_channels: bool = False,
) -> Any:
    """A regtest ldk-node (not started) storing under `storage_dir`, listening on loopback.

    `trusted_peers_no_reserve` lists node ids whose inbound anchor channels the node accepts
    without keeping the on-chain reserve (about 25,000 sats per channel) it otherwise needs.

    `forward_to_unannounced_channels` lets the node route payments into unannounced
    channels, as an LSP does for its clients. LDK refuses that by default
    (`accept_forwards_to_priv_channels`); ldk-node 0.7's bindings reach the switch only
    through the async-payments server role, which also lets the node hold HTLCs that ask
    for it (async payments) and serve static invoices; plain payments are unaffected.
    """
    settings = NodeSettings(
        network="regtest",
        storage_dir=storage_dir,
        listen_port=listen_port,
        chain=WalletChainSource(chain.host, chain.port, chain.user, chain.password),
        alias=alias,
        trusted_peers_no_reserve=tuple(trusted_peers_no_reserve),
        forward_to_unannounced_channels=forward_to_unannounced_channels,
        log_level="DEBUG",
    )
    return build_node(settings)
