"""The provider's jobs, keyed by the request event id (RELIABILITY M8, M10, N4).

A job row is keyed by the request event id, so the same request seen on three relays or after
a reconnect is one job. Stages move only forward along `vocab.NEXT_STAGES`:

    received → accepted → running → delivered → paid
                                  ↘ failed     ↘ delivered_unpaid (deadline passed, lost race)

Only the settlement unit of work (provider/settlement.py) makes a job `paid`, through
`mark_paid`, in the transaction that credits its earnings.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from autopilotd.errors import Conflict
from autopilotd.store.db import Row, Sql
from autopilotd.vocab import NEXT_STAGES, OPEN_STAGES, JobSource, JobStage

COLUMNS = (
    "request_id, source, buyer_pubkey, kind, stage, request_json, price_msat, result_json, "
    "payment_hash, bolt11, reason, received_at, updated_at, pay_deadline_at, paid_at"
)
SETTABLE = frozenset({"result_json", "payment_hash", "bolt11", "reason", "pay_deadline_at"})


@dataclass(frozen=True)
class Job:
    request_id: str
    source: JobSource
    buyer_pubkey: str
    kind: int
    stage: JobStage
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

    @classmethod
    def from_row(cls, row: Row) -> Job:
        values = list(row)
        values[1], values[4] = JobSource(values[1]), JobStage(values[4])
        return cls(*values)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["request_json"], data["result_json"]
        data["source"], data["stage"] = self.source.value, self.stage.value
        data["price_sats"] = self.price_msat // 1000
        return data


class Jobs:
    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    async def _one(self, where: str, params: tuple[Any, ...]) -> Job | None:
        row = await self._sql.fetchone(f"SELECT {COLUMNS} FROM jobs WHERE {where}", params)
        return None if row is None else Job.from_row(row)

    async def _many(self, where: str, params: tuple[Any, ...] = ()) -> list[Job]:
        rows = await self._sql.fetchall(f"SELECT {COLUMNS} FROM jobs WHERE {where}", params)
        return [Job.from_row(r) for r in rows]

    async def get(self, request_id: str) -> Job | None:
        return await self._one("request_id = ?", (request_id,))

    async def paid(self, request_id: str) -> bool:
        """Whether the job was paid: the wallet reported its invoice settled (settlement)."""
        job = await self.get(request_id)
        return job is not None and job.stage is JobStage.PAID

    async def by_payment_hash(self, payment_hash: str) -> Job | None:
        return await self._one("payment_hash = ?", (payment_hash,))

    async def receive(
        self,
        *,
        request_id: str,
        buyer_pubkey: str,
        kind: int,
        request_json: str,
        price_msat: int,
        source: JobSource = JobSource.NOSTR,
        now: float | None = None,
    ) -> tuple[Job, bool]:
        """Record a valid request once. Returns (job, is_new); a duplicate changes nothing."""
        at = time.time() if now is None else now
        async with self._sql.write() as tx:
            new = (
                await tx.execute(
                    "INSERT OR IGNORE INTO jobs (request_id, source, buyer_pubkey, kind, stage, "
                    "request_json, price_msat, received_at, updated_at) "
                    "VALUES (?, ?, ?, ?, 'received', ?, ?, ?, ?)",
                    (request_id, source, buyer_pubkey, kind, request_json, price_msat, at, at),
                )
                == 1
            )
            job = await Jobs(tx).get(request_id)
        assert job is not None
        return job, new

    async def advance(self, request_id: str, stage: JobStage | str, **fields: Any) -> Job:
        """Move a job forward (only along NEXT_STAGES), setting the given columns in one write."""
        target = JobStage(stage)
        unknown = set(fields) - SETTABLE
        if unknown:
            raise ValueError(f"cannot set {unknown}")
        async with self._sql.write() as tx:
            row = await tx.fetchone("SELECT stage FROM jobs WHERE request_id = ?", (request_id,))
            if row is None:
                raise Conflict(f"no job {request_id}")
            current = JobStage(row[0])
            if current != target and target not in NEXT_STAGES[current]:
                raise Conflict(f"job {request_id} is {current}; it cannot become {target}")
            sets = "".join(f", {k} = ?" for k in fields)
            await tx.execute(
                f"UPDATE jobs SET stage = ?, updated_at = ?{sets} WHERE request_id = ?",
                (target, time.time(), *fields.values(), request_id),
            )
            job = await Jobs(tx).get(request_id)
        assert job is not None
        return job

    async def mark_paid(self, request_id: str, now: float) -> Job:
        """Settlement only: the job whose payment the wallet saw settle is paid."""
        async with self._sql.write() as tx:
            await tx.execute(
                "UPDATE jobs SET stage = 'paid', paid_at = ?, updated_at = ? "
                "WHERE request_id = ? AND stage IN ('delivered', 'delivered_unpaid')",
                (now, now, request_id),
            )
            job = await Jobs(tx).get(request_id)
        assert job is not None
        return job

    async def open_jobs(self) -> list[Job]:
        marks = ", ".join("?" for _ in OPEN_STAGES)
        return await self._many(
            f"stage IN ({marks}) ORDER BY received_at", tuple(sorted(OPEN_STAGES))
        )

    async def paid_without_success(self) -> list[Job]:
        """Paid jobs whose success feedback was never staged (a crash right after the credit)."""
        return await self._many(
            "stage = 'paid' AND NOT EXISTS (SELECT 1 FROM job_outbox o "
            "WHERE o.request_id = jobs.request_id AND o.purpose = 'success')"
        )

    async def overdue(self, now: float) -> list[Job]:
        """Delivered jobs whose payment deadline has passed."""
        return await self._many("stage = 'delivered' AND pay_deadline_at < ?", (now,))

    async def history(self, *, limit: int, before: float | None) -> list[Job]:
        if before is None:
            return await self._many("1 ORDER BY received_at DESC, request_id LIMIT ?", (limit,))
        return await self._many(
            "received_at < ? ORDER BY received_at DESC, request_id LIMIT ?", (before, limit)
        )
