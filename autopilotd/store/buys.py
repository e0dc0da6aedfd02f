"""Our own requests as a buyer, keyed by the request event id (buyer/service.py)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from autopilotd.store.db import Row, Sql
from autopilotd.vocab import BuyStatus

COLUMNS = (
    "request_id, kind, prompt, budget_msat, status, provider, result, payment_hash, reason, "
    "created_at, updated_at, deadline_at"
)
SETTABLE = frozenset({"status", "provider", "result", "payment_hash", "reason"})


@dataclass(frozen=True)
class BuyRequest:
    request_id: str
    kind: int
    prompt: str
    budget_msat: int
    status: BuyStatus
    provider: str | None
    result: str | None
    payment_hash: str | None
    reason: str | None
    created_at: float
    updated_at: float
    deadline_at: float

    @classmethod
    def from_row(cls, row: Row) -> BuyRequest:
        values = list(row)
        values[4] = BuyStatus(values[4])
        return cls(*values)

    @property
    def finished(self) -> bool:
        return self.status in (BuyStatus.DONE, BuyStatus.FAILED, BuyStatus.EXPIRED)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        data["budget_sats"] = self.budget_msat // 1000
        return data


@dataclass(frozen=True)
class BuyCounts:
    open: int  # open or paying
    paid: int  # paid or done
    last: BuyRequest | None


class BuyRequests:
    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    async def add(
        self,
        *,
        request_id: str,
        kind: int,
        prompt: str,
        budget_msat: int,
        now: float,
        deadline: float,
    ) -> None:
        async with self._sql.write() as tx:
            await tx.execute(
                f"INSERT INTO buy_requests ({COLUMNS}) "
                "VALUES (?, ?, ?, ?, 'open', NULL, NULL, NULL, NULL, ?, ?, ?)",
                (request_id, kind, prompt, budget_msat, now, now, deadline),
            )

    async def get(self, request_id: str) -> BuyRequest | None:
        row = await self._sql.fetchone(
            f"SELECT {COLUMNS} FROM buy_requests WHERE request_id = ?", (request_id,)
        )
        return None if row is None else BuyRequest.from_row(row)

    async def update(self, request_id: str, **fields: Any) -> BuyRequest:
        unknown = set(fields) - SETTABLE
        if unknown:
            raise ValueError(f"cannot set {unknown}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        async with self._sql.write() as tx:
            await tx.execute(
                f"UPDATE buy_requests SET {sets}, updated_at = ? WHERE request_id = ?",
                (*fields.values(), time.time(), request_id),
            )
            row = await BuyRequests(tx).get(request_id)
        assert row is not None
        return row

    async def history(self, limit: int) -> list[BuyRequest]:
        rows = await self._sql.fetchall(
            f"SELECT {COLUMNS} FROM buy_requests ORDER BY created_at DESC LIMIT ?", (limit,)
        )
        return [BuyRequest.from_row(r) for r in rows]

    async def counts(self) -> BuyCounts:
        rows = await self._sql.fetchall("SELECT status, COUNT(*) FROM buy_requests GROUP BY status")
        by = {BuyStatus(r[0]): int(r[1]) for r in rows}
        last = await self.history(1)
        return BuyCounts(
            open=by.get(BuyStatus.OPEN, 0) + by.get(BuyStatus.PAYING, 0),
            paid=by.get(BuyStatus.PAID, 0) + by.get(BuyStatus.DONE, 0),
            last=last[0] if last else None,
        )

    async def followed(self, now: float) -> list[BuyRequest]:
        """Requests still followed: unfinished ones, and finished ones until their deadline."""
        rows = await self._sql.fetchall(
            f"SELECT {COLUMNS} FROM buy_requests WHERE status IN ('open', 'paying', 'paid') "
            "OR deadline_at > ?",
            (now,),
        )
        return [BuyRequest.from_row(r) for r in rows]

    async def nip90_payments(self, start: float, end: float) -> list[dict[str, Any]]:
        """Our sends for NIP-90 jobs between start and end, from the wallet ledger (a report:
        a read-only join of our requests with the wallet's own records of what it sent)."""
        rows = await self._sql.fetchall(
            "SELECT b.request_id, b.provider, w.payment_hash, w.status, w.amount_msat, "
            "w.fee_msat, w.updated_at FROM buy_requests b JOIN wallet_payments w "
            "ON w.payment_hash = b.payment_hash WHERE w.direction = 'out' "
            "AND w.updated_at >= ? AND w.updated_at < ? ORDER BY w.seq",
            (start, end),
        )
        keys = ("request_id", "provider", "payment_hash", "status", "amount_msat", "fee_msat", "at")
        return [dict(zip(keys, r, strict=True)) for r in rows]
