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
    (
        3,
        "jobs, outbox and earnings",
        """
        CREATE TABLE jobs (
            request_id       TEXT PRIMARY KEY,
            source           TEXT NOT NULL DEFAULT 'nostr' CHECK (source IN ('nostr', 'starter')),
            buyer_pubkey     TEXT NOT NULL,
            kind             INTEGER NOT NULL,
            stage            TEXT NOT NULL CHECK (stage IN ('received', 'accepted', 'running',
                                 'delivered', 'paid', 'delivered_unpaid', 'failed', 'rejected')),
            request_json     TEXT NOT NULL,
            price_msat       INTEGER NOT NULL CHECK (price_msat >= 0),
            result_json      TEXT,
            payment_hash     TEXT UNIQUE,
            bolt11           TEXT,
            reason           TEXT,
            received_at      REAL NOT NULL,
            updated_at       REAL NOT NULL,
            pay_deadline_at  REAL,
            paid_at          REAL
        );
        CREATE INDEX jobs_stage ON jobs (stage);
        CREATE TABLE job_outbox (
            id               INTEGER PRIMARY KEY AUTOINCREMENT,
            request_id       TEXT NOT NULL REFERENCES jobs (request_id),
            purpose          TEXT NOT NULL CHECK (purpose IN
                                 ('processing', 'result', 'payment_required', 'success', 'error')),
            event_id         TEXT NOT NULL UNIQUE,
            event_json       TEXT NOT NULL,
            created_at       REAL NOT NULL,
            accepted_by      INTEGER NOT NULL DEFAULT 0,
            last_attempt_at  REAL,
            UNIQUE (request_id, purpose)
        );
        CREATE TABLE job_publish_results (
            outbox_id  INTEGER NOT NULL REFERENCES job_outbox (id),
            relay      TEXT NOT NULL,
            outcome    TEXT NOT NULL,
            at         REAL NOT NULL,
            PRIMARY KEY (outbox_id, relay)
        );
        CREATE TABLE earnings (
            payment_hash  TEXT PRIMARY KEY REFERENCES wallet_payments (payment_hash),
            request_id    TEXT NOT NULL UNIQUE REFERENCES jobs (request_id),
            amount_msat   INTEGER NOT NULL CHECK (amount_msat > 0),
            credited_at   REAL NOT NULL
        );
        """,
    ),
    (
        4,
        "buy requests",
        """
        CREATE TABLE buy_requests (
            request_id    TEXT PRIMARY KEY,
            kind          INTEGER NOT NULL,
            prompt        TEXT NOT NULL,
            budget_msat   INTEGER NOT NULL CHECK (budget_msat > 0),
            status        TEXT NOT NULL CHECK (status IN ('open', 'paying', 'paid', 'done',
                              'failed', 'expired')),
            provider      TEXT,
            result        TEXT,
            payment_hash  TEXT UNIQUE,
            reason        TEXT,
            created_at    REAL NOT NULL,
            updated_at    REAL NOT NULL,
            deadline_at   REAL NOT NULL
        );
        """,
    ),
    (
        5,
        "earnings milestones",
        """
        CREATE TABLE earnings_milestones (
            sats           INTEGER PRIMARY KEY CHECK (sats > 0),
            reached_at     REAL NOT NULL,
            celebrated_at  REAL
        );
        INSERT INTO earnings_milestones (sats, reached_at)
            SELECT m.sats, (SELECT MAX(credited_at) FROM earnings)
            FROM (SELECT 10 AS sats UNION ALL SELECT 25 UNION ALL SELECT 50 UNION ALL SELECT 100) m
            WHERE (SELECT COALESCE(SUM(amount_msat), 0) FROM earnings) >= m.sats * 1000;
        """,
    ),
    (
        6,
        "just-in-time channel fees: what an LSP quoted for an invoice (what it took is the "
        "inbound payment's fee_msat)",
        """
        ALTER TABLE wallet_invoices ADD COLUMN lsp_fee_msat INTEGER NOT NULL DEFAULT 0
            CHECK (lsp_fee_msat >= 0);
        """,
    ),
    (
        7,
        "on-chain sends and cash-outs: what was shown before confirming, then what the node did",
        """
        CREATE TABLE wallet_onchain_sends (
            id               INTEGER PRIMARY KEY AUTOINCREMENT,
            kind             TEXT NOT NULL CHECK (kind IN ('send', 'cash_out')),
            status           TEXT NOT NULL CHECK (status IN ('closing', 'intent', 'broadcast',
                                 'confirmed', 'failed', 'unknown')),
            address          TEXT NOT NULL,
            fee_rate_sat_vb  INTEGER NOT NULL CHECK (fee_rate_sat_vb > 0),
            quoted_sats      INTEGER CHECK (quoted_sats >= 0),
            quoted_fee_sats  INTEGER NOT NULL CHECK (quoted_fee_sats >= 0),
            quote_exact      INTEGER NOT NULL CHECK (quote_exact IN (0, 1)),
            channels_json    TEXT NOT NULL DEFAULT '[]',
            txid             TEXT UNIQUE,
            sent_sats        INTEGER CHECK (sent_sats >= 0),
            fee_sats         INTEGER CHECK (fee_sats >= 0),
            failure          TEXT,
            created_at       REAL NOT NULL,
            updated_at       REAL NOT NULL
        );
        CREATE INDEX wallet_onchain_sends_open ON wallet_onchain_sends (status)
            WHERE status IN ('closing', 'intent', 'broadcast', 'unknown');
        """,
    ),
    (
        8,
        "history sync: each job and buy transition as a signed event to self, ours or from a "
        "relay, and each relay's last reconciliation",
        """
        CREATE TABLE sync_events (
            event_id    TEXT PRIMARY KEY,
            created_at  INTEGER NOT NULL,
            subject     TEXT NOT NULL,
            step        TEXT NOT NULL,
            rank        INTEGER NOT NULL,
            at          REAL NOT NULL,
            record      TEXT NOT NULL,
            raw         TEXT NOT NULL,
            origin      TEXT NOT NULL CHECK (origin IN ('local', 'relay')),
            stored_at   REAL NOT NULL
        );
        CREATE INDEX sync_events_subject ON sync_events (subject, step);
        CREATE INDEX sync_events_created ON sync_events (created_at);
        CREATE TABLE sync_relays (
            url         TEXT PRIMARY KEY,
            at          REAL NOT NULL,
            method      TEXT NOT NULL,
            have        INTEGER NOT NULL,
            need        INTEGER NOT NULL,
            uploaded    INTEGER NOT NULL,
            fetched     INTEGER NOT NULL,
            refused     INTEGER NOT NULL,
            round_trips INTEGER NOT NULL,
            error       TEXT
        );
        """,
    ),
    (
        9,
        "channel recovery after a restore: the outputs of old channels' closes found on chain "
        "for this seed, and each one's sweep back to the wallet",
        """
        CREATE TABLE channel_recoveries (
            outpoint     TEXT PRIMARY KEY,
            kind         TEXT NOT NULL CHECK (kind IN ('anchor', 'static')),
            key_index    INTEGER NOT NULL,
            sats         INTEGER NOT NULL CHECK (sats > 0),
            height       INTEGER NOT NULL,
            status       TEXT NOT NULL CHECK (status IN ('found', 'sweeping', 'swept',
                             'confirmed', 'too_small')),
            sweep_txid   TEXT,
            sweep_hex    TEXT,
            fee_sats     INTEGER,
            sent_sats    INTEGER,
            error        TEXT,
            created_at   REAL NOT NULL,
            updated_at   REAL NOT NULL
        );
        CREATE TABLE channel_recovery_scan (
            id      INTEGER PRIMARY KEY CHECK (id = 1),
            height  INTEGER NOT NULL
        );
        """,
    ),
    (
        10,
        "sandbox jobs: each job's runtime, limits, state, what it printed, its resource use and "
        "the digests of its workspace's files when it ended",
        """
        CREATE TABLE sandbox_jobs (
            id          TEXT PRIMARY KEY,
            origin      TEXT NOT NULL CHECK (origin IN ('local', 'nip90')),
            request_id  TEXT UNIQUE,
            runtime     TEXT NOT NULL CHECK (runtime IN ('python', 'sh')),
            limits      TEXT NOT NULL,
            state       TEXT NOT NULL CHECK (state IN ('created', 'uploading', 'running',
                            'succeeded', 'failed', 'timed_out', 'cancelled', 'interrupted')),
            entry       TEXT,
            args        TEXT,
            exit_code   INTEGER,
            wall_s      REAL,
            cpu_s       REAL,
            stdout      BLOB,
            stderr      BLOB,
            truncated   INTEGER NOT NULL DEFAULT 0,
            artifacts   TEXT,
            reason      TEXT,
            created_at  REAL NOT NULL,
            started_at  REAL,
            ended_at    REAL
        );
        CREATE INDEX sandbox_jobs_created ON sandbox_jobs (created_at);
        """,
    ),
    (
        11,
        "sandbox jobs: when a job's workspace was removed (its row, output and digests stay)",
        """
        ALTER TABLE sandbox_jobs ADD COLUMN removed_at REAL;
        """,
    ),
    (
        12,
        "Autopilot Chat: threads, their turns, each turn's items, and the append-only event "
        "log (one global sequence) written in the same transaction as every change. Statuses "
        "are checked here; kinds, event types, sandbox modes and approval policies are open "
        "vocabularies (store/chat_records.py) that later engines extend without rebuilding a table",
        """
        CREATE TABLE chat_threads (
            id               TEXT PRIMARY KEY,
            title            TEXT NOT NULL,
            engine           TEXT NOT NULL,
            workspace        TEXT NOT NULL,
            sandbox_mode     TEXT NOT NULL,
            approval_policy  TEXT NOT NULL,
            status           TEXT NOT NULL CHECK (status IN ('active', 'archived')),
            created_at       REAL NOT NULL,
            updated_at       REAL NOT NULL
        );
        CREATE INDEX chat_threads_updated ON chat_threads (updated_at);
        CREATE TABLE chat_turns (
            id          TEXT PRIMARY KEY,
            thread_id   TEXT NOT NULL REFERENCES chat_threads (id),
            n           INTEGER NOT NULL CHECK (n >= 1),
            status      TEXT NOT NULL
                        CHECK (status IN ('running', 'completed', 'failed', 'interrupted')),
            input       TEXT NOT NULL,
            error       TEXT,
            started_at  REAL NOT NULL,
            ended_at    REAL,
            UNIQUE (thread_id, n)
        );
        CREATE UNIQUE INDEX chat_turns_running ON chat_turns (thread_id) WHERE status = 'running';
        CREATE TABLE chat_items (
            id          TEXT PRIMARY KEY,
            thread_id   TEXT NOT NULL REFERENCES chat_threads (id),
            turn_id     TEXT NOT NULL REFERENCES chat_turns (id),
            n           INTEGER NOT NULL CHECK (n >= 1),
            kind        TEXT NOT NULL,
            status      TEXT NOT NULL
                        CHECK (status IN ('started', 'completed', 'failed', 'interrupted')),
            body        TEXT NOT NULL,
            created_at  REAL NOT NULL,
            updated_at  REAL NOT NULL,
            UNIQUE (turn_id, n)
        );
        CREATE INDEX chat_items_thread ON chat_items (thread_id);
        CREATE INDEX chat_items_started ON chat_items (turn_id) WHERE status = 'started';
        CREATE TABLE chat_events (
            seq        INTEGER PRIMARY KEY AUTOINCREMENT,
            thread_id  TEXT NOT NULL REFERENCES chat_threads (id),
            turn_id    TEXT,
            item_id    TEXT,
            type       TEXT NOT NULL,
            body       TEXT NOT NULL,
            at         REAL NOT NULL
        );
        CREATE INDEX chat_events_thread ON chat_events (thread_id, seq);
        """,
    ),
    (
        13,
        "Autopilot Chat's actions: per-thread grants (an exact command prefix allowed or denied "
        "for the rest of the thread) and the file changes a chat made, each with the file's "
        "bytes before it, so it can be reverted byte for byte. An approval lives in its item's "
        "body, changed with an event like the rest of the item",
        """
        CREATE TABLE chat_grants (
            thread_id   TEXT NOT NULL REFERENCES chat_threads (id),
            effect      TEXT NOT NULL CHECK (effect IN ('allow', 'deny')),
            prefix      TEXT NOT NULL,
            item_id     TEXT NOT NULL,
            created_at  REAL NOT NULL,
            PRIMARY KEY (thread_id, effect, prefix)
        );
        CREATE TABLE chat_file_changes (
            item_id        TEXT PRIMARY KEY REFERENCES chat_items (id),
            thread_id      TEXT NOT NULL REFERENCES chat_threads (id),
            path           TEXT NOT NULL,
            before         BLOB,
            before_sha256  TEXT,
            after_sha256   TEXT,
            applied_at     REAL NOT NULL,
            reverted_at    REAL,
            reverted_by    TEXT
        );
        CREATE INDEX chat_file_changes_thread ON chat_file_changes (thread_id, applied_at);
        """,
    ),
    (
        14,
        "fine-tuning (issue #16): tenants with hashed API keys and quotas, their training files "
        "with the check's receipt, jobs with their events and checkpoints (the trainer's own "
        "event number keeps an event from being recorded twice), the promoted models and every "
        "promotion, rollback and refusal with its evidence",
        """
        CREATE TABLE finetune_tenants (
            id                     TEXT PRIMARY KEY,
            key_hash               TEXT UNIQUE,
            key_hint               TEXT NOT NULL,
            quota_active_jobs      INTEGER NOT NULL CHECK (quota_active_jobs >= 0),
            quota_jobs             INTEGER NOT NULL CHECK (quota_jobs >= 0),
            quota_training_tokens  INTEGER NOT NULL CHECK (quota_training_tokens >= 0),
            quota_storage_bytes    INTEGER NOT NULL CHECK (quota_storage_bytes >= 0),
            created_at             REAL NOT NULL,
            revoked_at             REAL
        );
        CREATE TABLE finetune_files (
            id          TEXT PRIMARY KEY,
            tenant_id   TEXT NOT NULL REFERENCES finetune_tenants (id),
            filename    TEXT NOT NULL,
            purpose     TEXT NOT NULL,
            bytes       INTEGER NOT NULL CHECK (bytes >= 0),
            content     TEXT NOT NULL,
            receipt     TEXT NOT NULL,
            created_at  REAL NOT NULL,
            deleted_at  REAL
        );
        CREATE INDEX finetune_files_tenant ON finetune_files (tenant_id, created_at);
        CREATE TABLE finetune_jobs (
            id                TEXT PRIMARY KEY,
            tenant_id         TEXT NOT NULL REFERENCES finetune_tenants (id),
            model             TEXT NOT NULL,
            training_file     TEXT NOT NULL REFERENCES finetune_files (id),
            validation_file   TEXT REFERENCES finetune_files (id),
            holdout_file      TEXT REFERENCES finetune_files (id),
            hyperparameters   TEXT NOT NULL,
            suffix            TEXT,
            seed              INTEGER NOT NULL,
            status            TEXT NOT NULL CHECK (status IN ('validating_files', 'queued',
                                  'running', 'succeeded', 'failed', 'cancelled')),
            cancel_requested  INTEGER NOT NULL DEFAULT 0,
            error             TEXT,
            receipts          TEXT NOT NULL DEFAULT '{}',
            trained_tokens    INTEGER NOT NULL DEFAULT 0,
            step              INTEGER NOT NULL DEFAULT 0,
            total_steps       INTEGER,
            base_eval         TEXT,
            last_seq          INTEGER NOT NULL DEFAULT 0,
            fine_tuned_model  TEXT,
            promotion         TEXT,
            created_at        REAL NOT NULL,
            updated_at        REAL NOT NULL,
            finished_at       REAL
        );
        CREATE INDEX finetune_jobs_tenant ON finetune_jobs (tenant_id, created_at);
        CREATE INDEX finetune_jobs_status ON finetune_jobs (status);
        CREATE TABLE finetune_events (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id       TEXT NOT NULL REFERENCES finetune_jobs (id),
            trainer_seq  INTEGER,
            level        TEXT NOT NULL,
            type         TEXT NOT NULL,
            message      TEXT NOT NULL,
            data         TEXT,
            created_at   REAL NOT NULL,
            UNIQUE (job_id, trainer_seq)
        );
        CREATE INDEX finetune_events_job ON finetune_events (job_id, id);
        CREATE TABLE finetune_checkpoints (
            job_id      TEXT NOT NULL REFERENCES finetune_jobs (id),
            step        INTEGER NOT NULL,
            digest      TEXT NOT NULL,
            train_loss  REAL,
            eval        TEXT,
            created_at  REAL NOT NULL,
            PRIMARY KEY (job_id, step)
        );
        CREATE TABLE finetune_models (
            id          TEXT PRIMARY KEY,
            tenant_id   TEXT NOT NULL REFERENCES finetune_tenants (id),
            base        TEXT NOT NULL,
            job_id      TEXT NOT NULL REFERENCES finetune_jobs (id),
            step        INTEGER NOT NULL,
            revision    TEXT NOT NULL,
            previous    TEXT,
            evidence    TEXT NOT NULL,
            updated_at  REAL NOT NULL
        );
        CREATE TABLE finetune_promotions (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            model_id    TEXT NOT NULL,
            tenant_id   TEXT NOT NULL,
            job_id      TEXT NOT NULL,
            step        INTEGER,
            action      TEXT NOT NULL CHECK (action IN ('promoted', 'refused', 'rolled_back')),
            revision    TEXT,
            previous    TEXT,
            reason      TEXT NOT NULL,
            evidence    TEXT NOT NULL,
            at          REAL NOT NULL
        );
        CREATE INDEX finetune_promotions_job ON finetune_promotions (job_id, id);
        """,
    ),
    (
        15,
        "fine-tuning sold over NIP-90 (kind 5740): each network job with its request and buyer "
        "(the request id is its idempotency key) and the hash of the key that fetches its "
        "adapter; the datasets each buyer sent, by sha256, so a later request can name one",
        """
        CREATE TABLE finetune_network_jobs (
            job_id          TEXT PRIMARY KEY REFERENCES finetune_jobs (id),
            request_id      TEXT NOT NULL UNIQUE,
            buyer_pubkey    TEXT NOT NULL,
            fetch_key_hash  TEXT UNIQUE,
            created_at      REAL NOT NULL
        );
        CREATE TABLE finetune_network_datasets (
            buyer_pubkey  TEXT NOT NULL,
            sha256        TEXT NOT NULL,
            file_id       TEXT NOT NULL REFERENCES finetune_files (id),
            created_at    REAL NOT NULL,
            PRIMARY KEY (buyer_pubkey, sha256)
        );
        """,
    ),
]
