"""Daemon sessions: one row per start, closed on a clean stop."""

from __future__ import annotations

import time

from autopilotd.store.db import Sql


class DaemonSessions:
    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    async def unclean(self) -> str | None:
        """The latest session that never recorded a clean stop, if any."""
        row = await self._sql.fetchone(
            "SELECT id FROM daemon_sessions WHERE stopped_at IS NULL "
            "ORDER BY started_at DESC LIMIT 1"
        )
        return None if row is None else str(row[0])

    async def start(self, session_id: str, pid: int, version: str, started_at: float) -> None:
        async with self._sql.write() as tx:
            await tx.execute(
                "INSERT INTO daemon_sessions (id, pid, version, started_at) VALUES (?, ?, ?, ?)",
                (session_id, pid, version, started_at),
            )

    async def stop(self, session_id: str) -> None:
        async with self._sql.write() as tx:
            await tx.execute(
                "UPDATE daemon_sessions SET stopped_at = ? WHERE id = ?", (time.time(), session_id)
            )
