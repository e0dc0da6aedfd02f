"""The sandbox port: one way to run code that is not the daemon's own (docs/sandbox.md).

A run gets a private workspace directory and nothing else of the machine that is not
read-only system files: no home, no data directory, no seeds, no sockets, no network. Every
run has limits (`Limits`); what it printed is kept up to `output_bytes`, with a `truncated`
flag. A backend that cannot isolate says why (`unavailable`) and runs nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class SandboxUnavailable(Exception):
    """This machine cannot isolate a run (the reason is the message): nothing was run."""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 30.0  # wall clock; the whole process group is killed after it
    cpu_s: int = 30
    memory_mb: int = 512  # address space
    processes: int = 64
    file_size_mb: int = 64
    open_files: int = 256
    output_bytes: int = 1 << 20  # stdout and stderr together


class Outcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # a non-zero exit, or killed by a signal of its own doing (a limit)
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class RunResult:
    outcome: Outcome
    exit_code: int | None  # None when it was killed (timeout, cancel); negative: the signal
    stdout: bytes
    stderr: bytes
    truncated: bool
    wall_s: float
    cpu_s: float


class Sandbox(Protocol):
    def unavailable(self) -> str | None:
        """Why this machine cannot run sandboxed code, or None when it can."""
        ...

    async def run(
        self,
        workspace: Path,
        argv: list[str],
        limits: Limits,
        *,
        as_owner: bool = False,
        read_only: bool = False,
        on_output: Callable[[bytes], None] | None = None,
    ) -> RunResult:
        """Run `argv` inside the sandbox with `workspace` as its only writable directory
        (seen as /work). Raises SandboxUnavailable, running nothing, when it cannot isolate.

        A sandbox job's workspace is the sandbox's own: as root, each run gets a fresh user id
        and the workspace is given to it. `as_owner` is for a directory of the user's (a chat
        thread's workspace): the run is the directory's owner and no file changes hands; as
        root, a workspace that root owns is refused (SandboxUnavailable, with what to do).
        `read_only` binds the workspace read-only. `on_output` is called with each piece of
        what the run prints (stdout and stderr as they come, within `output_bytes`)."""
        ...
