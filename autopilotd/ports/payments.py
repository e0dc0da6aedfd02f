"""The wallet as the provider and the buyer see it: `Payments` (get paid) and `Payer` (pay).

The wallet service implements both over its Lightning node and ledger, with all of the money
rules (RELIABILITY M1–M9): a payment is only ever reported settled when the wallet's own node
says so, bound by payment hash. Nothing here is proof of payment but the wallet's own record.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from autopilotd.vocab import PaymentStatus


@dataclass(frozen=True)
class IssuedInvoice:
    bolt11: str
    payment_hash: str
    amount_msat: int
    expires_at: int
    lsp_fee_msat: int = 0
    """Paid over a just-in-time channel: the LSP's opening fee, which it takes from the
    payment (the wallet receives `amount_msat - lsp_fee_msat`)."""


@dataclass(frozen=True)
class SettledPayment:
    """An inbound payment the wallet recorded as settled (its preimage checked)."""

    payment_hash: str
    amount_msat: int  # what the wallet received


@dataclass(frozen=True)
class DecodedInvoice:
    payment_hash: str
    amount_msat: int | None
    description: str
    expires_at: int
    network: str


@dataclass(frozen=True)
class PayOutcome:
    """What became of one send, as the wallet's ledger records it after the call."""

    payment_hash: str
    status: PaymentStatus
    amount_msat: int
    fee_msat: int | None
    failure: str | None
    repeated: bool
    """True when this invoice had been paid (or tried) before: nothing new was sent."""

    @property
    def settled(self) -> bool:
        return self.status is PaymentStatus.SUCCEEDED


class Payments(Protocol):
    """How the provider gets paid."""

    async def create_invoice(
        self, amount_msat: int, description: str, expiry_s: int
    ) -> IssuedInvoice:
        """A BOLT11 invoice of this wallet. Raises NotReady or UserError (errors.py)."""
        ...

    async def lsp_fee_msat(self, payment_hash: str) -> int:
        """The LSP's agreed fee for this invoice when it goes over a just-in-time channel;
        0 for an invoice over the wallet's channels (or one it does not know)."""
        ...

    def settlements(self) -> AsyncIterator[SettledPayment]:
        """Each inbound payment the wallet records as settled from now on, in order.

        The stream is registered when this is called (not at the first iteration), so a
        caller that then checks what settled before misses nothing in between.
        """
        ...


class Payer(Protocol):
    """How the buyer pays."""

    def check_ready(self) -> None:
        """Raise NotReady, with the wallet's state and reason, unless it can pay now."""
        ...

    def decode_invoice(self, bolt11: str) -> DecodedInvoice:
        """What an invoice asks for. Raises UserError for an invalid one, NotReady before the
        wallet is ready."""
        ...

    async def pay_invoice(self, bolt11: str, *, description: str) -> PayOutcome:
        """Pay once (paying again returns the first outcome). Raises UserError when the
        payment cannot be made as asked (insufficient funds, expired, wrong network …)."""
        ...
