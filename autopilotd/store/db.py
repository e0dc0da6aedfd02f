"""The SQLite store and its start-up assertions (RELIABILITY D1–D3, T16).

One connection is the one writer. Opening checks WAL, `synchronous=FULL`, foreign keys and
`PRAGMA integrity_check`, and applies migrations; if any of that fails the daemon refuses to
start with a message that says what is wrong, rather than run on a store it cannot trust.

Repositories (the other modules of this package) hold all of the daemon's SQL. Each is built
over an `Sql`: the `Store` itself (each write its own transaction), or a `Tx` from
`Store.transaction()`, which hands several repositories one transaction: a unit of work that
is committed whole or not at all.

Group commit (`Store.open(…, group_commit=True)`, a Nexus's store): units of work that queue
up behind one another share one SQLite transaction and one fsync. Each unit is a SAVEPOINT
(rolled back alone if it fails); the unit that leaves the queue empty (or the `GROUP_MAX`-th)
commits, and every unit's `transaction()` returns only after the commit that holds it: a
caller never acts on a write that is not durable. Reads on the store may see a queued unit's
writes a moment before they are durable. Off (the daemon's store), each unit is its own
transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
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
GROUP_MAX = 256
"""At most this many units of work share one commit (a steady queue still commits)."""


class Sql(Protocol):
    """What a repository runs its SQL on: the Store, or one transaction of it."""

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def write(self) -> AbstractAsyncContextManager[Tx]:
        """A transaction to write in: a new one on the Store, the same one inside a Tx."""
        ...


async def _fetchall(conn: aiosqlite.Connection, sql: str, params: Sequence[Any]) -> list[Row]:
    """Every row, in one trip to the database's thread (execute, fetch and close at once)."""
    return [tuple(r) for r in await conn.execute_fetchall(sql, params)]


async def _fetchone(conn: aiosqlite.Connection, sql: str, params: Sequence[Any]) -> Row | None:
    """The first row (every query read so names one row: a key, an aggregate, LIMIT 1)."""
    rows = await conn.execute_fetchall(sql, params)
    for row in rows:
        return tuple(row)
    return None


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
        return await _fetchone(self._conn, sql, params)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await _fetchall(self._conn, sql, params)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Tx]:
        yield self


class Store:
    """The daemon's database. Use `transaction()` for every write."""

    def __init__(self, conn: aiosqlite.Connection, path: Path, group_commit: bool = False) -> None:
        self._conn = conn
        self.path = path
        self._write_lock = asyncio.Lock()
        self._group = group_commit
        self._queued = 0  # units waiting for the write lock or holding it
        self._batch: asyncio.Future[None] | None = None  # the open group's commit
        self._in_batch = 0
        self._flushing: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(
        cls,
        path: Path,
        migrations: Iterable[tuple[int, str, str]] = MIGRATIONS,
        *,
        group_commit: bool = False,
    ) -> Store:
        private_dir(path.parent)
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        try:
            conn = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StartupCheckFailed(f"cannot open the database {path}: {exc}") from None
        store = cls(conn, path, group_commit)
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
        """One value, read in one trip to the database's thread. A statement stepped in one
        trip and finished in another would stay open in between, and an open
        `PRAGMA journal_mode` makes another task's COMMIT fail ("SQL statements in progress")."""
        row = await _fetchone(self._conn, sql, ())
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
        rows = await _fetchall(self._conn, "PRAGMA integrity_check", ())
        if rows != [("ok",)]:
            detail = "; ".join(str(r[0]) for r in rows[:5])
            raise StartupCheckFailed(
                f"{self.path} failed its integrity check ({detail}); restore it from a backup. "
                "autopilotd will not run on a damaged database."
            )

    async def settings(self) -> dict[str, Any]:
        """The live values of the settings the start-up checks assert (for status and tests)."""
        integrity = [r[0] for r in await _fetchall(self._conn, "PRAGMA integrity_check", ())]
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
        if self._group:
            async with self._grouped() as tx:
                yield tx
            return
        async with self._write_lock:
            await self._begin()
            try:
                yield Tx(self._conn)
            except BaseException:
                await asyncio.shield(self._conn.execute("ROLLBACK"))
                raise
            try:
                await asyncio.shield(self._conn.execute("COMMIT"))
            except sqlite3.Error:  # undone whole, and no transaction left open for the next
                with contextlib.suppress(sqlite3.Error):
                    await asyncio.shield(self._conn.execute("ROLLBACK"))
                raise

    @asynccontextmanager
    async def _grouped(self) -> AsyncIterator[Tx]:
        """One unit of work inside the open group (see the module docstring)."""
        self._queued += 1
        acquired = False
        try:
            await self._write_lock.acquire()
            acquired = True
            if self._batch is None:
                await self._begin()
                self._batch = asyncio.get_running_loop().create_future()
            batch = self._batch
            await self._conn.execute("SAVEPOINT unit")
            try:
                yield Tx(self._conn)
            except BaseException:
                await asyncio.shield(self._conn.execute("ROLLBACK TO unit"))
                await asyncio.shield(self._conn.execute("RELEASE unit"))
                raise
            await asyncio.shield(self._conn.execute("RELEASE unit"))
            self._in_batch += 1
        finally:
            self._queued -= 1
            if acquired:
                try:
                    if self._queued == 0 or self._in_batch >= GROUP_MAX:
                        await asyncio.shield(self._commit())
                finally:
                    self._write_lock.release()
            elif self._queued == 0 and self._batch is not None and not self._write_lock.locked():
                self._flush_later()  # the unit that would have committed was cancelled
        await asyncio.shield(batch)

    async def _begin(self) -> None:
        """`BEGIN IMMEDIATE`, undone if the caller is cancelled meanwhile.

        aiosqlite runs the statement in its thread even when the awaiting task is cancelled
        (a SIGTERM's stop): the ROLLBACK, queued behind it, keeps the one connection from
        staying inside a transaction that every later write would trip over.
        """
        try:
            await self._conn.execute("BEGIN IMMEDIATE")
        except asyncio.CancelledError:
            with contextlib.suppress(sqlite3.Error):
                await asyncio.shield(self._conn.execute("ROLLBACK"))
            raise

    async def _commit(self) -> None:
        """Commit the open group (the write lock is held); its units learn the outcome."""
        batch, self._batch, self._in_batch = self._batch, None, 0
        if batch is None:
            return
        try:
            await self._conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await self._conn.execute("ROLLBACK")
            batch.set_exception(exc if isinstance(exc, Exception) else RuntimeError("cancelled"))
            batch.exception()  # retrieved: every unit of the group raises it itself
            raise
        batch.set_result(None)

    def _flush_later(self) -> None:
        async def flush() -> None:
            async with self._write_lock:
                if self._queued == 0:
                    await self._commit()

        task = asyncio.get_running_loop().create_task(flush())
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    def write(self) -> AbstractAsyncContextManager[Tx]:
        return self.transaction()

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await _fetchall(self._conn, sql, params)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return await _fetchone(self._conn, sql, params)

    async def close(self) -> None:
        await self._conn.close()
