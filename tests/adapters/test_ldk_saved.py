"""The adapter's look at ldk-node's store: has the channel manager been saved after the last
channel monitor write? (docs/wallet.md, "After a hard crash"; the real store is checked in
tests/wallet/test_wallet_e2e.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from autopilotd.adapters.ldk_node import _manager_saved

SCHEMA = (
    "CREATE TABLE ldk_node_data (primary_namespace TEXT NOT NULL,"
    " secondary_namespace TEXT DEFAULT '' NOT NULL, key TEXT NOT NULL CHECK (key <> ''),"
    " value BLOB, PRIMARY KEY (primary_namespace, secondary_namespace, key))"
)


def _write(conn: sqlite3.Connection, namespace: str, sub: str, key: str) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO ldk_node_data VALUES (?, ?, ?, x'00')", (namespace, sub, key)
    )
    conn.commit()


def test_saved_only_when_the_manager_was_written_after_every_monitor(tmp_path: Path) -> None:
    path = tmp_path / "ldk_node_data.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(SCHEMA)
    _write(conn, "monitors", "", "chan_0")
    assert not _manager_saved(path)  # no manager yet
    _write(conn, "", "", "manager")
    assert _manager_saved(path)
    _write(conn, "monitor_updates", "chan_0", "1")  # a channel update, the manager not yet
    assert not _manager_saved(path)
    _write(conn, "payments", "", "abc")  # other writes change nothing
    assert not _manager_saved(path)
    _write(conn, "", "", "manager")
    assert _manager_saved(path)
    _write(conn, "monitors", "", "chan_0")  # a full monitor rewrite
    assert not _manager_saved(path)
    _write(conn, "", "", "manager")
    assert _manager_saved(path)

    conn.execute("BEGIN EXCLUSIVE")  # the node is writing: never wait for it
    assert not _manager_saved(path)
    conn.rollback()
    conn.close()


def test_a_missing_or_foreign_store_is_not_saved(tmp_path: Path) -> None:
    assert not _manager_saved(tmp_path / "missing.sqlite")
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    assert not _manager_saved(other)
