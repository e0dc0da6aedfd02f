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

from autopilotd.devnet.ports import LOOPBACK


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
    ldk = ldk_node_module()
    storage_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = ldk.default_config()
    config.storage_dir_path = str(storage_dir)
    config.network = ldk.Network.REGTEST
    config.listening_addresses = [f"{LOOPBACK}:{listen_port}"]
    if trusted_peers_no_reserve and config.anchor_channels_config is not None:
        config.anchor_channels_config.trusted_peers_no_reserve = list(trusted_peers_no_reserve)
    builder = ldk.Builder.from_config(config)
    builder.set_chain_source_bitcoind_rpc(chain.host, chain.port, chain.user, chain.password)
    builder.set_filesystem_logger(str(storage_dir / "ldk_node.log"), ldk.LogLevel.DEBUG)
    if alias:
        builder.set_node_alias(alias)
    if forward_to_unannounced_channels:
        builder.set_async_payments_role(ldk.AsyncPaymentsRole.SERVER)
    return builder.build()
