"""The Nexus's own database: the treasury wallet's ledger, sessions, the NIP-98 replay cache,
starter offers (each one lease) and an append-only receipts log (the budget ledger).

Append new migrations at the end; never edit one that has shipped.
"""

from __future__ import annotations

from autopilotd.store.migrations import MIGRATIONS

WALLET_LEDGER = next(sql for version, _, sql in MIGRATIONS if version == 2)

NEXUS_MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "treasury ledger", WALLET_LEDGER),
    (
        2,
        "sessions, offers, receipts",
        """
        CREATE TABLE nexus_sessions (
            id                TEXT PRIMARY KEY,
            pubkey            TEXT NOT NULL,
            token_hash        TEXT NOT NULL UNIQUE,
            client_id         TEXT NOT NULL DEFAULT '',
            created_at        REAL NOT NULL,
            expires_at        REAL NOT NULL,
            last_dispatch_at  REAL
        );
        CREATE INDEX nexus_sessions_pubkey ON nexus_sessions (pubkey);
        CREATE TABLE nexus_auth_seen (
            event_id  TEXT PRIMARY KEY,
            seen_at   REAL NOT NULL
        );
        CREATE TABLE starter_offers (
            id                     TEXT PRIMARY KEY,
            seq                    INTEGER NOT NULL UNIQUE,
            session_id             TEXT NOT NULL REFERENCES nexus_sessions (id),
            provider               TEXT NOT NULL,
            kind                   INTEGER NOT NULL,
            prompt                 TEXT NOT NULL,
            price_msat             INTEGER NOT NULL CHECK (price_msat > 0),
            status                 TEXT NOT NULL CHECK (status IN ('awaiting_ack', 'running',
                                       'paying', 'completed', 'released', 'expired',
                                       'payment_failed')),
            reason                 TEXT,
            request_id             TEXT UNIQUE,
            request_json           TEXT,
            payment_hash           TEXT UNIQUE,
            bolt11                 TEXT,
            created_at             REAL NOT NULL,
            start_confirm_by       REAL NOT NULL,
            execution_started_at   REAL,
            execution_expires_at   REAL,
            last_heartbeat_at      REAL,
            next_heartbeat_due_at  REAL,
            paid_at                REAL,
            updated_at             REAL NOT NULL
        );
        CREATE INDEX starter_offers_status ON starter_offers (status);
        CREATE INDEX starter_offers_session ON starter_offers (session_id, status);
        CREATE TABLE nexus_receipts (
            seq          INTEGER PRIMARY KEY AUTOINCREMENT,
            at           REAL NOT NULL,
            kind         TEXT NOT NULL,
            offer_id     TEXT,
            pubkey       TEXT,
            amount_msat  INTEGER,
            detail       TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX nexus_receipts_at ON nexus_receipts (at);
        CREATE INDEX nexus_receipts_kind ON nexus_receipts (kind, at);
        """,
    ),
]
