"""The Lightning node port: what the wallet service needs from a node, in our own types.

The real adapter wraps ldk-node (`ldk_adapter.py`); `fake.py` is an in-memory stand-in for
fast unit tests only. Amounts are millisatoshis; payment hashes are lower-case hex.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from autopilotd.ports.onchain import ChannelInfo, Destination, OnchainTx, Quote

Direction = Literal["in", "out"]
NodeStatus = Literal["pending", "succeeded", "failed"]


class NodeError(Exception):
    """The node refused or failed an operation; `reason` is a short, user-safe text."""

    def __init__(self, reason: str, *, kind: str = "node_error") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


@dataclass(frozen=True)
class Balances:
    lightning_sats: int  # what the channels hold for us
    spendable_msat: int  # what we can send now (usable channels' outbound capacity)
    receivable_msat: int  # what we can receive now (usable channels' inbound capacity)
    onchain_sats: int
    onchain_spendable_sats: int
    pending_sats: int  # on-chain funds not yet spendable (closures, unconfirmed)


@dataclass(frozen=True)
class Invoice:
    bolt11: str
    payment_hash: str
    amount_msat: int | None
    description: str
    expires_at: int  # unix seconds
    network: str


@dataclass(frozen=True)
class NodePayment:
    payment_hash: str
    direction: Direction
    status: NodeStatus
    amount_msat: int | None
    fee_msat: int | None
    preimage: str | None
    updated_at: int
    skimmed_fee_msat: int = 0
    """An inbound payment over a just-in-time channel: the LSP's opening fee, taken from it."""


@dataclass(frozen=True)
class JitInvoice:
    """An invoice whose payment opens a channel from the LSP, which takes `lsp_fee_msat` of it."""

    invoice: Invoice
    lsp_fee_msat: int


@dataclass(frozen=True)
class PaymentReceived:
    payment_hash: str
    amount_msat: int


@dataclass(frozen=True)
class PaymentSucceeded:
    payment_hash: str
    preimage: str | None
    fee_msat: int | None


@dataclass(frozen=True)
class PaymentFailed:
    payment_hash: str | None
    reason: str


@dataclass(frozen=True)
class OtherEvent:
    kind: str


NodeEvent = PaymentReceived | PaymentSucceeded | PaymentFailed | OtherEvent


class LightningNode(Protocol):
    network: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def node_id(self) -> str: ...

    def listening(self) -> str:
        """host:port where Lightning peers reach this node."""
        ...

    async def sync(self) -> None: ...

    async def connect(self, node_id: str, address: str) -> None:
        """Connect to a peer and keep reconnecting to it after restarts."""
        ...

    async def balances(self) -> Balances: ...

    async def create_invoice(
        self, amount_msat: int, description: str, expiry_s: int
    ) -> Invoice: ...

    async def create_jit_invoice(
        self, amount_msat: int, description: str, expiry_s: int, max_lsp_fee_msat: int
    ) -> JitInvoice:
        """An invoice over a just-in-time channel from the configured LSP (LSPS2).

        Raises NodeError (kind `LiquidityFeeTooHigh`, `LiquidityRequestFailed`,
        `LiquiditySourceUnavailable`, `ConnectionFailed` …) when the LSP cannot sell one.
        """
        ...

    def decode(self, bolt11: str) -> Invoice: ...

    async def pay(self, bolt11: str, amount_msat: int | None, max_fee_msat: int) -> None:
        """Start paying; the outcome arrives as an event and in `payment()`."""
        ...

    async def payment(self, payment_hash: str) -> NodePayment | None: ...

    async def payments(self) -> list[NodePayment]: ...

    async def next_event(self) -> NodeEvent: ...

    async def event_handled(self) -> None: ...

    async def wait_saved(self, timeout_s: float) -> bool:
        """Wait until the node has saved its channel state since its last channel update.

        A node killed before that may close the channel on its next start (LDK's stale
        channel manager, docs/wallet.md). True once saved, False if not within `timeout_s`.
        """
        ...

    async def onchain_address(self) -> str: ...

    # -- on-chain money (fee rates in sat/vB) -------------------------------------------------

    async def quote_send(self, dest: Destination, amount_sats: int, fee_rate: int) -> Quote:
        """What sending `amount_sats` to `dest` will cost, before sending: the amount exactly,
        the fee exactly or as the most it can be.

        Raises NodeError (kind `InsufficientFunds`) when the spendable on-chain balance cannot
        pay the amount and the least fee it needs.
        """
        ...

    async def quote_sweep(
        self, dest: Destination, fee_rate: int, incoming: Sequence[int | None] = ()
    ) -> Quote:
        """What sending every on-chain coin to `dest` will move and cost, counting the coins
        still to arrive (`incoming`: what each channel close pays; None: not known yet).

        Raises NodeError (kind `InsufficientFunds`) when what is left after the fee would be
        below the dust limit.
        """
        ...

    async def send_onchain(self, dest: Destination, amount_sats: int, fee_rate: int) -> str:
        """Build, sign and broadcast a send of exactly `amount_sats`; returns its txid."""
        ...

    async def sweep_onchain(self, dest: Destination, fee_rate: int) -> str:
        """Send every on-chain coin to `dest` (keeping what open channels need); its txid."""
        ...

    async def onchain_txs(self) -> list[OnchainTx]:
        """The node's record of its on-chain transactions (it records one once a block holds
        it, or once the chain source reports it)."""
        ...

    async def channels(self) -> list[ChannelInfo]: ...

    async def close_channel(self, channel: ChannelInfo) -> None:
        """Start a cooperative close (the closing transaction pays each side its balance)."""
        ...

    async def closes_pending(self) -> int:
        """Channels still open or closing whose money is not yet a coin of the on-chain wallet."""
        ...
