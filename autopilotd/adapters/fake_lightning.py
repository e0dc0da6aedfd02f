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
from dataclasses import dataclass, field, replace

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
            onchain_sats=0,
            onchain_spendable_sats=0,
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
        return "bcrt1qfakeaddress"
