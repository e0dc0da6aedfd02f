"""Fine-tuning's tables (finetune/service.py): tenants, files, jobs, events, checkpoints,
promoted models and the promotion log.

A tenant's API key is never stored: only its sha256 (`key_hash`, NULL once revoked). A job
moves forward only (its states, and the records read and written here, are in
store/finetune_records.py). A trainer event is recorded once: `UNIQUE(job_id, trainer_seq)`,
and the job's `last_seq` moves in the same transaction, so a restart asks the trainer only for
what came after it and never records an event twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from autopilotd.errors import Conflict
from autopilotd.store.db import Sql
from autopilotd.store.finetune_records import (
    ACTIVE,
    ENDED,
    NEXT,
    FtCheckpoint,
    FtEvent,
    FtFile,
    FtJob,
    FtModel,
    NewEvent,
    Tenant,
    load_json,
)


class FineTuning:
    """The repository of every fine-tuning table."""

    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    # -- tenants -------------------------------------------------------------------------

    async def add_tenant(
        self, tenant_id: str, key_hash: str | None, key_hint: str, quotas: dict[str, int]
    ) -> Tenant:
        async with self._sql.write() as tx:
            await tx.execute(
                "INSERT INTO finetune_tenants (id, key_hash, key_hint, quota_active_jobs, "
                "quota_jobs, quota_training_tokens, quota_storage_bytes, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    tenant_id,
                    key_hash,
                    key_hint,
                    quotas["active_jobs"],
                    quotas["jobs"],
                    quotas["training_tokens"],
                    quotas["storage_bytes"],
                    time.time(),
                ),
            )
        tenant = await self.tenant(tenant_id)
        assert tenant is not None
        return tenant

    async def tenant(self, tenant_id: str) -> Tenant | None:
        row = await self._sql.fetchone(
            f"SELECT {Tenant.COLUMNS} FROM finetune_tenants WHERE id = ?", (tenant_id,)
        )
        return None if row is None else Tenant.from_row(row)

    async def tenant_by_key_hash(self, key_hash: str) -> tuple[Tenant, str] | None:
        """The live tenant whose key has this hash, with the stored hash (to compare)."""
        row = await self._sql.fetchone(
            f"SELECT {Tenant.COLUMNS}, key_hash FROM finetune_tenants "
            "WHERE key_hash = ? AND revoked_at IS NULL",
            (key_hash,),
        )
        return None if row is None else (Tenant.from_row(row[:-1]), str(row[-1]))

    async def tenants(self) -> list[Tenant]:
        rows = await self._sql.fetchall(
            f"SELECT {Tenant.COLUMNS} FROM finetune_tenants ORDER BY created_at, id"
        )
        return [Tenant.from_row(r) for r in rows]

    async def revoke_tenant(self, tenant_id: str) -> None:
        async with self._sql.write() as tx:
            await tx.execute(
                "UPDATE finetune_tenants SET key_hash = NULL, revoked_at = ? "
                "WHERE id = ? AND revoked_at IS NULL",
                (time.time(), tenant_id),
            )

    async def set_quotas(self, tenant_id: str, quotas: dict[str, int]) -> None:
        names = ", ".join(f"quota_{k} = ?" for k in quotas)
        async with self._sql.write() as tx:
            await tx.execute(
                f"UPDATE finetune_tenants SET {names} WHERE id = ?", (*quotas.values(), tenant_id)
            )

    async def usage(self, tenant_id: str) -> dict[str, int]:
        marks = ", ".join("?" for _ in ACTIVE)
        row = await self._sql.fetchone(
            "SELECT "
            f"(SELECT COUNT(*) FROM finetune_jobs WHERE tenant_id = ?1 AND status IN ({marks})),"
            " (SELECT COUNT(*) FROM finetune_jobs WHERE tenant_id = ?1),"
            " (SELECT COALESCE(SUM(trained_tokens), 0) FROM finetune_jobs WHERE tenant_id = ?1),"
            " (SELECT COALESCE(SUM(bytes), 0) FROM finetune_files"
            "  WHERE tenant_id = ?1 AND deleted_at IS NULL)",
            (tenant_id, *ACTIVE),
        )
        assert row is not None
        return {
            "active_jobs": int(row[0]),
            "jobs": int(row[1]),
            "training_tokens": int(row[2]),
            "storage_bytes": int(row[3]),
        }

    # -- files ---------------------------------------------------------------------------

    async def add_file(
        self,
        file_id: str,
        tenant_id: str,
        filename: str,
        purpose: str,
        content: str,
        receipt: dict[str, Any],
    ) -> FtFile:
        async with self._sql.write() as tx:
            await tx.execute(
                "INSERT INTO finetune_files (id, tenant_id, filename, purpose, bytes, content, "
                "receipt, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    file_id,
                    tenant_id,
                    filename,
                    purpose,
                    len(content.encode()),
                    content,
                    json.dumps(receipt),
                    time.time(),
                ),
            )
        found = await self.file(file_id)
        assert found is not None
        return found

    async def file(self, file_id: str) -> FtFile | None:
        row = await self._sql.fetchone(
            f"SELECT {FtFile.COLUMNS} FROM finetune_files WHERE id = ? AND deleted_at IS NULL",
            (file_id,),
        )
        return None if row is None else FtFile.from_row(row)

    async def file_content(self, file_id: str) -> str:
        row = await self._sql.fetchone(
            "SELECT content FROM finetune_files WHERE id = ?", (file_id,)
        )
        return "" if row is None else str(row[0])

    async def files(self, tenant_id: str) -> list[FtFile]:
        rows = await self._sql.fetchall(
            f"SELECT {FtFile.COLUMNS} FROM finetune_files "
            "WHERE tenant_id = ? AND deleted_at IS NULL ORDER BY created_at DESC, id",
            (tenant_id,),
        )
        return [FtFile.from_row(r) for r in rows]

    async def delete_file(self, file_id: str) -> None:
        """The file's bytes go (its row stays, for the jobs that name it)."""
        async with self._sql.write() as tx:
            await tx.execute(
                "UPDATE finetune_files SET deleted_at = ?, content = '' WHERE id = ?",
                (time.time(), file_id),
            )

    # -- jobs ----------------------------------------------------------------------------

    async def add_job(self, job: dict[str, Any], network: tuple[str, str] | None = None) -> FtJob:
        """A new job; with `network` (request id, buyer's pubkey) its NIP-90 request too, in
        the same transaction (the request id is then the job's idempotency key)."""
        now = time.time()
        async with self._sql.write() as tx:
            await tx.execute(
                "INSERT INTO finetune_jobs (id, tenant_id, model, training_file, "
                "validation_file, holdout_file, hyperparameters, suffix, seed, status, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "'validating_files', ?, ?)",
                (
                    job["id"],
                    job["tenant_id"],
                    job["model"],
                    job["training_file"],
                    job["validation_file"],
                    job["holdout_file"],
                    json.dumps(job["hyperparameters"]),
                    job["suffix"],
                    job["seed"],
                    now,
                    now,
                ),
            )
            if network is not None:
                await tx.execute(
                    "INSERT INTO finetune_network_jobs (job_id, request_id, buyer_pubkey, "
                    "created_at) VALUES (?, ?, ?, ?)",
                    (job["id"], network[0], network[1], now),
                )
        return await self.job(job["id"])

    async def network_job_for(self, request_id: str) -> str | None:
        """The job made for a NIP-90 request, if there is one."""
        row = await self._sql.fetchone(
            "SELECT job_id FROM finetune_network_jobs WHERE request_id = ?", (request_id,)
        )
        return None if row is None else str(row[0])

    async def network_job(self, job_id: str) -> tuple[str, str, str | None] | None:
        """A network job's request id, buyer and fetch key's hash (None: not a network job)."""
        row = await self._sql.fetchone(
            "SELECT request_id, buyer_pubkey, fetch_key_hash FROM finetune_network_jobs "
            "WHERE job_id = ?",
            (job_id,),
        )
        return None if row is None else (str(row[0]), str(row[1]), row[2])

    async def set_fetch_key(self, job_id: str, key_hash: str) -> None:
        async with self._sql.write() as tx:
            await tx.execute(
                "UPDATE finetune_network_jobs SET fetch_key_hash = ? WHERE job_id = ?",
                (key_hash, job_id),
            )

    async def add_dataset(self, buyer_pubkey: str, sha256: str, file_id: str) -> None:
        async with self._sql.write() as tx:
            await tx.execute(
                "INSERT OR IGNORE INTO finetune_network_datasets (buyer_pubkey, sha256, "
                "file_id, created_at) VALUES (?, ?, ?, ?)",
                (buyer_pubkey, sha256, file_id, time.time()),
            )

    async def dataset(self, buyer_pubkey: str, sha256: str) -> str | None:
        """The file a buyer sent with this digest, while it is kept."""
        row = await self._sql.fetchone(
            "SELECT d.file_id FROM finetune_network_datasets d JOIN finetune_files f "
            "ON f.id = d.file_id WHERE d.buyer_pubkey = ? AND d.sha256 = ? "
            "AND f.deleted_at IS NULL",
            (buyer_pubkey, sha256),
        )
        return None if row is None else str(row[0])

    async def datasets(self) -> dict[tuple[str, str], int]:
        """(buyer, sha256) → bytes, of every dataset kept for a buyer."""
        rows = await self._sql.fetchall(
            "SELECT d.buyer_pubkey, d.sha256, f.bytes FROM finetune_network_datasets d "
            "JOIN finetune_files f ON f.id = d.file_id WHERE f.deleted_at IS NULL"
        )
        return {(str(r[0]), str(r[1])): int(r[2]) for r in rows}

    async def job(self, job_id: str) -> FtJob:
        row = await self._sql.fetchone(
            f"SELECT {FtJob.COLUMNS} FROM finetune_jobs WHERE id = ?", (job_id,)
        )
        if row is None:
            raise Conflict(f"no fine-tuning job {job_id}")
        return FtJob.from_row(row)

    async def find_job(self, job_id: str) -> FtJob | None:
        row = await self._sql.fetchone(
            f"SELECT {FtJob.COLUMNS} FROM finetune_jobs WHERE id = ?", (job_id,)
        )
        return None if row is None else FtJob.from_row(row)

    async def jobs(
        self, tenant_id: str | None = None, *, limit: int = 50, after: str | None = None
    ) -> list[FtJob]:
        """Newest first; `after` a job id: the ones created before it (OpenAI's paging)."""
        where, params = ["1 = 1"], []
        if tenant_id is not None:
            where.append("tenant_id = ?")
            params.append(tenant_id)
        if after is not None:
            where.append(
                "(created_at, id) < (SELECT created_at, id FROM finetune_jobs WHERE id = ?)"
            )
            params.append(after)
        rows = await self._sql.fetchall(
            f"SELECT {FtJob.COLUMNS} FROM finetune_jobs WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, id DESC LIMIT ?",
            (*params, limit),
        )
        return [FtJob.from_row(r) for r in rows]

    async def active_jobs(self) -> list[FtJob]:
        marks = ", ".join("?" for _ in ACTIVE)
        rows = await self._sql.fetchall(
            f"SELECT {FtJob.COLUMNS} FROM finetune_jobs WHERE status IN ({marks}) "
            "ORDER BY created_at, id",
            ACTIVE,
        )
        return [FtJob.from_row(r) for r in rows]

    async def waiting_jobs(self) -> list[FtJob]:
        """Jobs that succeeded whose promotion waits for psionic (busy or not answering)."""
        rows = await self._sql.fetchall(
            f"SELECT {FtJob.COLUMNS} FROM finetune_jobs WHERE status = 'succeeded' "
            "AND json_extract(promotion, '$.state') = 'waiting' ORDER BY created_at, id"
        )
        return [FtJob.from_row(r) for r in rows]

    async def counts(self) -> dict[str, int]:
        rows = await self._sql.fetchall(
            "SELECT status, COUNT(*) FROM finetune_jobs GROUP BY status"
        )
        return {str(s): int(n) for s, n in rows}

    async def update_job(self, job_id: str, **fields: Any) -> FtJob:
        """Set `fields` (JSON-encoded where they are dicts); a `status` must be a move the
        job's current status allows, else Conflict."""
        encoded = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in fields.items()}
        encoded["updated_at"] = time.time()
        status = encoded.get("status")
        names = ", ".join(f"{k} = ?" for k in encoded)
        where, params = "id = ?", [job_id]
        if status is not None:
            allowed = [s for s, nxt in NEXT.items() if status in nxt]
            where += f" AND status IN ({', '.join('?' for _ in allowed)})"
            params += allowed
            if status in ENDED:
                encoded["finished_at"] = time.time()
                names += ", finished_at = ?"
        async with self._sql.write() as tx:
            changed = await tx.execute(
                f"UPDATE finetune_jobs SET {names} WHERE {where}",
                (*encoded.values(), *params),
            )
        job = await self.job(job_id)
        if status is not None and not changed and job.status != status:
            raise Conflict(f"fine-tuning job {job_id} is {job.status}: it cannot become {status}")
        return job

    # -- events and checkpoints ----------------------------------------------------------

    async def add_events(
        self,
        job_id: str,
        events: Sequence[NewEvent],
        *,
        last_seq: int | None = None,
        checkpoints: Sequence[FtCheckpoint] = (),
        evals: Mapping[int, dict[str, Any]] | None = None,
        **job_fields: Any,
    ) -> list[NewEvent]:
        """Record events (a trainer event already recorded is skipped), the checkpoints and
        checkpoint evals they bring, the trainer's last event number and the job's changed
        fields: one transaction. Returns the events that were new."""
        now = time.time()
        encoded = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in job_fields.items()}
        if last_seq is not None:
            encoded["last_seq"] = last_seq
        if job_fields.get("status") in ENDED:
            encoded["finished_at"] = now
        new: list[NewEvent] = []
        async with self._sql.write() as tx:
            for e in events:
                added = await tx.execute(
                    "INSERT OR IGNORE INTO finetune_events (job_id, trainer_seq, level, type, "
                    "message, data, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        job_id,
                        e.trainer_seq,
                        e.level,
                        e.type,
                        e.message,
                        None if e.data is None else json.dumps(e.data),
                        now,
                    ),
                )
                if added:
                    new.append(e)
            for c in checkpoints:
                await tx.execute(
                    "INSERT INTO finetune_checkpoints (job_id, step, digest, train_loss, eval, "
                    "created_at) VALUES (?, ?, ?, ?, NULL, ?) ON CONFLICT (job_id, step) DO "
                    "UPDATE SET digest = excluded.digest, train_loss = excluded.train_loss",
                    (job_id, c.step, c.digest, c.train_loss, c.created_at),
                )
            for step, result in (evals or {}).items():
                await tx.execute(
                    "UPDATE finetune_checkpoints SET eval = ? WHERE job_id = ? AND step = ?",
                    (json.dumps(result), job_id, step),
                )
            if encoded:
                encoded["updated_at"] = now
                names = ", ".join(f"{k} = ?" for k in encoded)
                await tx.execute(
                    f"UPDATE finetune_jobs SET {names} WHERE id = ?", (*encoded.values(), job_id)
                )
        return new

    async def events(self, job_id: str, *, after: int = 0, limit: int = 100) -> list[FtEvent]:
        rows = await self._sql.fetchall(
            "SELECT id, job_id, trainer_seq, level, type, message, data, created_at "
            "FROM finetune_events WHERE job_id = ? AND id > ? ORDER BY id LIMIT ?",
            (job_id, after, limit),
        )
        return [FtEvent(*(*r[:6], load_json(r[6]), r[7])) for r in rows]

    async def events_newest_first(
        self, job_id: str, *, before: int | None, limit: int
    ) -> list[FtEvent]:
        rows = await self._sql.fetchall(
            "SELECT id, job_id, trainer_seq, level, type, message, data, created_at "
            "FROM finetune_events WHERE job_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
            (job_id, 2**62 if before is None else before, limit),
        )
        return [FtEvent(*(*r[:6], load_json(r[6]), r[7])) for r in rows]

    async def losses(self, job_id: str) -> list[tuple[int, float]]:
        """(step, training loss) of the job's steps, the last line for a step that was redone."""
        rows = await self._sql.fetchall(
            "SELECT data FROM finetune_events WHERE job_id = ? AND type = 'metrics' ORDER BY id",
            (job_id,),
        )
        by_step: dict[int, float] = {}
        for (data,) in rows:
            d = json.loads(data)
            if d.get("train_loss") is not None:
                by_step[int(d["step"])] = float(d["train_loss"])
        return sorted(by_step.items())

    async def checkpoints(self, job_id: str) -> list[FtCheckpoint]:
        rows = await self._sql.fetchall(
            "SELECT job_id, step, digest, train_loss, eval, created_at FROM finetune_checkpoints "
            "WHERE job_id = ? ORDER BY step",
            (job_id,),
        )
        return [FtCheckpoint(r[0], r[1], r[2], r[3], load_json(r[4]), r[5]) for r in rows]

    # -- models and promotions -----------------------------------------------------------

    async def promoted(
        self,
        model: FtModel,
        *,
        action: str,
        reason: str,
    ) -> None:
        """Record a promotion (or rollback) and make `model` the inventory's row for its id,
        with the job's promotion state: one transaction."""
        async with self._sql.write() as tx:
            await tx.execute(
                "INSERT INTO finetune_models (id, tenant_id, base, job_id, step, revision, "
                "previous, evidence, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET job_id = excluded.job_id, step = excluded.step, "
                "revision = excluded.revision, previous = excluded.previous, "
                "evidence = excluded.evidence, updated_at = excluded.updated_at",
                (
                    model.id,
                    model.tenant_id,
                    model.base,
                    model.job_id,
                    model.step,
                    model.revision,
                    model.previous,
                    json.dumps(model.evidence),
                    model.updated_at,
                ),
            )
            await self._log(
                tx,
                model.id,
                model.tenant_id,
                model.job_id,
                model.step,
                action,
                model.revision,
                model.previous,
                reason,
                model.evidence,
            )
            await tx.execute(
                "UPDATE finetune_jobs SET fine_tuned_model = ?, promotion = ?, updated_at = ? "
                "WHERE id = ?",
                (
                    model.id,
                    json.dumps(
                        {
                            "state": action,
                            "step": model.step,
                            "revision": model.revision,
                            "reason": reason,
                        }
                    ),
                    model.updated_at,
                    model.job_id,
                ),
            )

    async def refused(
        self, job: FtJob, model_id: str, step: int | None, reason: str, evidence: dict[str, Any]
    ) -> None:
        """Record a refused promotion, and the job's promotion state: held, unless one of its
        checkpoints is served already (then that stays, with the refusal noted)."""
        async with self._sql.write() as tx:
            await self._log(
                tx, model_id, job.tenant_id, job.id, step, "refused", None, None, reason, evidence
            )
            held = {"state": "held", "step": step, "revision": None, "reason": reason}
            if job.promotion and job.promotion.get("state") in ("promoted", "rolled_back"):
                held = job.promotion | {"last_refusal": reason}  # what is served stays
            await tx.execute(
                "UPDATE finetune_jobs SET promotion = ?, updated_at = ? WHERE id = ?",
                (json.dumps(held), time.time(), job.id),
            )

    async def _log(self, tx: Any, *values: Any) -> None:
        *head, evidence = values
        await tx.execute(
            "INSERT INTO finetune_promotions (model_id, tenant_id, job_id, step, action, "
            "revision, previous, reason, evidence, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*head, json.dumps(evidence), time.time()),
        )

    async def model(self, model_id: str) -> FtModel | None:
        row = await self._sql.fetchone(
            "SELECT id, tenant_id, base, job_id, step, revision, previous, evidence, updated_at "
            "FROM finetune_models WHERE id = ?",
            (model_id,),
        )
        if row is None:
            return None
        return FtModel(*(*row[:7], json.loads(row[7]), row[8]))

    async def models(self, tenant_id: str | None = None) -> list[FtModel]:
        where, params = ("WHERE tenant_id = ?", (tenant_id,)) if tenant_id else ("", ())
        rows = await self._sql.fetchall(
            "SELECT id, tenant_id, base, job_id, step, revision, previous, evidence, updated_at "
            f"FROM finetune_models {where} ORDER BY updated_at DESC, id",
            params,
        )
        return [FtModel(*(*r[:7], json.loads(r[7]), r[8])) for r in rows]

    async def promoted_as(self, model_id: str, revision: str) -> tuple[str, int] | None:
        """The job and step whose promotion made `revision` of the model (for a rollback)."""
        row = await self._sql.fetchone(
            "SELECT job_id, step FROM finetune_promotions WHERE model_id = ? AND revision = ? "
            "AND action = 'promoted' ORDER BY id DESC LIMIT 1",
            (model_id, revision),
        )
        return None if row is None else (str(row[0]), int(row[1]))

    async def promotions(self, job_id: str) -> list[dict[str, Any]]:
        rows = await self._sql.fetchall(
            "SELECT model_id, step, action, revision, previous, reason, evidence, at "
            "FROM finetune_promotions WHERE job_id = ? ORDER BY id",
            (job_id,),
        )
        keys = ("model", "step", "action", "revision", "previous", "reason", "evidence", "at")
        return [dict(zip(keys, (*r[:6], json.loads(r[6]), r[7]), strict=True)) for r in rows]
