"""Sandbox jobs' table (sandbox/service.py): one row per job, moving forward only.

    created → uploading → running → succeeded | failed | timed_out | cancelled
                                  ↘ interrupted (the daemon stopped while it ran)

A job sold over NIP-90 whose files could not go into its workspace ends `failed` before it
runs; one the user cancels before it starts ends `cancelled`.

A job is recorded `running` before its run starts, and its end (exit code, what it printed, its
resource use, the digests of its workspace's files) in the same write that ends it, so a
restart finds every job either ended or `running`, and ends the latter `interrupted`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from autopilotd.errors import Conflict
from autopilotd.store.db import Row, Sql

COLUMNS = (
    "id, origin, request_id, runtime, limits, state, entry, args, exit_code, wall_s, cpu_s, "
    "stdout, stderr, truncated, artifacts, reason, created_at, started_at, ended_at, removed_at"
)
ENDED = frozenset({"succeeded", "failed", "timed_out", "cancelled", "interrupted"})
NEXT: dict[str, frozenset[str]] = {
    "created": frozenset({"uploading", "running", "cancelled", "failed"}),
    "uploading": frozenset({"running", "cancelled", "failed"}),
    "running": ENDED,
}


@dataclass(frozen=True)
class SandboxJob:
    id: str
    origin: str  # local (the control plane) | nip90 (sold to a buyer)
    request_id: str | None
    runtime: str  # python | sh
    limits: dict[str, Any]
    state: str
    entry: str | None
    args: list[str]
    exit_code: int | None
    wall_s: float | None
    cpu_s: float | None
    stdout: bytes
    stderr: bytes
    truncated: bool
    artifacts: list[dict[str, Any]]
    reason: str | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    removed_at: float | None = None  # its workspace was removed (sandbox.remove)

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    @classmethod
    def from_row(cls, row: Row) -> SandboxJob:
        v = list(row)
        return cls(
            id=v[0],
            origin=v[1],
            request_id=v[2],
            runtime=v[3],
            limits=json.loads(v[4]),
            state=v[5],
            entry=v[6],
            args=json.loads(v[7]) if v[7] else [],
            exit_code=v[8],
            wall_s=v[9],
            cpu_s=v[10],
            stdout=bytes(v[11] or b""),
            stderr=bytes(v[12] or b""),
            truncated=bool(v[13]),
            artifacts=json.loads(v[14]) if v[14] else [],
            reason=v[15],
            created_at=v[16],
            started_at=v[17],
            ended_at=v[18],
            removed_at=v[19],
        )

    def to_json(self, *, output: bool = True) -> dict[str, Any]:
        """The job as the control plane shows it; output as text (undecodable bytes replaced)."""
        shown: dict[str, Any] = {
            "id": self.id,
            "origin": self.origin,
            "request_id": self.request_id,
            "runtime": self.runtime,
            "limits": self.limits,
            "state": self.state,
            "entry": self.entry,
            "args": self.args,
            "exit_code": self.exit_code,
            "wall_s": self.wall_s,
            "cpu_s": self.cpu_s,
            "truncated": self.truncated,
            "artifacts": self.artifacts,
            "reason": self.reason,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "removed_at": self.removed_at,
        }
        if output:
            shown["stdout"] = self.stdout.decode(errors="replace")
            shown["stderr"] = self.stderr.decode(errors="replace")
        return shown


class SandboxJobs:
    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    async def create(
        self,
        job_id: str,
        runtime: str,
        limits: dict[str, Any],
        *,
        origin: str = "local",
        request_id: str | None = None,
    ) -> SandboxJob:
        async with self._sql.write() as tx:
            await tx.execute(
                "INSERT INTO sandbox_jobs (id, origin, request_id, runtime, limits, state, "
                "created_at) VALUES (?, ?, ?, ?, ?, 'created', ?)",
                (job_id, origin, request_id, runtime, json.dumps(limits), time.time()),
            )
        job = await self.get(job_id)
        assert job is not None
        return job

    async def get(self, job_id: str) -> SandboxJob | None:
        row = await self._sql.fetchone(
            f"SELECT {COLUMNS} FROM sandbox_jobs WHERE id = ?", (job_id,)
        )
        return None if row is None else SandboxJob.from_row(row)

    async def for_request(self, request_id: str) -> SandboxJob | None:
        row = await self._sql.fetchone(
            f"SELECT {COLUMNS} FROM sandbox_jobs WHERE request_id = ?", (request_id,)
        )
        return None if row is None else SandboxJob.from_row(row)

    async def recent(self, limit: int, state: str | None = None) -> list[SandboxJob]:
        where, params = ("WHERE state = ?", (state,)) if state else ("", ())
        rows = await self._sql.fetchall(
            f"SELECT {COLUMNS} FROM sandbox_jobs {where} ORDER BY created_at DESC, id LIMIT ?",
            (*params, limit),
        )
        return [SandboxJob.from_row(r) for r in rows]

    async def counts(self) -> dict[str, int]:
        rows = await self._sql.fetchall("SELECT state, COUNT(*) FROM sandbox_jobs GROUP BY state")
        return {str(state): int(n) for state, n in rows}

    async def move(self, job_id: str, state: str, **fields: Any) -> SandboxJob:
        """Move the job to `state` with `fields` (JSON-encoded where they are lists or dicts),
        if its current state allows it; Conflict otherwise."""
        encoded = {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in fields.items()}
        allowed = [s for s, nxt in NEXT.items() if state in nxt]
        names = "".join(f", {k} = ?" for k in encoded)
        marks = ", ".join("?" for _ in allowed)
        async with self._sql.write() as tx:
            changed = await tx.execute(
                f"UPDATE sandbox_jobs SET state = ?{names} WHERE id = ? AND state IN ({marks})",
                (state, *encoded.values(), job_id, *allowed),
            )
        job = await self.get(job_id)
        if job is None:
            raise Conflict(f"no sandbox job {job_id}")
        if not changed and job.state != state:
            raise Conflict(f"sandbox job {job_id} is {job.state}: it cannot become {state}")
        return job

    async def removed(self, job_id: str) -> None:
        """Record that the job's workspace is gone (its row stays)."""
        async with self._sql.write() as tx:
            await tx.execute(
                "UPDATE sandbox_jobs SET removed_at = ? WHERE id = ?", (time.time(), job_id)
            )

    async def interrupt_running(self, reason: str) -> list[str]:
        """After a restart: every job still `running` ends `interrupted` (its run died with the
        daemon that started it). Returns their ids."""
        rows = await self._sql.fetchall("SELECT id FROM sandbox_jobs WHERE state = 'running'")
        async with self._sql.write() as tx:
            await tx.execute(
                "UPDATE sandbox_jobs SET state = 'interrupted', reason = ?, ended_at = ? "
                "WHERE state = 'running'",
                (reason, time.time()),
            )
        return [str(r[0]) for r in rows]
