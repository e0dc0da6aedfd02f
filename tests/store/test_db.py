"""Start-up assertions of the store (RELIABILITY T16, D2, D3)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from autopilotd.errors import StartupCheckFailed
from autopilotd.paths import Paths, owner_lock
from autopilotd.store import Store
from autopilotd.store.migrations import MIGRATIONS


async def test_fresh_store_asserts_its_settings(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "db.sqlite3")
    settings = await store.settings()
    await store.close()
    assert settings == {
        "journal_mode": "wal",
        "synchronous": 2,
        "foreign_keys": 1,
        "integrity": "ok",
        "schema_version": max(v for v, _, _ in MIGRATIONS),
    }
    assert (tmp_path / "db.sqlite3").stat().st_mode & 0o777 == 0o600


async def test_migrations_apply_once(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    extra = [*MIGRATIONS, (99, "test table", "CREATE TABLE t (x INTEGER)")]
    store = await Store.open(path, extra)
    await store.close()
    store = await Store.open(path, extra)  # would fail if 99 ran twice
    assert await store.schema_version() == 99
    await store.close()


async def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    store = await Store.open(path, [*MIGRATIONS, (99, "future", "CREATE TABLE f (x INTEGER)")])
    await store.close()
    with pytest.raises(StartupCheckFailed, match="newer"):
        await Store.open(path)


async def test_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    path.write_bytes(b"this is not sqlite" * 512)
    path.chmod(0o600)
    with pytest.raises(StartupCheckFailed, match="unreadable"):
        await Store.open(path)


async def test_refuses_a_damaged_database(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA page_size=1024")
    conn.execute("CREATE TABLE big (x TEXT)")
    conn.execute("CREATE INDEX big_x ON big (x)")
    conn.executemany("INSERT INTO big VALUES (?)", [(f"row {i:06d}" * 20,) for i in range(2000)])
    conn.commit()
    conn.close()
    data = bytearray(path.read_bytes())
    for offset in range(20 * 1024, 40 * 1024, 7):  # scribble over index and table pages
        data[offset] = 0xA5
    path.write_bytes(bytes(data))
    with pytest.raises(StartupCheckFailed):
        await Store.open(path)


async def test_transaction_rolls_back_on_error_and_cancellation(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "db.sqlite3")
    async with store.transaction() as tx:
        await tx.execute("CREATE TABLE t (x INTEGER)")
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES (1)")
            raise RuntimeError("boom")

    started = asyncio.Event()

    async def slow_writer() -> None:
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES (2)")
            started.set()
            await asyncio.sleep(10)
            await tx.execute("INSERT INTO t VALUES (3)")

    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(slow_writer())
        await started.wait()
        task.cancel()
    assert await store.fetchall("SELECT x FROM t") == []
    await store.close()


def test_one_process_owns_a_home(tmp_path: Path) -> None:
    paths = Paths.for_home(tmp_path)
    with owner_lock(paths.lock_file):
        with pytest.raises(StartupCheckFailed, match="already runs"), owner_lock(paths.lock_file):
            pass
    with owner_lock(paths.lock_file):
        pass
