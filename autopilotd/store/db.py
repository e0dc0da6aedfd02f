"""The SQLite store and its start-up assertions (RELIABILITY D1–D3, T16).

One connection is the one writer. Opening checks WAL, `synchronous=FULL`, foreign keys and
`PRAGMA integrity_check`, and applies migrations; if any of that fails the daemon refuses to
start with a message that says what is wrong, rather than run on a store it cannot trust.

Repositories (the other modules of this package) hold all of the daemon's SQL. Each is built
over an `Sql`: the `Store` itself (each write its own transaction), or a `Tx` from
`Store.transaction()`, which hands several repositories one transaction: a unit of work that
is committed whole or not at all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import aiosqlite

from autopilotd.errors import StartupCheckFailed
from autopilotd.paths import private_dir
from autopilotd.store.migrations import MIGRATIONS

logger = logging.getLogger(__name__)

Row = tuple[Any, ...]


class Sql(Protocol):
    """What a repository runs its SQL on: the Store, or one transaction of it."""

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def write(self) -> AbstractAsyncContextManager[Tx]:
        """A transaction to write in: a new one on the Store, the same one inside a Tx."""
        ...


class Tx:
    """One open `BEGIN IMMEDIATE` transaction (see `Store.transaction`)."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        cursor = await self._conn.execute(sql, params)
        count = cursor.rowcount
        await cursor.close()
        return int(count)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._conn.executemany(sql, rows)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        async with self._conn.execute(sql, params) as cur:
            row = await cur.fetchone()
        return None if row is None else tuple(row)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with self._conn.execute(sql, params) as cur:
            return [tuple(r) for r in await cur.fetchall()]

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Tx]:
        yield self


class Store:
    """The daemon's database. Use `transaction()` for every write."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(
        cls, path: Path, migrations: Iterable[tuple[int, str, str]] = MIGRATIONS
    ) -> Store:
        private_dir(path.parent)
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        try:
            conn = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StartupCheckFailed(f"cannot open the database {path}: {exc}") from None
        store = cls(conn, path)
        try:
            await store._assert_settings()
            await store._migrate(list(migrations))
        except sqlite3.DatabaseError as exc:
            await conn.close()
            raise StartupCheckFailed(
                f"the database {path} is unreadable ({exc}); restore it from a backup or move "
                "it aside. autopilotd will not run on a database it cannot trust."
            ) from None
        except BaseException:
            await conn.close()
            raise
        return store

    async def _pragma(self, sql: str) -> Any:
        async with self._conn.execute(sql) as cur:
            row = await cur.fetchone()
        return None if row is None else row[0]

    async def _assert_settings(self) -> None:
        mode = await self._pragma("PRAGMA journal_mode=WAL")
        if str(mode).lower() != "wal":
            raise StartupCheckFailed(f"{self.path}: cannot enable WAL (journal_mode={mode})")
        await self._conn.execute("PRAGMA synchronous=FULL")
        sync = await self._pragma("PRAGMA synchronous")
        if sync != 2:
            raise StartupCheckFailed(f"{self.path}: synchronous is {sync}, FULL (2) is required")
        await self._conn.execute("PRAGMA foreign_keys=ON")
        if await self._pragma("PRAGMA foreign_keys") != 1:
            raise StartupCheckFailed(f"{self.path}: foreign keys cannot be enabled")
        async with self._conn.execute("PRAGMA integrity_check") as cur:
            rows = await cur.fetchall()
        rows = list(rows)
        if [tuple(r) for r in rows] != [("ok",)]:
            detail = "; ".join(str(r[0]) for r in rows[:5])
            raise StartupCheckFailed(
                f"{self.path} failed its integrity check ({detail}); restore it from a backup. "
                "autopilotd will not run on a damaged database."
            )

    async def settings(self) -> dict[str, Any]:
        """The live values of the settings the start-up checks assert (for status and tests)."""
        async with self._conn.execute("PRAGMA integrity_check") as cur:
            integrity = [r[0] for r in await cur.fetchall()]
        return {
            "journal_mode": await self._pragma("PRAGMA journal_mode"),
            "synchronous": await self._pragma("PRAGMA synchronous"),
            "foreign_keys": await self._pragma("PRAGMA foreign_keys"),
            "integrity": "ok" if integrity == ["ok"] else integrity,
            "schema_version": await self.schema_version(),
        }

    async def schema_version(self) -> int:
        value = await self._pragma("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        return int(value)

    async def _migrate(self, migrations: list[tuple[int, str, str]]) -> None:
        await self._conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        current = await self.schema_version()
        known = max((v for v, _, _ in migrations), default=0)
        if current > known:
            raise StartupCheckFailed(
                f"{self.path} has schema version {current}, newer than this autopilotd knows "
                f"({known}); upgrade autopilotd instead of running an older one on it."
            )
        for version, name, sql in sorted(migrations):
            if version <= current:
                continue
            async with self.transaction() as tx:
                for statement in (s.strip() for s in sql.split(";")):
                    if statement:
                        await tx.execute(statement)
                await tx.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, time.time()),
                )
            logger.info("applied migration %d (%s) to %s", version, name, self.path)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """One `BEGIN IMMEDIATE` unit: committed whole or rolled back whole.

        The commit is shielded from cancellation so a cancelled caller never leaves a
        half-applied transaction (RELIABILITY D2).
        """
        async with self._write_lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield Tx(self._conn)
            except BaseException:
                await asyncio.shield(self._conn.execute("ROLLBACK"))
                raise
            await asyncio.shield(self._conn.execute("COMMIT"))

    def write(self) -> AbstractAsyncContextManager[Tx]:
        return self.transaction()

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with self._conn.execute(sql, params) as cur:
            return [tuple(r) for r in await cur.fetchall()]

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        async with self._conn.execute(sql, params) as cur:
            row = await cur.fetchone()
        return None if row is None else tuple(row)

    async def close(self) -> None:
        await self._conn.close()
