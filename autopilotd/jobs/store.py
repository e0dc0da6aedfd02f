"""The job state machine and outbox, persisted (RELIABILITY M5, M7, M8, M10, N4, N9).

A job row is keyed by the request event id, so the same request seen on three relays or after
a reconnect is one job. Stages move only forward along NIP-90's flow:

    received → accepted → running → delivered → paid
                                  ↘ failed     ↘ delivered_unpaid (deadline passed)

Every event the provider publishes is signed once and stored in the outbox before it is sent,
so after a crash the same event (same id) is published again, never a second, different one.
Earnings are credited in the same transaction that marks the job paid, keyed by payment hash,
and only for a payment the wallet ledger already records as settled (a foreign key to it).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

from autopilotd.errors import Conflict
from autopilotd.runtime.snapshot import MILESTONES_SATS
from autopilotd.store import Store

Stage = Literal[
    "received", "accepted", "running", "delivered", "paid", "delivered_unpaid", "failed", "rejected"
]
Purpose = Literal["processing", "result", "payment_required", "success", "error"]

NEXT: dict[str, tuple[str, ...]] = {
    "received": ("accepted", "rejected", "failed"),
    "accepted": ("running", "failed"),
    "running": ("delivered", "failed"),
    "delivered": ("paid", "delivered_unpaid"),
    "delivered_unpaid": ("paid",),  # a late payment still counts: the wallet says it settled
    "paid": (),
    "failed": (),
    "rejected": (),
}
OPEN_STAGES = ("received", "accepted", "running", "delivered")
SERIES_POINTS = 100
JOB_COLUMNS = (
    "request_id, source, buyer_pubkey, kind, stage, request_json, price_msat, result_json, "
    "payment_hash, bolt11, reason, received_at, updated_at, pay_deadline_at, paid_at"
)


@dataclass(frozen=True)
class Job:
    request_id: str
    source: str
    buyer_pubkey: str
    kind: int
    stage: str
    request_json: str
    price_msat: int
    result_json: str | None
    payment_hash: str | None
    bolt11: str | None
    reason: str | None
    received_at: float
    updated_at: float
    pay_deadline_at: float | None
    paid_at: float | None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["request_json"], data["result_json"]
        data["price_sats"] = self.price_msat // 1000
        return data


@dataclass(frozen=True)
class OutboxItem:
    id: int
    request_id: str
    purpose: str
    event_id: str
    event_json: str
    accepted_by: int


class JobStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def get(self, request_id: str) -> Job | None:
        row = await self._store.fetchone(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE request_id = ?", (request_id,)
        )
        return None if row is None else Job(*row)

    async def by_payment_hash(self, payment_hash: str) -> Job | None:
        row = await self._store.fetchone(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE payment_hash = ?", (payment_hash,)
        )
        return None if row is None else Job(*row)

    async def receive(
        self,
        *,
        request_id: str,
        buyer_pubkey: str,
        kind: int,
        request_json: str,
        price_msat: int,
        source: str = "nostr",
    ) -> tuple[Job, bool]:
        """Record a valid request once. Returns (job, is_new); a duplicate changes nothing."""
        now = time.time()
        async with self._store.transaction() as tx:
            cur = await tx.execute(
                "INSERT OR IGNORE INTO jobs (request_id, source, buyer_pubkey, kind, stage, "
                "request_json, price_msat, received_at, updated_at) "
                "VALUES (?, ?, ?, ?, 'received', ?, ?, ?, ?)",
                (request_id, source, buyer_pubkey, kind, request_json, price_msat, now, now),
            )
            new = cur.rowcount == 1
        job = await self.get(request_id)
        assert job is not None
        return job, new

    async def advance(self, request_id: str, stage: Stage, **fields: Any) -> Job:
        """Move a job forward (only along NEXT), setting the given columns in the same write."""
        allowed = {"result_json", "payment_hash", "bolt11", "reason", "pay_deadline_at"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"cannot set {unknown}")
        async with self._store.transaction() as tx:
            async with tx.execute(
                "SELECT stage FROM jobs WHERE request_id = ?", (request_id,)
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                raise Conflict(f"no job {request_id}")
            current = str(row[0])
            if current != stage and stage not in NEXT[current]:
                raise Conflict(f"job {request_id} is {current}; it cannot become {stage}")
            sets = ", ".join(f"{k} = ?" for k in fields)
            await tx.execute(
                f"UPDATE jobs SET stage = ?, updated_at = ?{', ' + sets if sets else ''} "
                "WHERE request_id = ?",
                (stage, time.time(), *fields.values(), request_id),
            )
        job = await self.get(request_id)
        assert job is not None
        return job

    async def credit(self, payment_hash: str) -> tuple[Job | None, bool]:
        """Mark the job bound to `payment_hash` paid and credit its earnings, once.

        Only a payment the wallet ledger records as a settled inbound payment can be credited
        (checked here and enforced by the foreign key). Returns (job, newly_credited).
        """
        now = time.time()
        async with self._store.transaction() as tx:
            async with tx.execute(
                "SELECT amount_msat FROM wallet_payments WHERE payment_hash = ? "
                "AND direction = 'in' AND status = 'succeeded'",
                (payment_hash,),
            ) as cur:
                paid = await cur.fetchone()
            async with tx.execute(
                "SELECT request_id, stage, price_msat FROM jobs WHERE payment_hash = ?",
                (payment_hash,),
            ) as cur:
                job = await cur.fetchone()
            if paid is None or job is None:
                return (None if job is None else await self._get_in(tx, str(job[0]))), False
            request_id, stage, price_msat = str(job[0]), str(job[1]), int(job[2])
            if int(paid[0]) < price_msat:  # M8: an underpayment never counts as paid
                return await self._get_in(tx, request_id), False
            cur2 = await tx.execute(
                "INSERT OR IGNORE INTO earnings "
                "(payment_hash, request_id, amount_msat, credited_at) VALUES (?, ?, ?, ?)",
                (payment_hash, request_id, int(paid[0]), now),
            )
            new = cur2.rowcount == 1
            if new:
                await tx.executemany(
                    "INSERT OR IGNORE INTO earnings_milestones (sats, reached_at) "
                    "SELECT ?, ? WHERE (SELECT SUM(amount_msat) FROM earnings) >= ?",
                    [(m, now, m * 1000) for m in MILESTONES_SATS],
                )
            if stage in ("delivered", "delivered_unpaid"):
                await tx.execute(
                    "UPDATE jobs SET stage = 'paid', paid_at = ?, updated_at = ? "
                    "WHERE request_id = ?",
                    (now, now, request_id),
                )
        return await self.get(request_id), new

    async def _get_in(self, tx: Any, request_id: str) -> Job | None:
        async with tx.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE request_id = ?", (request_id,)
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else Job(*row)

    async def open_jobs(self) -> list[Job]:
        rows = await self._store.fetchall(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE stage IN ('received', 'accepted', 'running', "
            "'delivered') ORDER BY received_at"
        )
        return [Job(*r) for r in rows]

    async def paid_without_success(self) -> list[Job]:
        """Paid jobs whose success feedback was never staged (a crash right after the credit)."""
        rows = await self._store.fetchall(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE stage = 'paid' AND NOT EXISTS ("
            "SELECT 1 FROM job_outbox o WHERE o.request_id = jobs.request_id "
            "AND o.purpose = 'success')"
        )
        return [Job(*r) for r in rows]

    async def overdue(self, now: float) -> list[Job]:
        rows = await self._store.fetchall(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE stage = 'delivered' AND pay_deadline_at < ?",
            (now,),
        )
        return [Job(*r) for r in rows]

    async def history(self, *, limit: int, before: float | None) -> list[Job]:
        if before is None:
            rows = await self._store.fetchall(
                f"SELECT {JOB_COLUMNS} FROM jobs ORDER BY received_at DESC, request_id LIMIT ?",
                (limit,),
            )
        else:
            rows = await self._store.fetchall(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE received_at < ? "
                "ORDER BY received_at DESC, request_id LIMIT ?",
                (before, limit),
            )
        return [Job(*r) for r in rows]

    # -- outbox --------------------------------------------------------------------------

    async def stage_event(
        self, request_id: str, purpose: Purpose, event_id: str, event_json: str
    ) -> OutboxItem:
        """Store a signed event before publishing it; an existing one for the purpose wins."""
        async with self._store.transaction() as tx:
            await tx.execute(
                "INSERT OR IGNORE INTO job_outbox (request_id, purpose, event_id, event_json, "
                "created_at) VALUES (?, ?, ?, ?, ?)",
                (request_id, purpose, event_id, event_json, time.time()),
            )
        item = await self.outbox_item(request_id, purpose)
        assert item is not None
        return item

    async def outbox_item(self, request_id: str, purpose: Purpose) -> OutboxItem | None:
        row = await self._store.fetchone(
            "SELECT id, request_id, purpose, event_id, event_json, accepted_by FROM job_outbox "
            "WHERE request_id = ? AND purpose = ?",
            (request_id, purpose),
        )
        return None if row is None else OutboxItem(*row)

    async def record_publish(self, outbox_id: int, outcomes: dict[str, str]) -> int:
        """Record each relay's answer; returns how many relays have accepted it so far."""
        now = time.time()
        async with self._store.transaction() as tx:
            for relay, outcome in outcomes.items():
                await tx.execute(
                    "INSERT INTO job_publish_results (outbox_id, relay, outcome, at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (outbox_id, relay) DO UPDATE SET "
                    "outcome = CASE WHEN outcome = 'accepted' THEN outcome "
                    "ELSE excluded.outcome END, "
                    "at = excluded.at",
                    (outbox_id, relay, outcome, now),
                )
            async with tx.execute(
                "SELECT COUNT(*) FROM job_publish_results "
                "WHERE outbox_id = ? AND outcome = 'accepted'",
                (outbox_id,),
            ) as cur:
                row = await cur.fetchone()
            accepted = int(row[0]) if row else 0
            await tx.execute(
                "UPDATE job_outbox SET accepted_by = ?, last_attempt_at = ? WHERE id = ?",
                (accepted, now, outbox_id),
            )
        return accepted

    async def unpublished(self) -> list[OutboxItem]:
        rows = await self._store.fetchall(
            "SELECT id, request_id, purpose, event_id, event_json, accepted_by FROM job_outbox "
            "WHERE accepted_by = 0 ORDER BY id"
        )
        return [OutboxItem(*r) for r in rows]

    # -- earnings ------------------------------------------------------------------------

    async def earnings_summary(self, day_start: float) -> dict[str, Any]:
        total = await self._store.fetchone(
            "SELECT COALESCE(SUM(amount_msat), 0), COUNT(*) FROM earnings"
        )
        today = await self._store.fetchone(
            "SELECT COALESCE(SUM(amount_msat), 0), COUNT(*) FROM earnings WHERE credited_at >= ?",
            (day_start,),
        )
        last = await self._store.fetchone(
            "SELECT payment_hash, request_id, amount_msat, credited_at FROM earnings "
            "ORDER BY credited_at DESC LIMIT 1"
        )
        recent = await self._store.fetchall(
            "SELECT credited_at, amount_msat FROM earnings ORDER BY credited_at DESC LIMIT ?",
            (SERIES_POINTS,),
        )
        milestones = await self.milestones()
        assert total is not None and today is not None
        return {
            "series": _cumulative(int(total[0]), recent),
            "milestones": milestones,
            "lifetime_sats": int(total[0]) // 1000,
            "lifetime_jobs": int(total[1]),
            "sats_today": int(today[0]) // 1000,
            "jobs_today": int(today[1]),
            "last_payment": None
            if last is None
            else {
                "payment_hash": last[0],
                "request_id": last[1],
                "amount_sats": int(last[2]) // 1000,
                "at": last[3],
            },
        }

    async def milestones(self) -> list[dict[str, Any]]:
        """Every milestone, reached or not, in order; `celebrated` once the user saw it."""
        rows = await self._store.fetchall(
            "SELECT sats, reached_at, celebrated_at FROM earnings_milestones"
        )
        reached = {int(r[0]): (float(r[1]), r[2]) for r in rows}
        return [
            {
                "sats": m,
                "reached_at": reached[m][0] if m in reached else None,
                "celebrated": m in reached and reached[m][1] is not None,
            }
            for m in MILESTONES_SATS
        ]

    async def celebrate(self, sats: int) -> bool:
        """Mark a reached milestone as celebrated; False when it is not reached (or was)."""
        async with self._store.transaction() as tx:
            cur = await tx.execute(
                "UPDATE earnings_milestones SET celebrated_at = ? "
                "WHERE sats = ? AND celebrated_at IS NULL",
                (time.time(), sats),
            )
            return bool(cur.rowcount == 1)


def _cumulative(total_msat: int, newest_first: list[Any]) -> list[list[float]]:
    """[at, lifetime sats after that credit] for the most recent credits, oldest first.

    The first point is the total before the oldest shown credit, at that credit's time, so a
    chart starts from what was already earned rather than from zero.
    """
    points: list[list[float]] = []
    running = total_msat
    for at, amount in newest_first:
        points.append([float(at), running // 1000])
        running -= int(amount)
    if newest_first:
        points.append([float(newest_first[-1][0]), running // 1000])
    return points[::-1]
