"""sandbox.* commands: jobs that run code in the sandbox (sandbox/service.py, docs/sandbox.md)."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

from autopilotd.codec import Bounds
from autopilotd.commands.system import clamp_timeout
from autopilotd.errors import InvalidParams
from autopilotd.registry import Registry
from autopilotd.runtime.context import Runtime
from autopilotd.sandbox.service import SandboxService

JobId = Annotated[str, Bounds(max_length=64)]
RelPath = Annotated[str, Bounds(max_length=1024)]


def register(reg: Registry, rt: Runtime, sandbox: SandboxService) -> None:
    @reg.command("sandbox.status")
    async def sandbox_status() -> dict[str, Any]:
        """Show whether this machine can run sandboxed code (and why not), the runtimes, the
        most a job may ask for (the sandbox_* settings), job counts by state and recent jobs."""
        section: dict[str, Any] = rt.state.current.to_json(rt.clock.now())["sandbox"]
        return section

    @reg.command("sandbox.create", access="control")
    async def sandbox_create(
        runtime: Literal["python", "sh"] = "python",
        timeout_s: Annotated[float | None, Bounds(minimum=0.1)] = None,
        cpu_s: Annotated[int | None, Bounds(minimum=1)] = None,
        memory_mb: Annotated[int | None, Bounds(minimum=16)] = None,
        processes: Annotated[int | None, Bounds(minimum=1)] = None,
        file_size_mb: Annotated[int | None, Bounds(minimum=1)] = None,
    ) -> dict[str, Any]:
        """Create a sandbox job with an empty workspace: its runtime (python runs the entry
        file in isolated mode; sh runs it with /bin/sh) and its limits. A limit left out is the
        setting's; one above the setting is refused. Then sandbox.upload, sandbox.start."""
        job = await sandbox.create(
            runtime,
            {
                "timeout_s": timeout_s,
                "cpu_s": cpu_s,
                "memory_mb": memory_mb,
                "processes": processes,
                "file_size_mb": file_size_mb,
            },
        )
        return job.to_json()

    @reg.command("sandbox.upload", access="control")
    async def sandbox_upload(
        job_id: JobId, path: RelPath, data_b64: str, extract: bool = False
    ) -> dict[str, Any]:
        """Put a file into a job's workspace before it starts: `path` is relative to the
        workspace, `data_b64` the file's bytes in base64. With extract, the bytes are a tar
        (plain, gz, bz2, xz) or zip archive unpacked into directory `path` ("" for the top):
        links, devices, absolute names, `..` and archive bombs are refused whole."""
        try:
            data = base64.b64decode(data_b64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidParams("parameter 'data_b64' is not base64") from None
        files = await sandbox.upload(job_id, path, data, extract=extract)
        return {"job_id": job_id, "files": files}

    @reg.command("sandbox.start", access="control")
    async def sandbox_start(
        job_id: JobId, entry: RelPath, args: list[str] | None = None
    ) -> dict[str, Any]:
        """Start a job: run its workspace file `entry` with `args`. Returns at once; follow it
        with sandbox.wait or sandbox.get."""
        return (await sandbox.start(job_id, entry, args or [])).to_json()

    @reg.command("sandbox.wait")
    async def sandbox_wait(job_id: JobId, timeout_s: float = 20.0) -> dict[str, Any]:
        """Wait (at most 25 s per call) until a job ended; returns it, with its output."""
        return (await sandbox.wait(job_id, clamp_timeout(timeout_s))).to_json()

    @reg.command("sandbox.get")
    async def sandbox_get(job_id: JobId) -> dict[str, Any]:
        """Show one job: state, limits, exit code, resource use, output (stdout and stderr,
        kept up to its output limit) and each workspace file's size and sha256 at its end."""
        return (await sandbox.get(job_id)).to_json()

    @reg.command("sandbox.download")
    async def sandbox_download(job_id: JobId, path: RelPath) -> dict[str, Any]:
        """Download one regular file of a job's workspace (at most 8 MiB), base64, with its
        sha256. Symlinks and anything outside the workspace are refused."""
        data, digest = await sandbox.download(job_id, path)
        return {
            "job_id": job_id,
            "path": path,
            "size": len(data),
            "sha256": digest,
            "data_b64": base64.b64encode(data).decode(),
        }

    @reg.command("sandbox.cancel", access="control")
    async def sandbox_cancel(job_id: JobId) -> dict[str, Any]:
        """Cancel a job: one not started yet ends cancelled; a running one is killed, with
        every process it started, and ends cancelled. An ended job is left as it is."""
        return (await sandbox.cancel(job_id)).to_json()

    @reg.command("sandbox.remove", access="control")
    async def sandbox_remove(job_id: JobId) -> dict[str, Any]:
        """Delete an ended job's workspace and every file in it, to free the disk. The job
        stays listed, with its output and its files' digests; its files can no longer be
        downloaded. A job that has not ended is refused: cancel it first."""
        return (await sandbox.remove(job_id)).to_json(output=False)

    @reg.command("sandbox.list")
    async def sandbox_list(
        limit: Annotated[int, Bounds(1, 500)] = 50,
        state: Literal[
            "created",
            "uploading",
            "running",
            "succeeded",
            "failed",
            "timed_out",
            "cancelled",
            "interrupted",
        ]
        | None = None,
    ) -> dict[str, Any]:
        """List sandbox jobs, newest first (without their output: sandbox.get has it)."""
        jobs = await sandbox.jobs.recent(limit, state)
        return {"jobs": [j.to_json(output=False) for j in jobs]}
