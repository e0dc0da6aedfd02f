"""History sync's tables (sync/service.py): the records, ours and from relays, and each relay's
last reconciliation.

`sync_events` holds every history record this daemon knows, keyed by its event id: the ones it
made from its own jobs and buy requests (`local`) and the ones it fetched from a relay
(`relay`). Adding is `INSERT OR IGNORE` by event id, so the same event seen twice, from two
relays or after a crash in the middle of a reconciliation, is one row. What a job or request
*is* comes from all its records together: the furthest step reached (`current`), so the order
they arrive in does not matter. Nothing here is ever counted as earnings (that is the
`earnings` table, written only by settlement).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from autopilotd.store.db import Sql

_RESTORED = (
    "NOT EXISTS (SELECT 1 FROM jobs j WHERE s.subject = 'job:' || j.request_id) "
    "AND NOT EXISTS (SELECT 1 FROM buy_requests b WHERE s.subject = 'buy:' || b.request_id) "
    "AND NOT EXISTS (SELECT 1 FROM wallet_payments w "
    "                WHERE s.subject = 'pay_' || w.direction || ':' || w.payment_hash)"
)
"""A subject this daemon has no job, request or payment of its own for: it came from a relay."""


@dataclass(frozen=True)
class StoredRecord:
    event_id: str
    created_at: int
    subject: str
    step: str
    rank: int
    at: float
    record: dict[str, Any]
    raw: str
    origin: str  # 'local' | 'relay'


@dataclass(frozen=True)
class RelaySync:
    """One relay's last reconciliation, as Sync Health shows it."""

    url: str
    at: float
    method: str  # 'negentropy', 'windows' (the relay refused the whole range) or 'fetch'
    have: int  # ours the relay lacked
    need: int  # the relay's we lacked
    uploaded: int
    fetched: int  # new records applied
    refused: int  # events from the relay that were not our records
    round_trips: int
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class SyncEvents:
    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    async def items(
        self, since: int | None = None, until: int | None = None
    ) -> list[tuple[str, int]]:
        """(event id, created_at) of every record in [since, until], for negentropy."""
        rows = await self._sql.fetchall(
            "SELECT event_id, created_at FROM sync_events "
            "WHERE created_at >= ? AND created_at <= ?",
            (since if since is not None else 0, until if until is not None else 2**62),
        )
        return [(str(r[0]), int(r[1])) for r in rows]

    async def span(self) -> tuple[int, int] | None:
        row = await self._sql.fetchone("SELECT MIN(created_at), MAX(created_at) FROM sync_events")
        return None if row is None or row[0] is None else (int(row[0]), int(row[1]))

    async def count(self) -> tuple[int, int]:
        """(records, jobs, requests and payments known only from a relay: restored history)."""
        row = await self._sql.fetchone(
            f"SELECT (SELECT COUNT(*) FROM sync_events), "
            f"(SELECT COUNT(DISTINCT subject) FROM sync_events s WHERE {_RESTORED})"
        )
        assert row is not None
        return int(row[0]), int(row[1])

    async def steps(self, subjects: Sequence[str]) -> set[tuple[str, str]]:
        """The (subject, step) pairs already recorded, by anyone, among `subjects`."""
        out: set[tuple[str, str]] = set()
        for i in range(0, len(subjects), 500):
            chunk = list(subjects[i : i + 500])
            marks = ",".join("?" * len(chunk))
            rows = await self._sql.fetchall(
                f"SELECT subject, step FROM sync_events WHERE subject IN ({marks})", chunk
            )
            out.update((str(r[0]), str(r[1])) for r in rows)
        return out

    async def add(self, records: Sequence[StoredRecord]) -> int:
        """Store records not held yet (by event id), in one transaction; how many were new."""
        added = 0
        now = time.time()
        async with self._sql.write() as tx:
            for r in records:
                added += await tx.execute(
                    "INSERT OR IGNORE INTO sync_events (event_id, created_at, subject, step, "
                    "rank, at, record, raw, origin, stored_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        r.event_id,
                        r.created_at,
                        r.subject,
                        r.step,
                        r.rank,
                        r.at,
                        json.dumps(r.record, separators=(",", ":")),
                        r.raw,
                        r.origin,
                        now,
                    ),
                )
        return added

    async def raw(self, event_ids: Sequence[str]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(event_ids), 500):
            chunk = list(event_ids[i : i + 500])
            marks = ",".join("?" * len(chunk))
            rows = await self._sql.fetchall(
                f"SELECT raw FROM sync_events WHERE event_id IN ({marks})", chunk
            )
            out += [str(r[0]) for r in rows]
        return out

    async def current(self, limit: int, kind: str | None = None) -> list[dict[str, Any]]:
        """Each job, request or payment as its records say it is now (its furthest step), newest
        first; `restored` when this daemon has no row of its own for it (it came from a relay).
        `kind` picks one type ('job', 'buy', 'pay' for both directions)."""
        rows = await self._sql.fetchall(
            f"SELECT record, event_id, {_RESTORED} "
            "FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY subject "
            "      ORDER BY rank DESC, at DESC, event_id DESC) AS n FROM sync_events "
            "      WHERE ? IS NULL OR subject LIKE ? || '%') AS s "
            "WHERE n = 1 ORDER BY at DESC, subject LIMIT ?",
            (kind, kind, limit),
        )
        out = []
        for record, event_id, restored in rows:
            item = json.loads(record)
            item["event_id"] = event_id
            item["restored"] = bool(restored)
            out.append(item)
        return out

    async def _changed(self, table: str, columns: str, since: float) -> list[dict[str, Any]]:
        """`table`'s rows changed since `since`, as dicts of `columns` (its own names)."""
        rows = await self._sql.fetchall(
            f"SELECT {columns} FROM {table} WHERE updated_at >= ?", (since,)
        )
        names = [c.strip() for c in columns.split(",")]
        return [dict(zip(names, r, strict=True)) for r in rows]

    async def changed_jobs(self, since: float) -> list[dict[str, Any]]:
        return await self._changed(
            "jobs",
            "request_id, stage, updated_at, source, kind, buyer_pubkey, price_msat, "
            "payment_hash, reason, received_at, paid_at",
            since,
        )

    async def changed_buys(self, since: float) -> list[dict[str, Any]]:
        return await self._changed(
            "buy_requests",
            "request_id, status, updated_at, kind, prompt, budget_msat, provider, result, "
            "payment_hash, reason, created_at",
            since,
        )

    async def changed_payments(self, since: float) -> list[dict[str, Any]]:
        return await self._changed(
            "wallet_payments",
            "payment_hash, status, updated_at, direction, amount_msat, fee_msat, description, "
            "created_at",
            since,
        )

    async def save_relay(self, row: RelaySync) -> None:
        async with self._sql.write() as tx:
            await tx.execute(
                "INSERT OR REPLACE INTO sync_relays (url, at, method, have, need, uploaded, "
                "fetched, refused, round_trips, error) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    row.url,
                    row.at,
                    row.method,
                    row.have,
                    row.need,
                    row.uploaded,
                    row.fetched,
                    row.refused,
                    row.round_trips,
                    row.error,
                ),
            )

    async def keep_relays(self, urls: Sequence[str]) -> None:
        """Forget the last round of every relay not in `urls` (taken out of the pool)."""
        held = {r.url for r in await self.relays()}
        gone = sorted(held - set(urls))
        if gone:
            async with self._sql.write() as tx:
                await tx.executemany("DELETE FROM sync_relays WHERE url = ?", [(u,) for u in gone])

    async def relays(self) -> list[RelaySync]:
        rows = await self._sql.fetchall(
            "SELECT url, at, method, have, need, uploaded, fetched, refused, round_trips, error "
            "FROM sync_relays ORDER BY url"
        )
        return [RelaySync(*r) for r in rows]
