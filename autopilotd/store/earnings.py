"""Earnings: one row per credited payment hash, and the milestones they reach (M5, M7).

A row is only ever written by the settlement unit of work (provider/settlement.py), in the
transaction that finds the wallet's own settled inbound payment for the job's invoice; the
foreign key to `wallet_payments` holds that rule in the schema too. Milestones are reached in
that same transaction, so they count only wallet-settled earnings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from autopilotd.store.db import Sql
from autopilotd.vocab import MILESTONES_SATS, JobSource

SERIES_POINTS = 100


@dataclass(frozen=True)
class EarningsSummary:
    lifetime_sats: int
    lifetime_jobs: int
    sats_today: int
    jobs_today: int
    last_payment: dict[str, Any] | None
    series: list[list[float]]
    milestones: list[dict[str, Any]]


class Earnings:
    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    async def credit(
        self, payment_hash: str, request_id: str, amount_msat: int, now: float
    ) -> bool:
        """Credit a settled payment to its job once; True when this call credited it."""
        async with self._sql.write() as tx:
            new = (
                await tx.execute(
                    "INSERT OR IGNORE INTO earnings "
                    "(payment_hash, request_id, amount_msat, credited_at) VALUES (?, ?, ?, ?)",
                    (payment_hash, request_id, amount_msat, now),
                )
                == 1
            )
            if new:
                await tx.executemany(
                    "INSERT OR IGNORE INTO earnings_milestones (sats, reached_at) "
                    "SELECT ?, ? WHERE (SELECT SUM(amount_msat) FROM earnings) >= ?",
                    [(m, now, m * 1000) for m in MILESTONES_SATS],
                )
        return new

    async def from_source(self, source: JobSource) -> tuple[int, int]:
        """(jobs, sats) credited for jobs from `source` (a Nexus's starter demand …)."""
        row = await self._sql.fetchone(
            "SELECT COUNT(*), COALESCE(SUM(e.amount_msat), 0) FROM earnings e "
            "JOIN jobs j ON j.request_id = e.request_id WHERE j.source = ?",
            (source.value,),
        )
        assert row is not None
        return int(row[0]), int(row[1]) // 1000

    async def summary(self, day_start: float) -> EarningsSummary:
        total = await self._sql.fetchone(
            "SELECT COALESCE(SUM(amount_msat), 0), COUNT(*) FROM earnings"
        )
        today = await self._sql.fetchone(
            "SELECT COALESCE(SUM(amount_msat), 0), COUNT(*) FROM earnings WHERE credited_at >= ?",
            (day_start,),
        )
        last = await self._sql.fetchone(
            "SELECT payment_hash, request_id, amount_msat, credited_at FROM earnings "
            "ORDER BY credited_at DESC LIMIT 1"
        )
        recent = await self._sql.fetchall(
            "SELECT credited_at, amount_msat FROM earnings ORDER BY credited_at DESC LIMIT ?",
            (SERIES_POINTS,),
        )
        assert total is not None and today is not None
        return EarningsSummary(
            lifetime_sats=int(total[0]) // 1000,
            lifetime_jobs=int(total[1]),
            sats_today=int(today[0]) // 1000,
            jobs_today=int(today[1]),
            last_payment=None
            if last is None
            else {
                "payment_hash": last[0],
                "request_id": last[1],
                "amount_sats": int(last[2]) // 1000,
                "at": last[3],
            },
            series=_cumulative(int(total[0]), recent),
            milestones=await self.milestones(),
        )

    async def milestones(self) -> list[dict[str, Any]]:
        """Every milestone, reached or not, in order; `celebrated` once the user saw it."""
        rows = await self._sql.fetchall(
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
        async with self._sql.write() as tx:
            changed = await tx.execute(
                "UPDATE earnings_milestones SET celebrated_at = ? "
                "WHERE sats = ? AND celebrated_at IS NULL",
                (time.time(), sats),
            )
        return changed == 1


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
