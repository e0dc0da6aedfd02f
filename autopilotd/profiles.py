"""Network profiles: named defaults for the network a wallet and its provider live on.

A profile names the Bitcoin network ldk-node runs on, a chain source, rapid gossip sync where
a server for it exists, an LSP, the Nexus and the relays. `load_config` fills each setting that
config.toml and the environment leave unset from the profile named by `network_profile`; a set
value always wins. The real networks cannot be reached from the tests, so every profile says in
`sources` where its defaults came from; docs/onboarding.md has them as a table.

Mutinynet is a signet of its own: ldk-node runs it as `signet`, but its chain is not the default
signet's, so a wallet created on one must never be opened on the other (`Config.wallet_chain`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

ChainKind = Literal["esplora", "electrum", "bitcoind_rpc"]

PUBLIC_RELAYS = ("wss://relay.damus.io", "wss://nos.lol")
RELAYS_SOURCE = (
    "Relays: relay.damus.io (run by Damus) and nos.lol, the two public relays most Nostr "
    "clients list by default; Nostr relays serve every Bitcoin network alike."
)
NO_NEXUS = "Nexus: none, no public Nexus runs yet."


@dataclass(frozen=True)
class NetworkProfile:
    """One network's defaults; an empty text means the profile has no default for it."""

    name: str
    network: Literal["regtest", "signet", "bitcoin"]  # ldk-node's Network
    chain_kind: ChainKind
    chain_url: str  # "" where it is known only at run time (the devnet's shim)
    rgs_url: str  # rapid gossip sync server; "" gossips with peers
    lsp: str  # node_id@host:port of an LSPS2 LSP
    lsp_token: str
    nexus_url: str
    relays: tuple[str, ...]
    sources: str  # where each default came from


PROFILES: Mapping[str, NetworkProfile] = MappingProxyType(
    {
        p.name: p
        for p in (
            NetworkProfile(
                name="regtest",
                network="regtest",
                chain_kind="bitcoind_rpc",
                chain_url="",
                rgs_url="",
                lsp="",
                lsp_token="",
                nexus_url="",
                relays=(),
                sources=(
                    "The offline devnet (autopilotd devnet, make demo). Its bitcoind-compatible "
                    "shim, hub, Nexus and relay listen on ports chosen at run time, so this "
                    "profile fixes only the network and the kind of chain source: the demo and "
                    "the devnet write wallet_bitcoind_rpc_url, nexus_url and relays themselves."
                ),
            ),
            NetworkProfile(
                name="signet",
                network="signet",
                chain_kind="esplora",
                chain_url="https://mempool.space/signet/api",
                rgs_url="",
                lsp="",
                lsp_token="",
                nexus_url="",
                relays=PUBLIC_RELAYS,
                sources=(
                    "Esplora: mempool.space's public API for the default signet "
                    "(https://mempool.space/signet/api). Rapid gossip sync: none, LDK documents "
                    "no RGS server for the default signet, so the node gossips with its peers. "
                    "LSP: none, no public LSPS2 LSP on the default signet was found; set "
                    f"wallet_lsp. {NO_NEXUS} {RELAYS_SOURCE}"
                ),
            ),
            NetworkProfile(
                name="mutinynet",
                network="signet",
                chain_kind="esplora",
                chain_url="https://mutinynet.com/api",
                rgs_url="https://rgs.mutinynet.com/snapshot",
                lsp=(
                    "0371d6fd7d75de2d0372d03ea00e8bacdacb50c27d0eaea0a76a0622eff1f5ef2b"
                    "@44.219.111.31:39735"
                ),
                lsp_token="JZWN9YLW",
                nexus_url="",
                relays=PUBLIC_RELAYS,
                sources=(
                    "Esplora (https://mutinynet.com/api) and rapid gossip sync "
                    "(https://rgs.mutinynet.com/snapshot): Mutinynet's own services, as ldk-node "
                    "integrations configure them (cashubtc/cdk crates/cdk-ldk-node/"
                    "NETWORK_GUIDE.md; moneydevkit/mdk-checkout src/server/mdk-config.ts). "
                    "LSP: the LSPS2 node of C= / Let there be Lightning on Mutinynet with its "
                    "published demo token, as LtbLightning/ldk-node-flutter sets it "
                    "(lib/src/utils/default_services.dart, DefaultServicesMutinynet); older "
                    "examples list other addresses for the same node id. "
                    f"{NO_NEXUS} {RELAYS_SOURCE}"
                ),
            ),
            NetworkProfile(
                name="bitcoin",
                network="bitcoin",
                chain_kind="esplora",
                chain_url="https://blockstream.info/api",
                rgs_url="https://rapidsync.lightningdevkit.org/snapshot",
                lsp="",
                lsp_token="",
                nexus_url="",
                relays=PUBLIC_RELAYS,
                sources=(
                    "Esplora: Blockstream's public API (https://blockstream.info/api), ldk-node "
                    "0.7's own default (DEFAULT_ESPLORA_SERVER_URL in src/config.rs). Rapid "
                    "gossip sync: LDK's public server "
                    "(https://rapidsync.lightningdevkit.org/snapshot, documented in the "
                    "lightning-rapid-gossip-sync crate). LSP: none, no public LSPS2 LSP that "
                    "needs no sign-up was confirmed; set wallet_lsp (and wallet_lsp_token) to "
                    f"the LSP you choose. {NO_NEXUS} {RELAYS_SOURCE}"
                ),
            ),
        )
    }
)
