"""Versioned schema migrations, applied in order, each exactly once.

Append new migrations at the end; never edit one that has shipped.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "daemon sessions",
        """
        CREATE TABLE daemon_sessions (
            id          TEXT PRIMARY KEY,
            pid         INTEGER NOT NULL,
            version     TEXT NOT NULL,
            started_at  REAL NOT NULL,
            stopped_at  REAL
        );
        """,
    ),
]
