"""Start-up assertions of the store (RELIABILITY T16, D2, D3)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
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


async def test_a_unit_cancelled_while_it_begins_leaves_no_transaction_open(
    tmp_path: Path,
) -> None:
    """T15: cancelled at its BEGIN (which the database's thread runs all the same), a unit
    leaves nothing open: the next unit begins as usual."""
    store = await Store.open(tmp_path / "db.sqlite3")
    async with store.transaction() as tx:
        await tx.execute("CREATE TABLE t (x INTEGER)")

    async def writer() -> None:
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES (1)")

    for spins in range(10):  # cancel after 0, 1, … passes of the loop: before, at, after BEGIN
        task = asyncio.create_task(writer())
        for _ in range(spins):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES (2)")
    rows = await store.fetchall("SELECT x FROM t")
    assert rows.count((2,)) == 10
    await store.close()


def test_one_process_owns_a_home(tmp_path: Path) -> None:
    paths = Paths.for_home(tmp_path)
    with owner_lock(paths.lock_file):
        with (
            pytest.raises(StartupCheckFailed, match="already runs"),
            owner_lock(paths.lock_file, wait_s=0.2),
        ):
            pass
    with owner_lock(paths.lock_file):
        pass


async def test_a_start_waits_out_a_lock_held_for_a_moment(tmp_path: Path) -> None:
    """A copy of the lock held briefly (a child a stopped daemon forked, before its exec) does
    not refuse the next start: it gets the lock once the copy is gone."""
    paths = Paths.for_home(tmp_path)
    with owner_lock(paths.lock_file):
        pass
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR);"
            " fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
            str(paths.lock_file),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as holder:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline() == b"held\n"

        def start() -> bool:
            with owner_lock(paths.lock_file, wait_s=30):
                return True

        starting = asyncio.create_task(asyncio.to_thread(start))
        await asyncio.sleep(0.2)  # the start is waiting: the holder has the lock
        assert not starting.done()
        holder.stdin.close()  # the holder exits, and its copy of the lock goes with it
        assert await asyncio.wait_for(starting, 30)
        holder.wait(30)


async def test_group_commit_shares_commits_and_keeps_each_unit_whole(tmp_path: Path) -> None:
    """Units that queue up share one commit; each returns only once it is committed (another
    connection sees it); a failing unit is rolled back alone; a unit cancelled while queued
    leaves no group open."""
    path = tmp_path / "db.sqlite3"
    table = [*MIGRATIONS, (99, "test table", "CREATE TABLE t (x INTEGER NOT NULL)")]
    store = await Store.open(path, table, group_commit=True)
    commits = 0
    real_commit = store._commit

    async def counted() -> None:
        nonlocal commits
        commits += 1
        await real_commit()

    store._commit = counted  # type: ignore[method-assign]

    def seen() -> list[int]:
        other = sqlite3.connect(path)
        try:
            return sorted(x for (x,) in other.execute("SELECT x FROM t"))
        finally:
            other.close()

    async def unit(x: int) -> list[int]:
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO t (x) VALUES (?)", (x,))
            if x == 13:
                raise ValueError("unlucky")
        return seen()  # durable, as another process would read it

    try:
        results = await asyncio.gather(*(unit(x) for x in range(20)), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        assert [str(f) for f in failed] == ["unlucky"]
        for x, result in enumerate(results):
            if x != 13:
                assert isinstance(result, list) and x in result
        assert seen() == [x for x in range(20) if x != 13]
        assert 1 <= commits < 19  # shared

        holder = asyncio.get_running_loop().create_future()

        async def holding() -> None:
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO t (x) VALUES (100)")
                await holder

        first = asyncio.create_task(holding())
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(unit(101))
        await asyncio.sleep(0.05)
        queued.cancel()  # gives up while queued: the holder will not find anyone after it
        holder.set_result(None)
        await first
        assert 100 in seen() and 101 not in seen()
        assert store._batch is None  # committed, no group left open

        holder = asyncio.get_running_loop().create_future()
        first = asyncio.create_task(holding())
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(unit(102))
        await asyncio.sleep(0.05)
        holder.set_result(None)  # the holder leaves the group to the one queued after it …
        await asyncio.sleep(0)
        queued.cancel()  # … which gives up: the group is committed all the same
        await asyncio.wait_for(first, 5)
        assert seen().count(100) == 2 and 102 not in seen()
    finally:
        await store.close()


@pytest.mark.parametrize("group_commit", [False, True])
async def test_a_transaction_cancelled_while_it_begins_leaves_none_open(
    tmp_path: Path, group_commit: bool
) -> None:
    """aiosqlite runs `BEGIN` in its thread even when the awaiting task is cancelled (as a
    SIGTERM's stop does): the store undoes it, so the next write (the session's end) works."""
    store = await Store.open(tmp_path / "db.sqlite3", group_commit=group_commit)
    async with store.transaction() as tx:
        await tx.execute("CREATE TABLE t (x INTEGER)")

    async def writer() -> None:
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES (1)")

    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(writer())
        await asyncio.sleep(0)  # the task now waits for its BEGIN
        task.cancel()
    async with store.transaction() as tx:
        await tx.execute("INSERT INTO t VALUES (2)")
    assert await store.fetchall("SELECT x FROM t") == [(2,)]
    await store.close()


async def test_health_reads_never_hold_a_statement_open_across_a_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pragma stepped in one trip to the database's thread and finished in a later one
    stays open in between: an open `PRAGMA journal_mode` made another task's COMMIT fail
    ("SQL statements in progress") and left its transaction open for every later write. The
    health reads (`settings()`, `schema_version()`) now take one trip each, never a cursor."""
    store = await Store.open(Paths.for_home(tmp_path).database_file)
    try:

        def no_cursor(*args: object, **kwargs: object) -> None:
            raise AssertionError("a health read opened a cursor across trips")

        monkeypatch.setattr(store._conn, "execute", no_cursor)
        health = await store.settings()
        assert (health["journal_mode"], health["integrity"]) == ("wal", "ok")
        assert await store.schema_version() == max(v for v, _, _ in MIGRATIONS)
        monkeypatch.undo()
        async with store.transaction() as tx:  # and writes go on
            await tx.execute("CREATE TABLE t (n INTEGER)")
    finally:
        await store.close()
