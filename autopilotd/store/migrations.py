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
    (
        2,
        "wallet ledger",
        """
        CREATE TABLE wallet_payments (
            seq            INTEGER PRIMARY KEY AUTOINCREMENT,
            payment_hash   TEXT NOT NULL UNIQUE,
            direction      TEXT NOT NULL CHECK (direction IN ('in', 'out')),
            status         TEXT NOT NULL
                           CHECK (status IN
                               ('intent', 'pending', 'succeeded', 'failed', 'unknown')),
            amount_msat    INTEGER NOT NULL CHECK (amount_msat >= 0),
            fee_msat       INTEGER CHECK (fee_msat >= 0),
            max_fee_msat   INTEGER CHECK (max_fee_msat >= 0),
            reserved_msat  INTEGER NOT NULL DEFAULT 0 CHECK (reserved_msat >= 0),
            bolt11         TEXT,
            description    TEXT NOT NULL DEFAULT '',
            preimage       TEXT,
            failure        TEXT,
            created_at     REAL NOT NULL,
            updated_at     REAL NOT NULL
        );
        CREATE INDEX wallet_payments_open ON wallet_payments (status) WHERE reserved_msat > 0;
        CREATE TABLE wallet_invoices (
            payment_hash  TEXT PRIMARY KEY,
            bolt11        TEXT NOT NULL,
            amount_msat   INTEGER,
            description   TEXT NOT NULL,
            created_at    REAL NOT NULL,
            expires_at    REAL NOT NULL
        );
        """,
    ),
]
