"""The sandbox job service: create a job, upload its files, start it, wait, download.

Every job is a row (store/sandbox.py) and a workspace directory of its own under the sandbox
root; the workspace is the only place its run can write, and the daemon reads and writes it
only through sandbox/workspace.py (no `..`, no symlink, no archive bomb gets past it). Jobs
come from the control plane (`sandbox.*` commands, `autopilotctl sandbox`, MCP) and from
buyers on the network (NIP-90 kind 5720, `run_for_request`); both are the same kind of job.

A job's limits are the settings (`sandbox_*`) unless it asks for less. A run is recorded
`running` before it starts and its end (exit code, output, resource use, the digests of every
workspace file) in the write that ends it. Runs are tasks of this service's TaskGroup: a
cancelled job's run is killed with its process group; when the daemon stops, each run dies
with it (bwrap's `--die-with-parent`, and its PID namespace), and at the next start every job
still `running` ends `interrupted`. Owns the snapshot's `sandbox` section.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import shutil
import stat
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from autopilotd.config import Config
from autopilotd.errors import Conflict, NotFound, UserError
from autopilotd.ports.sandbox import Limits, Outcome, RunResult, Sandbox, SandboxUnavailable
from autopilotd.runtime.configs import LiveConfig
from autopilotd.runtime.events import EventBus
from autopilotd.runtime.sections import SandboxSection
from autopilotd.runtime.started import Started
from autopilotd.runtime.state import SectionWriter
from autopilotd.sandbox import workspace
from autopilotd.store.sandbox import SandboxJob, SandboxJobs

logger = logging.getLogger(__name__)

RECENT = 20
DOWNLOAD_MAX_BYTES = 8 << 20
INTERRUPTED = "the daemon stopped while it ran"
LIMIT_SETTINGS = {
    "timeout_s": "sandbox_timeout_s",
    "cpu_s": "sandbox_cpu_s",
    "memory_mb": "sandbox_memory_mb",
    "processes": "sandbox_processes",
    "file_size_mb": "sandbox_file_size_mb",
}


def settings_limits(config: Config) -> Limits:
    """The limits the sandbox_* settings give a run."""
    return Limits(**{k: getattr(config, s) for k, s in LIMIT_SETTINGS.items()})


def sandbox_root(config: Config) -> Path:
    """Where workspaces live: `sandbox_dir`, else `<data>/sandbox`. As root, a run's own user
    id must be able to reach its workspace, and a data directory under a private home is not
    reachable: then `/var/lib/autopilotd/sandbox/<this data directory's id>`."""
    if config.sandbox_dir:
        return Path(config.sandbox_dir).expanduser()
    data_dir = config.paths.data_dir
    if os.geteuid() == 0:
        tag = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
        return Path("/var/lib/autopilotd/sandbox") / tag
    return data_dir / "sandbox"


def reachable_by_all(path: Path) -> bool:
    """Whether any user may reach `path` (every directory above it searchable by others)."""
    for parent in path.resolve().parents:
        try:
            if not parent.stat().st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


def python_runtime() -> str:
    """The Python a job runs (always in isolated mode: no user site, no environment): the
    project's own interpreter where a run can reach it; else the system's of the same version;
    else the system's python3. (A root daemon's interpreter under a private home, pyenv's in
    /root say, cannot be reached by a run's own user id, nor bound into its sandbox.)"""
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    base = Path(sys.base_prefix) / "bin" / version
    if base.exists() and (str(base.resolve()).startswith("/usr/") or reachable_by_all(base)):
        return str(base)
    system = "/usr/local/bin:/usr/bin:/bin"
    return (
        shutil.which(version, path=system)
        or shutil.which("python3", path=system)
        or ("/usr/bin/python3")
    )


class SandboxService:
    name = "sandbox"

    def __init__(
        self,
        *,
        sandbox: Sandbox,
        jobs: SandboxJobs,
        writer: SectionWriter[SandboxSection],
        events: EventBus,
        config: LiveConfig,
        root: Path,
        python: str,
        caps: workspace.Caps | None = None,
    ) -> None:
        self._sandbox = sandbox
        self.jobs = jobs
        self._writer = writer
        self._events = events
        self._config = config
        self._root = root
        self._python = python
        self._caps = caps or workspace.Caps()
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()
        self._tg: asyncio.TaskGroup | None = None
        self._started = Started("the sandbox service")

    # -- the service ---------------------------------------------------------------------

    async def run(self, ready: Callable[[], None]) -> None:
        for job_id in await self.jobs.interrupt_running(INTERRUPTED):
            self._events.publish("sandbox.interrupted", job_id=job_id)
        reason = await asyncio.to_thread(self._sandbox.unavailable)
        self._writer.set(
            state="unavailable" if reason else "ready",
            reason=reason or "sandboxed runs are available",
            runtimes={"python": f"{self._python} -I", "sh": "/bin/sh"},
            limits=asdict(self.default_limits()),
        )
        await self._show()
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            self._started.set()
            ready()
            await asyncio.Event().wait()

    def default_limits(self) -> Limits:
        return settings_limits(self._config.current)

    def limits(self, asked: Mapping[str, float | None]) -> Limits:
        """The settings' limits, lowered where the job asks for less; more is refused."""
        chosen = asdict(self.default_limits())
        for name, value in asked.items():
            if value is None:
                continue
            if name not in LIMIT_SETTINGS:
                raise UserError(f"unknown limit {name!r}")
            if value <= 0 or value > chosen[name]:
                raise UserError(
                    f"{name} must be above 0 and at most {chosen[name]} "
                    f"(the setting {LIMIT_SETTINGS[name]})"
                )
            kind = type(chosen[name])
            chosen[name] = kind(value)
        return Limits(**chosen)

    def unavailable(self) -> str | None:
        section = self._writer.current
        return section.reason if section.state == "unavailable" else None

    # -- the commands --------------------------------------------------------------------

    async def create(
        self,
        runtime: str,
        limits: Mapping[str, float | None],
        *,
        origin: str = "local",
        request_id: str | None = None,
    ) -> SandboxJob:
        chosen = self.limits(limits)
        job_id = "sbx-" + secrets.token_hex(8)
        await asyncio.to_thread(self._make_workspace, job_id)
        job = await self.jobs.create(
            job_id, runtime, asdict(chosen), origin=origin, request_id=request_id
        )
        self._events.publish("sandbox.created", job_id=job_id, runtime=runtime, origin=origin)
        await self._show()
        return job

    async def upload(self, job_id: str, path: str, data: bytes, *, extract: bool) -> list[Any]:
        """Write a file (or unpack a tar or zip archive into directory `path`) into the
        job's workspace, before it starts."""
        job = await self.get(job_id)
        if job.state not in ("created", "uploading"):
            raise Conflict(f"sandbox job {job_id} is {job.state}: uploads go in before start")
        ws = self.workspace(job_id)
        try:
            if extract:
                infos = await asyncio.to_thread(
                    workspace.extract_archive, ws, data, path, self._caps
                )
            else:
                infos = [await asyncio.to_thread(workspace.write_file, ws, path, data, self._caps)]
        except workspace.WorkspaceError as exc:
            raise UserError(f"upload refused: {exc}") from None
        if job.state == "created":
            await self.jobs.move(job_id, "uploading")
            await self._show()
        return [asdict(i) for i in infos]

    async def start(self, job_id: str, entry: str, args: list[str]) -> SandboxJob:
        """Start the job's run: `entry`, one of its workspace files, with `args`."""
        job = await self.get(job_id)
        if job.state not in ("created", "uploading"):
            raise Conflict(f"sandbox job {job_id} is {job.state}: it can start only once")
        reason = self.unavailable()
        if reason is not None:
            raise UserError(f"this machine cannot run sandboxed code: {reason}")
        try:
            await asyncio.to_thread(workspace.read_file, self.workspace(job_id), entry, 16 << 20)
        except workspace.WorkspaceError as exc:
            raise UserError(f"entry {entry!r}: {exc}") from None
        await self._started.wait()
        assert self._tg is not None
        job = await self.jobs.move(job_id, "running", entry=entry, args=args, started_at=_now())
        self._runs[job_id] = self._tg.create_task(self._run(job), name=f"sandbox {job_id}")
        self._events.publish("sandbox.started", job_id=job_id)
        await self._show()
        return job

    async def wait(self, job_id: str, timeout_s: float) -> SandboxJob:
        """The job once it ended, or as it is at the timeout."""
        run = self._runs.get(job_id)
        if run is not None:
            await asyncio.wait({run}, timeout=timeout_s)  # never cancels the run itself
        return await self.get(job_id)

    async def cancel(self, job_id: str) -> SandboxJob:
        job = await self.get(job_id)
        if job.ended:
            return job
        run = self._runs.get(job_id)
        if job.state == "running" and run is not None:
            self._cancelled.add(job_id)
            run.cancel()
            return await self.wait(job_id, 10.0)
        job = await self.jobs.move(job_id, "cancelled", ended_at=_now(), reason="cancelled")
        await self._show()
        return job

    async def get(self, job_id: str) -> SandboxJob:
        job = await self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no sandbox job {job_id!r}; sandbox.list shows them")
        return job

    async def download(self, job_id: str, path: str) -> tuple[bytes, str]:
        """A workspace file's bytes and sha256 (never through a symlink, never outside)."""
        await self.get(job_id)
        try:
            data = await asyncio.to_thread(
                workspace.read_file, self.workspace(job_id), path, DOWNLOAD_MAX_BYTES
            )
        except workspace.WorkspaceError as exc:
            raise UserError(f"download refused: {exc}") from None
        return data, hashlib.sha256(data).hexdigest()

    async def remove(self, job_id: str) -> SandboxJob:
        """Delete an ended job's workspace (its files); the job's row, output and digests
        stay. Links inside are removed, never followed."""
        job = await self.get(job_id)
        if not job.ended:
            raise Conflict(f"sandbox job {job_id} is {job.state}: cancel it before removing it")
        await asyncio.to_thread(shutil.rmtree, self._root / job_id, ignore_errors=True)
        await self.jobs.removed(job_id)
        await self._show()
        return await self.get(job_id)

    def workspace(self, job_id: str) -> Path:
        return self._root / job_id / "work"

    # -- sold over NIP-90 ----------------------------------------------------------------

    async def run_for_request(
        self,
        request_id: str,
        runtime: str,
        limits: Mapping[str, float | None],
        files: Mapping[str, bytes],
        entry: str,
        args: list[str],
    ) -> SandboxJob:
        """Run a buyer's job to its end (once per request: a job that ended already is
        returned as it is)."""
        job = await self.jobs.for_request(request_id)
        if job is None:
            job = await self.create(runtime, limits, origin="nip90", request_id=request_id)
            try:
                for path, data in files.items():
                    await self.upload(job.id, path, data, extract=False)
            except UserError as exc:
                await self._end(job.id, "failed", reason=exc.message)
                raise
        if job.state in ("created", "uploading"):
            job = await self.start(job.id, entry, args)
        while not job.ended:
            job = await self.wait(job.id, 60.0)
        return job

    # -- a run ---------------------------------------------------------------------------

    async def _run(self, job: SandboxJob) -> None:
        assert job.entry is not None
        argv = (
            [self._python, "-I", job.entry, *job.args]
            if job.runtime == "python"
            else ["/bin/sh", job.entry, *job.args]
        )
        try:
            result = await self._sandbox.run(self.workspace(job.id), argv, Limits(**job.limits))
        except asyncio.CancelledError:
            if job.id not in self._cancelled:
                raise  # the daemon is stopping: the next start ends it interrupted
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await self._end(job.id, "cancelled", reason="cancelled")
        except SandboxUnavailable as exc:
            await self._end(job.id, "failed", reason=f"the sandbox did not start: {exc}")
        except Exception as exc:
            logger.exception("sandbox job %s", job.id)
            await self._end(job.id, "failed", reason=f"internal error: {exc}")
        else:
            await self._ended_with(job.id, result)
        finally:
            self._runs.pop(job.id, None)
            self._cancelled.discard(job.id)

    async def _ended_with(self, job_id: str, result: RunResult) -> None:
        reason = None
        if result.outcome is Outcome.TIMED_OUT:
            reason = "killed at its wall-clock limit"
        elif result.exit_code is not None and result.exit_code < 0:
            reason = f"killed by signal {-result.exit_code} (a limit it reached, or its own)"
        await self._end(
            job_id,
            result.outcome.value,
            exit_code=result.exit_code,
            stdout=result.stdout,
            stderr=result.stderr,
            truncated=int(result.truncated),
            wall_s=result.wall_s,
            cpu_s=result.cpu_s,
            reason=reason,
        )

    async def _end(self, job_id: str, state: str, **fields: Any) -> None:
        infos = await asyncio.to_thread(workspace.scan, self.workspace(job_id))
        job = await self.jobs.move(
            job_id, state, artifacts=[asdict(i) for i in infos], ended_at=_now(), **fields
        )
        self._events.publish("sandbox.ended", job_id=job_id, state=state, exit_code=job.exit_code)
        await self._show()

    def _make_workspace(self, job_id: str) -> None:
        self._root.mkdir(parents=True, exist_ok=True, mode=0o711)
        self._root.chmod(0o711)  # a run's own user id passes through, and sees nothing else
        job_dir = self._root / job_id
        job_dir.mkdir(mode=0o711)
        job_dir.chmod(0o711)
        ws = job_dir / "work"
        ws.mkdir(mode=0o755)

    async def _show(self) -> None:
        recent = await self.jobs.recent(RECENT)
        self._writer.set(
            counts=await self.jobs.counts(),
            jobs=tuple(j.to_json(output=False) for j in recent),
        )


def _now() -> float:
    return time.time()
