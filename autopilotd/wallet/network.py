"""The network a wallet lives on, recorded next to its seed: a profile never moves it.

The first time the wallet starts, before its Lightning node is built, the chain it runs on
(`Config.wallet_chain`: regtest, signet, mutinynet or bitcoin) is written to
`data/wallet/network`, durably, mode 0600. Every later start compares the configured chain with
the recorded one and refuses to open the wallet on another: a changed `network_profile` or
`wallet_network` must never point a wallet's keys and channel state at a different chain
without the user seeing it. A wallet from before this record adopts the configured chain at its
next start (ldk-node itself refuses to load its on-chain wallet for another Bitcoin network).
"""

from __future__ import annotations

import logging
from pathlib import Path

from autopilotd.errors import StartupCheckFailed
from autopilotd.paths import private_dir, write_private_atomic

logger = logging.getLogger(__name__)

NETWORK_NAME = "network"


def network_path(data_dir: Path) -> Path:
    return data_dir / "wallet" / NETWORK_NAME


def check_network(data_dir: Path, chain: str) -> None:
    """Record `chain` for a wallet that has no record yet; refuse one recorded for another."""
    path = network_path(data_dir)
    if not path.exists():
        private_dir(path.parent)
        write_private_atomic(path, (chain + "\n").encode())
        logger.info("the wallet's network is %s (recorded in %s)", chain, path)
        return
    recorded = path.read_text(encoding="utf-8").strip()
    if recorded != chain:
        raise StartupCheckFailed(
            f"this wallet was created on {recorded}, but the configuration now says {chain}; "
            f"a wallet never changes network: point network_profile or wallet_network back at "
            f"{recorded}, or run a {chain} wallet in a home of its own (--home DIR)"
        )
