"""The provider's outbox: every event it publishes, signed once, kept before it is sent.

After a crash the same event (same id) is published again, never a second, different one
(RELIABILITY M10, N9). Each relay's answer is recorded; an event counts as published once at
least one relay accepted it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from autopilotd.store.db import Row, Sql
from autopilotd.vocab import OutboxPurpose

COLUMNS = "id, request_id, purpose, event_id, event_json, accepted_by"


@dataclass(frozen=True)
class OutboxItem:
    id: int
    request_id: str
    purpose: OutboxPurpose
    event_id: str
    event_json: str
    accepted_by: int

    @classmethod
    def from_row(cls, row: Row) -> OutboxItem:
        return cls(int(row[0]), row[1], OutboxPurpose(row[2]), row[3], row[4], int(row[5]))


class Outbox:
    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    async def stage(
        self, request_id: str, purpose: OutboxPurpose | str, event_id: str, event_json: str
    ) -> OutboxItem:
        """Store a signed event before publishing it; an existing one for the purpose wins."""
        async with self._sql.write() as tx:
            await tx.execute(
                "INSERT OR IGNORE INTO job_outbox (request_id, purpose, event_id, event_json, "
                "created_at) VALUES (?, ?, ?, ?, ?)",
                (request_id, OutboxPurpose(purpose), event_id, event_json, time.time()),
            )
            item = await Outbox(tx).item(request_id, purpose)
        assert item is not None
        return item

    async def item(self, request_id: str, purpose: OutboxPurpose | str) -> OutboxItem | None:
        row = await self._sql.fetchone(
            f"SELECT {COLUMNS} FROM job_outbox WHERE request_id = ? AND purpose = ?",
            (request_id, OutboxPurpose(purpose)),
        )
        return None if row is None else OutboxItem.from_row(row)

    async def record_publish(self, outbox_id: int, outcomes: dict[str, str]) -> int:
        """Record each relay's answer; returns how many relays have accepted it so far."""
        now = time.time()
        async with self._sql.write() as tx:
            for relay, outcome in outcomes.items():
                await tx.execute(
                    "INSERT INTO job_publish_results (outbox_id, relay, outcome, at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (outbox_id, relay) DO UPDATE SET "
                    "outcome = CASE WHEN outcome = 'accepted' THEN outcome "
                    "ELSE excluded.outcome END, "
                    "at = excluded.at",
                    (outbox_id, relay, outcome, now),
                )
            row = await tx.fetchone(
                "SELECT COUNT(*) FROM job_publish_results "
                "WHERE outbox_id = ? AND outcome = 'accepted'",
                (outbox_id,),
            )
            accepted = int(row[0]) if row else 0
            await tx.execute(
                "UPDATE job_outbox SET accepted_by = ?, last_attempt_at = ? WHERE id = ?",
                (accepted, now, outbox_id),
            )
        return accepted

    async def unpublished(self) -> list[OutboxItem]:
        rows = await self._sql.fetchall(
            f"SELECT {COLUMNS} FROM job_outbox WHERE accepted_by = 0 ORDER BY id"
        )
        return [OutboxItem.from_row(r) for r in rows]

    async def missing_on(self, relay: str, since: float) -> list[OutboxItem]:
        """Events staged since `since` that `relay` has not accepted (sent again when it
        reconnects: another relay's acceptance does not put them on this one)."""
        rows = await self._sql.fetchall(
            f"SELECT {COLUMNS} FROM job_outbox o WHERE created_at >= ? AND NOT EXISTS "
            "(SELECT 1 FROM job_publish_results r WHERE r.outbox_id = o.id AND r.relay = ? "
            "AND r.outcome = 'accepted') ORDER BY id",
            (since, relay),
        )
        return [OutboxItem.from_row(r) for r in rows]

    async def waiting(self) -> int:
        """How many signed events no relay has accepted yet."""
        row = await self._sql.fetchone("SELECT COUNT(*) FROM job_outbox WHERE accepted_by = 0")
        return int(row[0]) if row else 0
