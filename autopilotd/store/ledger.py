"""The wallet ledger: what was paid and received, keyed by payment hash (RELIABILITY M1–M9).

Rules it enforces:
- the payment hash is the idempotency key (`UNIQUE`): a second send of an invoice finds the
  first row and returns its result instead of paying again;
- a send's intent row is written before the node is asked to pay, and it reserves amount +
  max fee in the same `BEGIN IMMEDIATE` transaction as the balance check, so concurrent sends
  cannot overdraw;
- inbound payments are recorded once per hash, only when the node reports them settled and
  the preimage hashes to the payment hash.
Balances are never computed from here: they come from the node.

`settled_in` is what the provider's settlement unit of work reads, in its own transaction,
to bind a job to the wallet's own record of the payment.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from autopilotd.errors import UserError
from autopilotd.store.db import Row, Sql
from autopilotd.vocab import PaymentDirection, PaymentStatus

COLUMNS = (
    "seq, payment_hash, direction, status, amount_msat, fee_msat, max_fee_msat, reserved_msat, "
    "bolt11, description, preimage, failure, created_at, updated_at"
)


class InsufficientFunds(UserError):
    code = -32013


@dataclass(frozen=True)
class PaymentRow:
    seq: int
    payment_hash: str
    direction: PaymentDirection
    status: PaymentStatus
    amount_msat: int
    fee_msat: int | None
    max_fee_msat: int | None
    reserved_msat: int
    bolt11: str | None
    description: str
    preimage: str | None
    failure: str | None
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: Row) -> PaymentRow:
        values = list(row)
        values[2], values[3] = PaymentDirection(values[2]), PaymentStatus(values[3])
        return cls(*values)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["direction"], data["status"] = self.direction.value, self.status.value
        data["amount_sats"] = self.amount_msat // 1000
        data["fee_sats"] = None if self.fee_msat is None else -(-self.fee_msat // 1000)
        return data


def preimage_matches(preimage: str | None, payment_hash: str) -> bool:
    if not preimage:
        return False
    try:
        return hashlib.sha256(bytes.fromhex(preimage)).hexdigest() == payment_hash.lower()
    except ValueError:
        return False


class Ledger:
    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    async def get(self, payment_hash: str) -> PaymentRow | None:
        row = await self._sql.fetchone(
            f"SELECT {COLUMNS} FROM wallet_payments WHERE payment_hash = ?", (payment_hash,)
        )
        return None if row is None else PaymentRow.from_row(row)

    async def settled_in(self, payment_hash: str) -> PaymentRow | None:
        """The settled inbound payment with this hash, if the wallet has recorded one."""
        row = await self.get(payment_hash)
        ok = row is not None and row.direction is PaymentDirection.IN
        return row if ok and row is not None and row.status is PaymentStatus.SUCCEEDED else None

    async def record_invoice(
        self,
        payment_hash: str,
        bolt11: str,
        amount_msat: int | None,
        description: str,
        expires_at: float,
        lsp_fee_msat: int = 0,
    ) -> None:
        async with self._sql.write() as tx:
            await tx.execute(
                "INSERT OR IGNORE INTO wallet_invoices (payment_hash, bolt11, amount_msat, "
                "description, created_at, expires_at, lsp_fee_msat) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    payment_hash,
                    bolt11,
                    amount_msat,
                    description,
                    time.time(),
                    expires_at,
                    lsp_fee_msat,
                ),
            )

    async def invoice(self, payment_hash: str) -> dict[str, Any] | None:
        row = await self._sql.fetchone(
            "SELECT payment_hash, bolt11, amount_msat, description, created_at, expires_at, "
            "lsp_fee_msat FROM wallet_invoices WHERE payment_hash = ?",
            (payment_hash,),
        )
        if row is None:
            return None
        keys = (
            "payment_hash",
            "bolt11",
            "amount_msat",
            "description",
            "created_at",
            "expires_at",
            "lsp_fee_msat",
        )
        return dict(zip(keys, row, strict=True))

    async def begin_send(
        self,
        *,
        payment_hash: str,
        bolt11: str,
        amount_msat: int,
        max_fee_msat: int,
        description: str,
        spendable_msat: Callable[[], Awaitable[int]],
    ) -> tuple[PaymentRow, bool]:
        """Write the intent and reserve, or find the earlier attempt. Returns (row, is_new).

        One `BEGIN IMMEDIATE` transaction reads the node's spendable amount, subtracts every open
        reservation and reserves amount + max fee, so two sends can never both pass the check
        with the same sats, and no settlement can slip in between the read and the reserve.
        A failed earlier attempt may be retried; any other earlier row is returned as it is.
        """
        need = amount_msat + max_fee_msat
        now = time.time()
        async with self._sql.write() as tx:
            ledger = Ledger(tx)
            existing = await ledger.get(payment_hash)
            if existing is not None and (
                existing.direction is PaymentDirection.IN
                or existing.status is not PaymentStatus.FAILED
            ):
                return existing, False
            reserved = await ledger.reserved_msat()
            available = await spendable_msat() - reserved
            if need > available:
                raise InsufficientFunds(
                    f"not enough to send {amount_msat // 1000} sats with up to "
                    f"{-(-max_fee_msat // 1000)} sats fee: {max(available, 0) // 1000} sats "
                    "are spendable now",
                    data={"spendable_msat": max(available, 0), "needed_msat": need},
                )
            if existing is None:
                await tx.execute(
                    "INSERT INTO wallet_payments (payment_hash, direction, status, amount_msat, "
                    "max_fee_msat, reserved_msat, bolt11, description, created_at, updated_at) "
                    "VALUES (?, 'out', 'intent', ?, ?, ?, ?, ?, ?, ?)",
                    (payment_hash, amount_msat, max_fee_msat, need, bolt11, description, now, now),
                )
            else:
                await tx.execute(
                    "UPDATE wallet_payments SET status = 'intent', amount_msat = ?, "
                    "max_fee_msat = ?, reserved_msat = ?, failure = NULL, fee_msat = NULL, "
                    "updated_at = ? WHERE payment_hash = ?",
                    (amount_msat, max_fee_msat, need, now, payment_hash),
                )
            created = await ledger.get(payment_hash)
        assert created is not None
        return created, True

    async def mark_pending(self, payment_hash: str) -> None:
        async with self._sql.write() as tx:
            await tx.execute(
                "UPDATE wallet_payments SET status = 'pending', updated_at = ? "
                "WHERE payment_hash = ? AND status = 'intent'",
                (time.time(), payment_hash),
            )

    async def settle_out(
        self,
        payment_hash: str,
        *,
        succeeded: bool,
        fee_msat: int | None = None,
        preimage: str | None = None,
        failure: str | None = None,
    ) -> PaymentRow | None:
        """Record a send's outcome and release its reservation. Idempotent per outcome.

        A success must carry a preimage that hashes to the payment hash (M9); one that does
        not is recorded as `unknown` (reservation kept) and reported, never as paid.
        """
        status = PaymentStatus.SUCCEEDED if succeeded else PaymentStatus.FAILED
        reserved_sql = "0"
        if succeeded and not preimage_matches(preimage, payment_hash):
            status, failure, reserved_sql = (
                PaymentStatus.UNKNOWN,
                "the node reported success without a valid preimage",
                "reserved_msat",
            )
        async with self._sql.write() as tx:
            await tx.execute(
                f"UPDATE wallet_payments SET status = ?, fee_msat = COALESCE(?, fee_msat), "
                f"preimage = COALESCE(?, preimage), failure = ?, reserved_msat = {reserved_sql}, "
                "updated_at = ? WHERE payment_hash = ? AND direction = 'out' "
                "AND status != 'succeeded'",
                (status, fee_msat, preimage, failure, time.time(), payment_hash),
            )
        return await self.get(payment_hash)

    async def credit_in(
        self,
        payment_hash: str,
        amount_msat: int,
        preimage: str | None,
        description: str,
        fee_msat: int = 0,
    ) -> tuple[PaymentRow | None, bool]:
        """Record a settled inbound payment once (M5). Returns (row, newly_credited).

        `amount_msat` is what the wallet received; `fee_msat` what an LSP took from the
        payment on its way (a just-in-time channel's opening fee), shown as the row's fee.
        Refuses (returns (None, False)) when the preimage does not prove the payment (M7, M9).
        """
        if not preimage_matches(preimage, payment_hash):
            return None, False
        now = time.time()
        async with self._sql.write() as tx:
            inserted = (
                await tx.execute(
                    "INSERT OR IGNORE INTO wallet_payments (payment_hash, direction, status, "
                    "amount_msat, fee_msat, preimage, description, created_at, updated_at) "
                    "VALUES (?, 'in', 'succeeded', ?, ?, ?, ?, ?, ?)",
                    (payment_hash, amount_msat, fee_msat or None, preimage, description, now, now),
                )
                == 1
            )
        return await self.get(payment_hash), inserted

    async def open_sends(self) -> list[PaymentRow]:
        rows = await self._sql.fetchall(
            f"SELECT {COLUMNS} FROM wallet_payments WHERE direction = 'out' "
            "AND status IN ('intent', 'pending', 'unknown') ORDER BY seq"
        )
        return [PaymentRow.from_row(r) for r in rows]

    async def reserved_msat(self) -> int:
        """Amount + max fee of every send still open: not spendable until each settles."""
        row = await self._sql.fetchone(
            "SELECT COALESCE(SUM(reserved_msat), 0) FROM wallet_payments "
            "WHERE direction = 'out' AND status IN ('intent', 'pending', 'unknown')"
        )
        return int(row[0]) if row else 0

    async def history(self, *, limit: int, before_seq: int | None) -> list[PaymentRow]:
        """Newest first, by the ledger's own sequence: the same order before and after restarts."""
        if before_seq is None:
            rows = await self._sql.fetchall(
                f"SELECT {COLUMNS} FROM wallet_payments ORDER BY seq DESC LIMIT ?", (limit,)
            )
        else:
            rows = await self._sql.fetchall(
                f"SELECT {COLUMNS} FROM wallet_payments WHERE seq < ? ORDER BY seq DESC LIMIT ?",
                (before_seq, limit),
            )
        return [PaymentRow.from_row(r) for r in rows]

    async def last_payment(self) -> PaymentRow | None:
        rows = await self.history(limit=1, before_seq=None)
        return rows[0] if rows else None
