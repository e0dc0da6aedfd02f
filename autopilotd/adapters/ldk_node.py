"""The real Lightning node: ldk-node through the Python bindings the project builds.

`scripts/build-ldk-node.sh` builds the bindings from the crates.io crate and installs the
`ldk_node` module into the environment; it is imported lazily, so a daemon whose wallet is off
never needs it. Every node call blocks, so each goes through `asyncio.to_thread`; events come
from `next_event_async`. This module is the only place that knows ldk-node's types.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from autopilotd.adapters import ldk_onchain
from autopilotd.blocking import in_daemon_thread
from autopilotd.config import Config, split_list
from autopilotd.errors import StartupCheckFailed
from autopilotd.loopback import free_port
from autopilotd.paths import private_dir
from autopilotd.ports.lightning import (
    Balances,
    Invoice,
    JitInvoice,
    LightningNode,
    NodeError,
    NodeEvent,
    NodePayment,
    OtherEvent,
    PaymentFailed,
    PaymentReceived,
    PaymentSucceeded,
)
from autopilotd.ports.onchain import ChannelInfo, Destination, OnchainTx, Quote

logger = logging.getLogger(__name__)
T = TypeVar("T")

NETWORKS = {"regtest": "REGTEST", "signet": "SIGNET", "bitcoin": "BITCOIN", "testnet": "TESTNET"}
ERROR_TEXT = {
    "InsufficientFunds": "not enough funds or channel capacity",
    "DuplicatePayment": "this invoice was already paid or is being paid",
    "InvalidInvoice": "not a valid BOLT11 invoice",
    "InvalidNetwork": "the invoice is for another network",
    "InvalidAmount": "the amount is not valid for this invoice",
    "PaymentSendingFailed": "the node could not send the payment",
    "NotRunning": "the Lightning node is not running",
    "ConnectionFailed": "could not connect to the peer",
    "LiquiditySourceUnavailable": "no LSP is configured (wallet_lsp)",
    "LiquidityRequestFailed": "the LSP would not sell a channel for this amount",
    "LiquidityFeeTooHigh": "the LSP's fee is above your limit (wallet_jit_max_fee_sats)",
    "InvalidAddress": "the address is not valid on this wallet's network",
    "ChannelClosingFailed": "the channel could not be closed (is the peer connected?)",
    "OnchainTxCreationFailed": "the node could not build the transaction",
}
LDK_DUST_LIMIT_SATS = 354
"""LDK leaves out of a closing transaction an output of at most this many sats."""


def ldk_module() -> ModuleType:
    try:
        return importlib.import_module("ldk_node")
    except ImportError:
        raise StartupCheckFailed(
            "the ldk_node bindings are not installed; run 'make setup native' "
            "(scripts/build-ldk-node.sh builds them)"
        ) from None


@dataclass(frozen=True)
class ChainSource:
    """Where the node reads the chain: a bitcoind-compatible RPC (the devnet shim), an Esplora
    server or an Electrum server."""

    bitcoind_host: str | None = None
    bitcoind_port: int = 0
    bitcoind_user: str = ""
    bitcoind_password: str = ""
    esplora_url: str | None = None
    electrum_url: str | None = None  # ssl://host:port or tcp://host:port

    @classmethod
    def from_config(cls, config: Config) -> ChainSource:
        if config.wallet_bitcoind_rpc_url:
            url = urlsplit(config.wallet_bitcoind_rpc_url)
            if not url.hostname or not url.port:
                raise StartupCheckFailed(
                    "wallet_bitcoind_rpc_url must be http://user:pass@host:port"
                )
            return cls(url.hostname, url.port, url.username or "", url.password or "")
        if config.wallet_electrum_url:
            return cls(electrum_url=config.wallet_electrum_url)
        return cls(esplora_url=config.wallet_esplora_url)


@dataclass(frozen=True)
class NodeSettings:
    network: str
    storage_dir: Path
    listen_port: int
    chain: ChainSource
    alias: str | None = None
    trusted_peers_no_reserve: tuple[str, ...] = ()
    forward_to_unannounced_channels: bool = False  # an LSP's switch (the devnet hub sets it)
    log_level: str = "INFO"
    rgs_url: str = ""  # rapid gossip sync server; "" learns the graph from peers
    # An LSPS2 liquidity provider (node_id@host:port) that sells just-in-time channels.
    lsp: str | None = None
    lsp_token: str | None = None
    # Whether the LSP's channel is taken without the on-chain reserve (a new wallet has none).
    lsp_trusted_no_reserve: bool = True

    @property
    def lsp_node_id(self) -> str | None:
        return self.lsp.partition("@")[0] if self.lsp else None


def build_node(settings: NodeSettings, mnemonic: str | None = None) -> Any:
    """Build (not start) an ldk-node; one way of doing it, for the daemon and the devnet alike.

    `trusted_peers_no_reserve` lists node ids whose inbound anchor channels are accepted
    without the on-chain reserve (about 25,000 sats per channel) otherwise required.
    """
    ldk = ldk_module()
    private_dir(settings.storage_dir)
    config = ldk.default_config()
    config.storage_dir_path = str(settings.storage_dir)
    config.network = getattr(ldk.Network, NETWORKS[settings.network])
    config.listening_addresses = [f"127.0.0.1:{settings.listen_port}"]
    no_reserve = list(settings.trusted_peers_no_reserve)
    lsp_id = settings.lsp_node_id
    if lsp_id:
        # The LSP opens its just-in-time channel with zero confirmations (the payment waits
        # on it), and a new wallet has no coins for the reserve an anchor channel needs.
        config.trusted_peers_0conf = [lsp_id]
        if settings.lsp_trusted_no_reserve and lsp_id not in no_reserve:
            no_reserve.append(lsp_id)
    if no_reserve and config.anchor_channels_config is not None:
        config.anchor_channels_config.trusted_peers_no_reserve = no_reserve
    builder = ldk.Builder.from_config(config)
    chain = settings.chain
    if chain.bitcoind_host:
        builder.set_chain_source_bitcoind_rpc(
            chain.bitcoind_host, chain.bitcoind_port, chain.bitcoind_user, chain.bitcoind_password
        )
    elif chain.esplora_url:
        builder.set_chain_source_esplora(chain.esplora_url, None)
    elif chain.electrum_url:
        builder.set_chain_source_electrum(chain.electrum_url, None)
    if settings.rgs_url:
        builder.set_gossip_source_rgs(settings.rgs_url)
    builder.set_filesystem_logger(
        str(settings.storage_dir / "ldk_node.log"), getattr(ldk.LogLevel, settings.log_level)
    )
    if mnemonic is not None:
        builder.set_entropy_bip39_mnemonic(mnemonic, None)
    if settings.alias:
        builder.set_node_alias(settings.alias)
    if settings.lsp:
        node_id, _, address = settings.lsp.partition("@")
        builder.set_liquidity_source_lsps2(node_id, address, settings.lsp_token or None)
    if settings.forward_to_unannounced_channels:
        # LDK refuses to forward into unannounced channels by default; ldk-node 0.7's bindings
        # reach that switch only through the async-payments server role (see docs/devnet.md).
        builder.set_async_payments_role(ldk.AsyncPaymentsRole.SERVER)
    return builder.build()


def _reason(exc: BaseException) -> NodeError:
    kind = type(exc).__name__
    return NodeError(ERROR_TEXT.get(kind, f"node error ({kind})"), kind=kind)


class LdkNode(LightningNode):
    """LightningNode over an ldk_node.Node."""

    def __init__(self, settings: NodeSettings, mnemonic: str) -> None:
        self._ldk = ldk_module()
        self.network = settings.network
        self.settings = settings
        try:
            self._node = build_node(settings, mnemonic)
        except self._ldk.BuildError as exc:
            raise NodeError(f"cannot build the node ({type(exc).__name__})") from None

    async def _call(self, fn: Callable[[], T]) -> T:
        try:
            return await in_daemon_thread(fn, name="ldk-node")
        except self._ldk.NodeError as exc:
            raise _reason(exc) from None

    async def start(self) -> None:
        await self._call(self._node.start)

    async def stop(self) -> None:
        try:
            await self._call(self._node.stop)
        except NodeError as exc:
            logger.warning("stopping the node: %s", exc.reason)

    def node_id(self) -> str:
        return str(self._node.node_id())

    async def sync(self) -> None:
        await self._call(self._node.sync_wallets)

    async def connect(self, node_id: str, address: str) -> None:
        await self._call(lambda: self._node.connect(node_id, address, True))

    async def balances(self) -> Balances:
        b = await self._call(self._node.list_balances)
        channels = await self._call(self._node.list_channels)
        usable = [c for c in channels if c.is_usable]
        pending = sum(_sweep_amount(p) for p in b.pending_balances_from_channel_closures)
        pending += b.total_onchain_balance_sats - b.spendable_onchain_balance_sats
        # A cooperative close pays an address of the on-chain wallet, which counts the coin
        # once a block holds it; LDK reports it for six blocks more. Counted once: on chain.
        landed = sum(
            int(x.amount_satoshis)
            for x in b.lightning_balances
            if isinstance(x, self._ldk.LightningBalance.CLAIMABLE_AWAITING_CONFIRMATIONS)
            and x.source == self._ldk.BalanceSource.COOP_CLOSE
        )
        return Balances(
            lightning_sats=max(0, b.total_lightning_balance_sats - landed),
            spendable_msat=sum(c.outbound_capacity_msat for c in usable),
            receivable_msat=sum(c.inbound_capacity_msat for c in usable),
            onchain_sats=b.total_onchain_balance_sats,
            onchain_spendable_sats=b.spendable_onchain_balance_sats,
            pending_sats=pending,
        )

    def _invoice(self, inv: Any) -> Invoice:
        described = inv.invoice_description()
        description = getattr(described, "description", "") or ""
        return Invoice(
            bolt11=str(inv),
            payment_hash=str(inv.payment_hash()).lower(),
            amount_msat=inv.amount_milli_satoshis(),
            description=str(description),
            expires_at=int(inv.seconds_since_epoch() + inv.expiry_time_seconds()),
            network=_network_name(inv.network()),
        )

    async def create_invoice(self, amount_msat: int, description: str, expiry_s: int) -> Invoice:
        text = self._ldk.Bolt11InvoiceDescription.DIRECT(description=description)
        inv = await self._call(
            lambda: self._node.bolt11_payment().receive(amount_msat, text, expiry_s)
        )
        return self._invoice(inv)

    async def create_jit_invoice(
        self, amount_msat: int, description: str, expiry_s: int, max_lsp_fee_msat: int
    ) -> JitInvoice:
        text = self._ldk.Bolt11InvoiceDescription.DIRECT(description=description)
        bolt = self._node.bolt11_payment()
        inv = await self._call(
            lambda: bolt.receive_via_jit_channel(amount_msat, text, expiry_s, max_lsp_fee_msat)
        )
        invoice = self._invoice(inv)
        # ldk-node keeps the fee the LSP quoted (and the node agreed to) with the payment.
        stored = await self._call(lambda: self._node.payment(invoice.payment_hash))
        limits = getattr(getattr(stored, "kind", None), "lsp_fee_limits", None)
        quoted = getattr(limits, "max_total_opening_fee_msat", None)
        return JitInvoice(invoice, max_lsp_fee_msat if quoted is None else int(quoted))

    def decode(self, bolt11: str) -> Invoice:
        try:
            return self._invoice(self._ldk.Bolt11Invoice.from_str(bolt11))
        except self._ldk.NodeError as exc:
            raise _reason(exc) from None

    async def pay(self, bolt11: str, amount_msat: int | None, max_fee_msat: int) -> None:
        invoice = self._ldk.Bolt11Invoice.from_str(bolt11)
        params = self._ldk.RouteParametersConfig(
            max_total_routing_fee_msat=max_fee_msat,
            max_total_cltv_expiry_delta=1008,
            max_path_count=10,
            max_channel_saturation_power_of_half=2,
        )
        bolt = self._node.bolt11_payment()
        if amount_msat is None:
            await self._call(lambda: bolt.send(invoice, params))
        else:
            await self._call(lambda: bolt.send_using_amount(invoice, amount_msat, params))

    def _payment(self, p: Any) -> NodePayment | None:
        kind = p.kind
        payment_hash = getattr(kind, "hash", None)
        if payment_hash is None:
            return None  # on-chain and BOLT12 payments are not this wallet's business yet
        direction = "in" if p.direction == self._ldk.PaymentDirection.INBOUND else "out"
        status = {
            self._ldk.PaymentStatus.PENDING: "pending",
            self._ldk.PaymentStatus.SUCCEEDED: "succeeded",
            self._ldk.PaymentStatus.FAILED: "failed",
        }[p.status]
        preimage = getattr(kind, "preimage", None)
        skimmed = getattr(kind, "counterparty_skimmed_fee_msat", None)
        return NodePayment(
            payment_hash=str(payment_hash).lower(),
            direction=direction,  # type: ignore[arg-type]
            status=status,  # type: ignore[arg-type]
            amount_msat=p.amount_msat,
            fee_msat=p.fee_paid_msat,
            preimage=None if preimage is None else str(preimage).lower(),
            updated_at=int(p.latest_update_timestamp),
            skimmed_fee_msat=int(skimmed or 0),
        )

    async def payment(self, payment_hash: str) -> NodePayment | None:
        # For BOLT11 payments ldk-node's payment id is the payment hash.
        found = await self._call(lambda: self._node.payment(payment_hash))
        return None if found is None else self._payment(found)

    async def payments(self) -> list[NodePayment]:
        found = await self._call(self._node.list_payments)
        return [p for p in (self._payment(x) for x in found) if p is not None]

    async def next_event(self) -> NodeEvent:
        event = await self._node.next_event_async()
        ev = self._ldk.Event
        if isinstance(event, ev.PAYMENT_RECEIVED):
            return PaymentReceived(str(event.payment_hash).lower(), int(event.amount_msat))
        if isinstance(event, ev.PAYMENT_SUCCESSFUL):
            preimage = event.payment_preimage
            return PaymentSucceeded(
                str(event.payment_hash).lower(),
                None if preimage is None else str(preimage).lower(),
                event.fee_paid_msat,
            )
        if isinstance(event, ev.PAYMENT_FAILED):
            reason = event.reason
            return PaymentFailed(
                None if event.payment_hash is None else str(event.payment_hash).lower(),
                "unknown" if reason is None else _enum_name(reason),
            )
        return OtherEvent(type(event).__name__)

    async def event_handled(self) -> None:
        await self._call(self._node.event_handled)

    async def onchain_address(self) -> str:
        return str(await self._call(lambda: self._node.onchain_payment().new_address()))

    async def wait_saved(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            if _manager_saved(self.settings.storage_dir / STORE_FILE):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(SAVED_POLL_S)

    def listening(self) -> str:
        return f"127.0.0.1:{self.settings.listen_port}"

    # -- on-chain money ----------------------------------------------------------------------

    def _fee_rate(self, sat_per_vb: int) -> Any:
        return self._ldk.FeeRate.from_sat_per_vb_unchecked(sat_per_vb)

    async def quote_send(self, dest: Destination, amount_sats: int, fee_rate: int) -> Quote:
        b = await self._call(self._node.list_balances)
        return ldk_onchain.quote_send(
            dest,
            amount_sats,
            fee_rate,
            total_sats=b.total_onchain_balance_sats,
            spendable_sats=b.spendable_onchain_balance_sats,
            txs=await self.onchain_txs(),
        )

    async def quote_sweep(
        self, dest: Destination, fee_rate: int, incoming: Sequence[int | None] = ()
    ) -> Quote:
        b = await self._call(self._node.list_balances)
        if not incoming:  # a cash-out quotes while its channels are open: they will close
            _check_no_reserve(b)
        return ldk_onchain.quote_sweep(
            dest,
            fee_rate,
            total_sats=b.total_onchain_balance_sats,
            txs=await self.onchain_txs(),
            incoming=incoming,
        )

    async def send_onchain(self, dest: Destination, amount_sats: int, fee_rate: int) -> str:
        rate = self._fee_rate(fee_rate)
        pay = self._node.onchain_payment()
        return str(await self._call(lambda: pay.send_to_address(dest.address, amount_sats, rate)))

    async def sweep_onchain(self, dest: Destination, fee_rate: int) -> str:
        _check_no_reserve(await self._call(self._node.list_balances))
        rate = self._fee_rate(fee_rate)
        pay = self._node.onchain_payment()
        # Keeping the reserve is a no-op without channels, and a guard should one open now.
        return str(await self._call(lambda: pay.send_all_to_address(dest.address, True, rate)))

    async def onchain_txs(self) -> list[OnchainTx]:
        found = await self._call(self._node.list_payments)
        txs = []
        for p in found:
            kind = p.kind
            if not isinstance(kind, self._ldk.PaymentKind.ONCHAIN):
                continue
            status = kind.status
            confirmed = isinstance(status, self._ldk.ConfirmationStatus.CONFIRMED)
            inbound = p.direction == self._ldk.PaymentDirection.INBOUND
            txs.append(
                OnchainTx(
                    txid=str(kind.txid),
                    direction="in" if inbound else "out",
                    amount_sats=(p.amount_msat or 0) // 1000,
                    fee_sats=None if p.fee_paid_msat is None else p.fee_paid_msat // 1000,
                    height=int(status.height) if confirmed else None,
                )
            )
        return txs

    async def channels(self) -> list[ChannelInfo]:
        channels = await self._call(self._node.list_channels)
        b = await self._call(self._node.list_balances)
        on_close = {
            str(x.channel_id): x
            for x in b.lightning_balances
            if isinstance(x, self._ldk.LightningBalance.CLAIMABLE_ON_CHANNEL_CLOSE)
        }
        out = []
        for c in channels:
            claim = on_close.get(str(c.channel_id))
            if claim is not None:
                balance = int(claim.amount_satoshis) + int(claim.transaction_fee_satoshis)
            else:  # not funded yet: what the channel says we hold
                reserve = c.unspendable_punishment_reserve or 0
                balance = c.outbound_capacity_msat // 1000 + reserve
            returns = None if c.is_outbound else balance if balance > LDK_DUST_LIMIT_SATS else 0
            out.append(
                ChannelInfo(
                    channel_id=str(c.channel_id),
                    user_channel_id=str(c.user_channel_id),
                    peer_id=str(c.counterparty_node_id),
                    opened_by_us=bool(c.is_outbound),
                    usable=bool(c.is_usable),
                    balance_sats=balance,
                    returns_sats=returns,
                )
            )
        return out

    async def close_channel(self, channel: ChannelInfo) -> None:
        await self._call(lambda: self._node.close_channel(channel.user_channel_id, channel.peer_id))

    async def closes_pending(self) -> int:
        channels = await self._call(self._node.list_channels)
        b = await self._call(self._node.list_balances)
        recorded = {t.height for t in await self.onchain_txs() if t.direction == "in"}
        open_ids = {str(c.channel_id) for c in channels}
        pending = len(channels)
        for x in b.lightning_balances:
            if isinstance(x, self._ldk.LightningBalance.CLAIMABLE_ON_CHANNEL_CLOSE):
                pending += str(x.channel_id) not in open_ids  # closing, not confirmed yet
            elif (
                isinstance(x, self._ldk.LightningBalance.CLAIMABLE_AWAITING_CONFIRMATIONS)
                and x.source == self._ldk.BalanceSource.COOP_CLOSE
            ):
                # Confirmed; pending until the on-chain wallet has recorded the close's block.
                mined_at = int(x.confirmation_height) - (ldk_onchain.ANTI_REORG_DELAY - 1)
                pending += mined_at not in recorded
        return pending


def _check_no_reserve(balances: Any) -> None:
    """A sweep takes every coin; while channels need an on-chain reserve it is refused."""
    if balances.total_anchor_channels_reserve_sats > 0:
        raise NodeError(
            "open channels need part of the on-chain balance as a reserve: close them first",
            kind="InsufficientFunds",
        )


# ldk-node 0.7's key-value store (its default SqliteStore): one table, each write an INSERT OR
# REPLACE, so a row's rowid grows with every write. Channel monitors and their updates are
# written while a channel changes; the channel manager after, by the background processor.
STORE_FILE = "ldk_node_data.sqlite"
SAVED_POLL_S = 0.005
_MANAGER_SAVED = """
SELECT (SELECT rowid FROM ldk_node_data
        WHERE primary_namespace = '' AND secondary_namespace = '' AND key = 'manager')
     > (SELECT coalesce(max(rowid), 0) FROM ldk_node_data
        WHERE primary_namespace IN ('monitors', 'monitor_updates'))
"""


def _manager_saved(path: Path) -> bool:
    """Whether ldk-node wrote its channel manager after its last channel monitor (update).

    A read-only look that never waits for a lock (the node's writer has priority); a store
    that is busy, missing or laid out otherwise counts as not saved (yet).
    """
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0)
    except sqlite3.Error:
        return False
    try:
        row = conn.execute(_MANAGER_SAVED).fetchone()
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    return bool(row and row[0])


def _sweep_amount(balance: Any) -> int:
    return int(getattr(balance, "amount_satoshis", 0))


def _enum_name(value: Any) -> str:
    name = getattr(value, "name", None)
    return str(name if name is not None else value)


def _network_name(value: Any) -> str:
    name = _enum_name(value).lower()
    return {"bitcoin": "bitcoin", "regtest": "regtest", "signet": "signet"}.get(name, name)


def start_wallet_at_genesis(settings: NodeSettings, mnemonic: str) -> bool:
    """Make a restored wallet's first sync over bitcoind RPC a rescan from the genesis block.

    ldk-node 0.7 starts a new on-chain wallet at the chain tip when its bitcoind source
    answers, so coins received before (a restore from words) are never found; Esplora and
    Electrum sources do a full scan instead and need nothing. When the source cannot answer
    ldk-node creates the wallet at genesis: so the node is first built (never started) against
    a closed loopback port, which saves that wallet; the real build then loads it and syncs
    it from genesis. Only for a node with no storage yet; True when it did so.
    """
    chain = settings.chain
    if not chain.bitcoind_host or (settings.storage_dir / STORE_FILE).exists():
        return False
    closed = dataclasses.replace(chain, bitcoind_host="127.0.0.1", bitcoind_port=free_port())
    build_node(dataclasses.replace(settings, chain=closed), mnemonic)
    return True


def ldk_node_factory(config: Config, *, rescan: bool = False) -> Callable[[str], LightningNode]:
    """The daemon's node factory: settings from config, storage under the daemon's data dir.

    `rescan`: the words were restored, so a node built for the first time looks for the coins
    they held before (`start_wallet_at_genesis`)."""

    def make(mnemonic: str) -> LightningNode:
        port = config.wallet_listen_port or free_port()
        settings = NodeSettings(
            network=config.wallet_network,
            storage_dir=config.paths.data_dir / "wallet" / "ldk",
            listen_port=port,
            chain=ChainSource.from_config(config),
            trusted_peers_no_reserve=split_list(config.wallet_trusted_peers_no_reserve),
            lsp=config.wallet_lsp or None,
            lsp_token=config.wallet_lsp_token or None,
            lsp_trusted_no_reserve=config.wallet_lsp_trusted,
            rgs_url=config.wallet_rgs_url,
        )
        if rescan:
            try:
                start_wallet_at_genesis(settings, mnemonic)
            except ldk_module().BuildError as exc:
                raise NodeError(f"cannot build the node ({type(exc).__name__})") from None
        return LdkNode(settings, mnemonic)

    return make
