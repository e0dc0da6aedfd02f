"""The Nexus's repositories: sessions, the NIP-98 replay cache, starter offers, receipts.

A step that spans tables is one transaction: a new offer with the checks that allow it, its
session's dispatch time and its receipt (`Offers.lease`), a status change with its receipt
(`Offers.transition`), so the budget ledger never misses what an offer did, even across a
crash, and two dispatches cannot both take the last room in the budget.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from typing import Any

from autopilotd.store.db import Row, Sql
from autopilotd.vocab import LIVE_OFFER_STATUSES, OfferStatus


@dataclass(frozen=True)
class Session:
    id: str
    pubkey: str
    token_hash: str
    client_id: str
    created_at: float
    expires_at: float
    last_dispatch_at: float | None


class Sessions:
    COLUMNS = "id, pubkey, token_hash, client_id, created_at, expires_at, last_dispatch_at"

    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    async def add(self, session: Session) -> None:
        async with self._sql.write() as tx:
            await tx.execute(
                f"INSERT INTO nexus_sessions ({self.COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                tuple(asdict(session).values()),
            )

    async def by_token_hash(self, token_hash: str) -> Session | None:
        row = await self._sql.fetchone(
            f"SELECT {self.COLUMNS} FROM nexus_sessions WHERE token_hash = ?", (token_hash,)
        )
        return None if row is None else Session(*row)

    async def get(self, session_id: str) -> Session | None:
        row = await self._sql.fetchone(
            f"SELECT {self.COLUMNS} FROM nexus_sessions WHERE id = ?", (session_id,)
        )
        return None if row is None else Session(*row)

    async def live_pubkeys(self, now: float) -> dict[str, float]:
        """Each pubkey with a live session, and when its last session expires."""
        rows = await self._sql.fetchall(
            "SELECT pubkey, MAX(expires_at) FROM nexus_sessions WHERE expires_at > ? "
            "GROUP BY pubkey",
            (now,),
        )
        return {str(r[0]): float(r[1]) for r in rows}

    async def count_live(self, now: float) -> int:
        row = await self._sql.fetchone(
            "SELECT COUNT(*) FROM nexus_sessions WHERE expires_at > ?", (now,)
        )
        return int(row[0]) if row else 0


class AuthSeen:
    """Each NIP-98 event id is accepted once (kept for twice the validity window)."""

    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    async def first_use(self, event_id: str, now: float, keep_s: float) -> bool:
        async with self._sql.write() as tx:
            await tx.execute("DELETE FROM nexus_auth_seen WHERE seen_at < ?", (now - keep_s,))
            inserted = await tx.execute(
                "INSERT OR IGNORE INTO nexus_auth_seen (event_id, seen_at) VALUES (?, ?)",
                (event_id, now),
            )
        return inserted == 1


OFFER_COLUMNS = (
    "id, seq, session_id, provider, kind, prompt, price_msat, status, reason, request_id, "
    "request_json, payment_hash, bolt11, created_at, start_confirm_by, execution_started_at, "
    "execution_expires_at, last_heartbeat_at, next_heartbeat_due_at, paid_at, updated_at"
)
SETTABLE = frozenset(
    {
        "status",
        "reason",
        "request_id",
        "request_json",
        "payment_hash",
        "bolt11",
        "execution_started_at",
        "execution_expires_at",
        "last_heartbeat_at",
        "next_heartbeat_due_at",
        "paid_at",
    }
)
_LIVE = ", ".join(f"'{s.value}'" for s in sorted(LIVE_OFFER_STATUSES))


@dataclass(frozen=True)
class Offer:
    id: str
    seq: int
    session_id: str
    provider: str
    kind: int
    prompt: str
    price_msat: int
    status: OfferStatus
    reason: str | None
    request_id: str | None
    request_json: str | None
    payment_hash: str | None
    bolt11: str | None
    created_at: float
    start_confirm_by: float
    execution_started_at: float | None
    execution_expires_at: float | None
    last_heartbeat_at: float | None
    next_heartbeat_due_at: float | None
    paid_at: float | None
    updated_at: float

    @classmethod
    def from_row(cls, row: Row) -> Offer:
        values = list(row)
        values[7] = OfferStatus(values[7])
        return cls(*values)

    def to_json(self) -> dict[str, Any]:
        """What a provider is told about its offer (no invoice, no request JSON)."""
        return {
            "request_id": self.id,
            "nostr_request_id": self.request_id,
            "request_kind": self.kind,
            "execution_input": self.prompt,
            "price_sats": self.price_msat // 1000,
            "status": self.status.value,
            "reason": self.reason,
            "created_at": self.created_at,
            "start_confirm_by": self.start_confirm_by,
            "execution_started_at": self.execution_started_at,
            "execution_expires_at": self.execution_expires_at,
            "last_heartbeat_at": self.last_heartbeat_at,
            "next_heartbeat_due_at": self.next_heartbeat_due_at,
            "payment_hash": self.payment_hash,
        }


@dataclass(frozen=True)
class LeaseContext:
    """What a dispatch decides on, read in the dispatch's own transaction."""

    live: int
    """The session's live offers."""
    last_dispatch_at: float | None
    reserved_msat: int
    """The prices of every live offer."""
    paid_24h_msat: int


@dataclass(frozen=True)
class NewOffer:
    kind: int
    prompt: str
    price_msat: int
    start_confirm_by: float


@dataclass(frozen=True)
class Receipt:
    """What an offer's step adds to the receipts log (in the step's own transaction)."""

    kind: str
    pubkey: str | None = None
    amount_msat: int | None = None
    detail: str = ""


class Offers:
    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    async def _many(self, where: str, params: tuple[Any, ...] = ()) -> list[Offer]:
        rows = await self._sql.fetchall(
            f"SELECT {OFFER_COLUMNS} FROM starter_offers WHERE {where}", params
        )
        return [Offer.from_row(r) for r in rows]

    async def get(self, offer_id: str) -> Offer | None:
        found = await self._many("id = ?", (offer_id,))
        return found[0] if found else None

    async def by_request(self, request_id: str) -> Offer | None:
        found = await self._many("request_id = ?", (request_id,))
        return found[0] if found else None

    async def live_for(self, session_id: str) -> list[Offer]:
        return await self._many(
            f"session_id = ? AND status IN ({_LIVE}) ORDER BY seq", (session_id,)
        )

    async def by_payment_hash(self, payment_hash: str) -> Offer | None:
        found = await self._many("payment_hash = ?", (payment_hash,))
        return found[0] if found else None

    async def live(self) -> list[Offer]:
        return await self._many(f"status IN ({_LIVE}) ORDER BY seq")

    async def live_requests(self) -> list[str]:
        """The NIP-90 request ids of the live offers that have one."""
        rows = await self._sql.fetchall(
            f"SELECT request_id FROM starter_offers WHERE status IN ({_LIVE}) "
            "AND request_id IS NOT NULL ORDER BY request_id"
        )
        return [str(r[0]) for r in rows]

    async def due(self, now: float) -> list[Offer]:
        """Live offers past one of their deadlines at `now` (see desk._missed for which)."""
        return await self._many(
            "(status = 'awaiting_ack' AND start_confirm_by < ?) OR "
            "(status IN ('running', 'payment_failed') AND "
            "(execution_expires_at < ? OR next_heartbeat_due_at < ?)) ORDER BY seq",
            (now, now, now),
        )

    async def reserved_msat(self) -> int:
        row = await self._sql.fetchone(
            f"SELECT COALESCE(SUM(price_msat), 0) FROM starter_offers WHERE status IN ({_LIVE})"
        )
        return int(row[0]) if row else 0

    async def lease(
        self,
        session: Session,
        now: float,
        paid_since: float,
        decide: Callable[[LeaseContext], NewOffer | str | None],
    ) -> tuple[LeaseContext, str | None]:
        """One transaction: read the session's `LeaseContext`, let `decide` choose, and lease
        what it chose to the session (the offer, the session's dispatch time and a receipt).
        Returns the budget as it stands after it, and `decide`'s reason when it chose none."""
        async with self._sql.write() as tx:
            row = await tx.fetchone(
                "SELECT (SELECT COUNT(*) FROM starter_offers"
                f"  WHERE session_id = ? AND status IN ({_LIVE})),"
                " (SELECT last_dispatch_at FROM nexus_sessions WHERE id = ?),"
                " (SELECT COALESCE(SUM(price_msat), 0) FROM starter_offers"
                f"  WHERE status IN ({_LIVE})),"
                " (SELECT COALESCE(SUM(amount_msat), 0) FROM nexus_receipts"
                "  WHERE kind = 'offer.paid' AND at >= ?),"
                " (SELECT COALESCE(MAX(seq), 0) + 1 FROM starter_offers)",
                (session.id, session.id, paid_since),
            )
            assert row is not None
            context = LeaseContext(
                live=int(row[0]),
                last_dispatch_at=None if row[1] is None else float(row[1]),
                reserved_msat=int(row[2]),
                paid_24h_msat=int(row[3]),
            )
            choice = decide(context)
            if not isinstance(choice, NewOffer):
                return context, choice
            seq = int(row[4])
            offer_id = f"starter-{seq:06d}"
            await tx.execute(
                "INSERT INTO starter_offers (id, seq, session_id, provider, kind, prompt, "
                "price_msat, status, created_at, start_confirm_by, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'awaiting_ack', ?, ?, ?)",
                (
                    offer_id,
                    seq,
                    session.id,
                    session.pubkey,
                    choice.kind,
                    choice.prompt,
                    choice.price_msat,
                    now,
                    choice.start_confirm_by,
                    now,
                ),
            )
            await tx.execute(
                "UPDATE nexus_sessions SET last_dispatch_at = ? WHERE id = ?", (now, session.id)
            )
            await Receipts(tx).add(
                "offer.dispatched",
                at=now,
                offer_id=offer_id,
                pubkey=session.pubkey,
                amount_msat=choice.price_msat,
            )
        return dataclasses.replace(
            context, reserved_msat=context.reserved_msat + choice.price_msat
        ), None

    async def transition(
        self,
        offer_id: str,
        now: float,
        expect: Collection[OfferStatus],
        receipt: Receipt | None = None,
        **fields: Any,
    ) -> Offer | None:
        """Set `fields` (and log `receipt`) only if the offer's status is one of `expect`, in
        one transaction; None when it is not (someone moved it first: the caller looks again)."""
        unknown = set(fields) - SETTABLE
        if unknown:
            raise ValueError(f"cannot set {unknown}")
        sets = "".join(f", {k} = ?" for k in fields)
        statuses = ", ".join("?" for _ in expect)
        async with self._sql.write() as tx:
            row = await tx.fetchone(
                f"UPDATE starter_offers SET updated_at = ?{sets} "
                f"WHERE id = ? AND status IN ({statuses}) RETURNING {OFFER_COLUMNS}",
                (now, *fields.values(), offer_id, *(status.value for status in expect)),
            )
            if row is None:
                return None
            if receipt is not None:
                await Receipts(tx).add(
                    receipt.kind,
                    at=now,
                    offer_id=offer_id,
                    pubkey=receipt.pubkey,
                    amount_msat=receipt.amount_msat,
                    detail=receipt.detail,
                )
        return Offer.from_row(row)


class Receipts:
    """The append-only log of what the Nexus did (and the sats it committed and paid)."""

    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    async def add(
        self,
        kind: str,
        *,
        at: float,
        offer_id: str | None = None,
        pubkey: str | None = None,
        amount_msat: int | None = None,
        detail: str = "",
    ) -> None:
        async with self._sql.write() as tx:
            await tx.execute(
                "INSERT INTO nexus_receipts (at, kind, offer_id, pubkey, amount_msat, detail) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (at, kind, offer_id, pubkey, amount_msat, detail),
            )

    async def counts(self, since: float) -> dict[str, int]:
        rows = await self._sql.fetchall(
            "SELECT kind, COUNT(*) FROM nexus_receipts WHERE at >= ? GROUP BY kind", (since,)
        )
        return {str(r[0]): int(r[1]) for r in rows}

    async def paid_msat(self, since: float) -> int:
        row = await self._sql.fetchone(
            "SELECT COALESCE(SUM(amount_msat), 0) FROM nexus_receipts "
            "WHERE kind = 'offer.paid' AND at >= ?",
            (since,),
        )
        return int(row[0]) if row else 0


def now() -> float:
    return time.time()
