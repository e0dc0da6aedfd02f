"""An in-memory Lightning node for fast unit tests of the wallet service and ledger.

Never used by the daemon, the demo or the end-to-end tests: those run the real ldk-node on
the devnet. Two fakes on one `FakeNetwork` can pay each other; fees and failures are set by
the test.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from embit import bech32

from autopilotd.ports.lightning import (
    Balances,
    Invoice,
    JitInvoice,
    NodeError,
    NodeEvent,
    NodePayment,
    PaymentFailed,
    PaymentReceived,
    PaymentSucceeded,
)
from autopilotd.ports.onchain import ChannelInfo, Destination, OnchainTx, Quote


@dataclass
class FakeNetwork:
    nodes: dict[str, FakeNode] = field(default_factory=dict)
    invoices: dict[str, tuple[str, Invoice, str]] = field(
        default_factory=dict
    )  # hash → owner, inv, preimage
    fee_msat: int = 1000
    jit_fees: dict[str, int] = field(default_factory=dict)  # hash → what the LSP takes


class FakeNode:
    network = "regtest"

    def __init__(self, net: FakeNetwork, name: str, balance_msat: int) -> None:
        self._net = net
        self._id = "02" + hashlib.sha256(name.encode()).hexdigest()
        self.balance_msat = balance_msat
        self._payments: dict[str, NodePayment] = {}
        self._events: asyncio.Queue[NodeEvent] = asyncio.Queue()
        self._unacked: NodeEvent | None = None
        self.sends = 0
        self.hold = asyncio.Event()
        self.hold.set()
        self.receivable_msat = 10**12  # inbound capacity; 0 for a wallet with no channel
        self.lsp_fee_msat: int | None = None  # an LSP's opening fee; None: no LSP
        # On chain: coins (sats), a record of transactions, channels a cash-out can close.
        self.coins: list[int] = []
        self.record: list[OnchainTx] = []
        self.height = 100
        self.onchain_sends = 0
        self.fail_onchain: NodeError | None = None  # the next send, sweep or close raises it
        self.open_channels: list[ChannelInfo] = []
        self.closing: list[ChannelInfo] = []
        net.nodes[self._id] = self

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def node_id(self) -> str:
        return self._id

    def listening(self) -> str:
        return "127.0.0.1:9735"

    async def sync(self) -> None:
        return None

    async def connect(self, node_id: str, address: str) -> None:
        return None

    async def balances(self) -> Balances:
        return Balances(
            lightning_sats=self.balance_msat // 1000,
            spendable_msat=self.balance_msat,
            receivable_msat=self.receivable_msat,
            onchain_sats=sum(self.coins),
            onchain_spendable_sats=sum(self.coins),
            pending_sats=0,
        )

    async def create_jit_invoice(
        self, amount_msat: int, description: str, expiry_s: int, max_lsp_fee_msat: int
    ) -> JitInvoice:
        if self.lsp_fee_msat is None:
            raise NodeError("no LSP", kind="LiquiditySourceUnavailable")
        if self.lsp_fee_msat > max_lsp_fee_msat:
            raise NodeError("fee too high", kind="LiquidityFeeTooHigh")
        if self.lsp_fee_msat >= amount_msat:
            raise NodeError("too small", kind="LiquidityRequestFailed")
        inv = await self.create_invoice(amount_msat, description, expiry_s)
        self._net.jit_fees[inv.payment_hash] = self.lsp_fee_msat
        return JitInvoice(inv, self.lsp_fee_msat)

    async def create_invoice(self, amount_msat: int, description: str, expiry_s: int) -> Invoice:
        preimage = secrets.token_hex(32)
        payment_hash = hashlib.sha256(bytes.fromhex(preimage)).hexdigest()
        inv = Invoice(
            bolt11=f"lnbcrt{amount_msat}fake1{payment_hash}",
            payment_hash=payment_hash,
            amount_msat=amount_msat,
            description=description,
            expires_at=int(time.time()) + expiry_s,
            network=self.network,
        )
        self._net.invoices[payment_hash] = (self._id, inv, preimage)
        return inv

    def decode(self, bolt11: str) -> Invoice:
        payment_hash = bolt11.rsplit("fake1", 1)[-1]
        if payment_hash not in self._net.invoices:
            raise NodeError("not a valid BOLT11 invoice", kind="invalid_invoice")
        return self._net.invoices[payment_hash][1]

    async def pay(self, bolt11: str, amount_msat: int | None, max_fee_msat: int) -> None:
        inv = self.decode(bolt11)
        if (
            inv.payment_hash in self._payments
            and self._payments[inv.payment_hash].status != "failed"
        ):
            raise NodeError("this invoice was already paid or is being paid", kind="duplicate")
        self.sends += 1
        amount = inv.amount_msat or amount_msat or 0
        pending = NodePayment(
            inv.payment_hash, "out", "pending", amount, None, None, int(time.time())
        )
        self._payments[inv.payment_hash] = pending
        await self.hold.wait()
        owner, _, preimage = self._net.invoices[inv.payment_hash]
        fee = self._net.fee_msat
        if fee > max_fee_msat or amount + fee > self.balance_msat:
            self._payments[inv.payment_hash] = replace(pending, status="failed")
            await self._events.put(PaymentFailed(inv.payment_hash, "RouteNotFound"))
            return
        self.balance_msat -= amount + fee
        receiver = self._net.nodes[owner]
        receiver.balance_msat += amount
        skimmed = self._net.jit_fees.get(inv.payment_hash, 0)
        receiver._payments[inv.payment_hash] = NodePayment(
            inv.payment_hash,
            "in",
            "succeeded",
            amount - skimmed,
            None,
            preimage,
            int(time.time()),
            skimmed_fee_msat=skimmed,
        )
        await receiver._events.put(PaymentReceived(inv.payment_hash, amount - skimmed))
        self._payments[inv.payment_hash] = replace(
            pending, status="succeeded", fee_msat=fee, preimage=preimage
        )
        await self._events.put(PaymentSucceeded(inv.payment_hash, preimage, fee))

    async def payment(self, payment_hash: str) -> NodePayment | None:
        return self._payments.get(payment_hash)

    async def payments(self) -> list[NodePayment]:
        return list(self._payments.values())

    async def next_event(self) -> NodeEvent:
        if self._unacked is None:
            self._unacked = await self._events.get()
        return self._unacked

    async def event_handled(self) -> None:
        self._unacked = None

    async def wait_saved(self, timeout_s: float) -> bool:
        return True

    async def onchain_address(self) -> str:
        return str(bech32.encode("bcrt", 0, secrets.token_bytes(20)))

    # -- on chain: a simple exact fee model (rate × size), coins spent largest first ----------

    def deposit(self, sats: int) -> str:
        """Coins arrive (unconfirmed until `mine`)."""
        txid = secrets.token_hex(32)
        self.coins.append(sats)
        self.record.append(OnchainTx(txid, "in", sats, 0, None))
        return txid

    def mine(self) -> None:
        """A block: every recorded transaction confirms; closing channels pay out."""
        self.height += 1
        self.record = [t if t.height else replace(t, height=self.height) for t in self.record]
        for ch in self.closing:
            if ch.returns_sats:
                self.coins.append(ch.returns_sats)
                txid = secrets.token_hex(32)
                self.record.append(OnchainTx(txid, "in", ch.returns_sats, 0, self.height))
        self.closing = []

    def add_channel(self, balance_sats: int, *, opened_by_us: bool = False) -> ChannelInfo:
        channel = ChannelInfo(
            channel_id=secrets.token_hex(32),
            user_channel_id=str(secrets.randbits(64)),
            peer_id="02" + secrets.token_hex(32),
            opened_by_us=opened_by_us,
            usable=True,
            balance_sats=balance_sats,
            returns_sats=None if opened_by_us else balance_sats if balance_sats > 354 else 0,
        )
        self.open_channels.append(channel)
        return channel

    def _select(self, amount: int, fee_rate: int, out_vbytes: int) -> tuple[list[int], int]:
        chosen: list[int] = []
        for coin in sorted(self.coins, reverse=True):
            chosen.append(coin)
            fee = fee_rate * (11 + 68 * len(chosen) + out_vbytes + 31)
            if sum(chosen) >= amount + fee:
                return chosen, fee
        raise NodeError("not enough funds or channel capacity", kind="InsufficientFunds")

    async def quote_send(self, dest: Destination, amount_sats: int, fee_rate: int) -> Quote:
        chosen, fee = self._select(amount_sats, fee_rate, dest.output_vbytes)
        return Quote(amount_sats, fee, True, len(chosen))

    async def quote_sweep(
        self, dest: Destination, fee_rate: int, incoming: Sequence[int | None] = ()
    ) -> Quote:
        arriving = [s for s in incoming if s is None or s > 0]
        coins = len(self.coins) + len(arriving)
        if coins == 0:
            raise NodeError("there is nothing on chain to send", kind="InsufficientFunds")
        fee = fee_rate * (11 + 68 * coins + dest.output_vbytes)
        if any(s is None for s in arriving):
            return Quote(None, fee, False, coins)
        amount = sum(self.coins) + sum(s for s in arriving if s is not None) - fee
        if amount < dest.dust_sats:
            raise NodeError("what is left is dust", kind="InsufficientFunds")
        return Quote(amount, fee, True, coins)

    def _take_failure(self) -> None:
        failure, self.fail_onchain = self.fail_onchain, None
        if failure is not None:
            raise failure

    async def send_onchain(self, dest: Destination, amount_sats: int, fee_rate: int) -> str:
        self._take_failure()
        chosen, fee = self._select(amount_sats, fee_rate, dest.output_vbytes)
        for coin in chosen:
            self.coins.remove(coin)
        if sum(chosen) - amount_sats - fee > 0:
            self.coins.append(sum(chosen) - amount_sats - fee)
        self.onchain_sends += 1
        txid = secrets.token_hex(32)
        self.record.append(OnchainTx(txid, "out", amount_sats, fee, None))
        return txid

    async def sweep_onchain(self, dest: Destination, fee_rate: int) -> str:
        self._take_failure()
        quote = await self.quote_sweep(dest, fee_rate)
        assert quote.amount_sats is not None
        self.coins = []
        self.onchain_sends += 1
        txid = secrets.token_hex(32)
        self.record.append(OnchainTx(txid, "out", quote.amount_sats, quote.fee_sats, None))
        return txid

    async def onchain_txs(self) -> list[OnchainTx]:
        return list(self.record)

    async def channels(self) -> list[ChannelInfo]:
        return list(self.open_channels)

    async def close_channel(self, channel: ChannelInfo) -> None:
        self._take_failure()
        self.open_channels.remove(channel)
        self.closing.append(channel)

    async def closes_pending(self) -> int:
        return len(self.open_channels) + len(self.closing)
