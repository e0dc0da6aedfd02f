"""The sandbox port (ports/sandbox.py) on Linux, with bubblewrap.

Each run is `bwrap` with every namespace new (user, PID, IPC, UTS, mount, network, cgroup):

- the system's `/usr` (and the `/bin`, `/lib` … links into it) and `/etc`'s few files a
  runtime needs, read-only; a new `/proc`, a minimal `/dev`, an empty `/tmp`;
- the run's workspace at `/work`, its only writable directory, and its working directory;
- no network at all (a new network namespace with only its own loopback);
- a cleared environment (`PATH`, `HOME=/work`, `LANG`), `--die-with-parent`, a new session;
- a seccomp filter that refuses ptrace, mount, keyctl, bpf, perf_event_open, module and
  kexec loading, namespace changes and the like with EPERM;
- run, when the daemon is root, as a user id of its own (`RUN_UIDS`: no account has one, so
  nothing of root's is reachable and its process limit is its own), seen inside as `nobody`;
  with rlimits for CPU time, address space, processes, file size, open files and no core
  dumps. When the daemon is not root the run is the daemon's user, and the process limit is
  what that user already runs plus the run's own.

The daemon kills the run's whole process group at the wall-clock timeout (bwrap's PID
namespace takes every descendant with it) and keeps at most `output_bytes` of what it printed.
Only x86-64 is supported; anywhere else, or where bwrap cannot start, `unavailable()` says why
and `run` refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import platform
import resource
import secrets
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autopilotd.ports.sandbox import Limits, Outcome, RunResult, SandboxUnavailable

NOBODY = 65534
RUN_UIDS = (1_000_000, 2_000_000)
"""When the daemon is root each run gets a user id of its own from this range (no account
has one): its process limit is its own, and no run can signal or read another's processes."""
PATH = "/usr/local/bin:/usr/bin:/bin"
ETC_FILES = ("passwd", "group", "nsswitch.conf", "ld.so.cache", "localtime")

# seccomp: refuse these with EPERM (x86-64 numbers; include/uapi/asm/unistd_64.h)
DENIED_X86_64 = {
    "ptrace": 101,
    "mount": 165,
    "umount2": 166,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
    "iopl": 172,
    "ioperm": 173,
    "init_module": 175,
    "delete_module": 176,
    "chroot": 161,
    "pivot_root": 155,
    "acct": 163,
    "settimeofday": 164,
    "clock_settime": 227,
    "kexec_load": 246,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "unshare": 272,
    "perf_event_open": 298,
    "name_to_handle_at": 303,
    "open_by_handle_at": 304,
    "setns": 308,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "finit_module": 313,
    "kexec_file_load": 320,
    "bpf": 321,
    "userfaultfd": 323,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
}
AUDIT_ARCH_X86_64 = 0xC000_003E
X32_SYSCALL_BIT = 0x4000_0000
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_ALLOW, _KILL, _EPERM = 0x7FFF_0000, 0x8000_0000, 0x0005_0000 | 1


def seccomp_filter() -> bytes:
    """The classic-BPF program bwrap installs (`--seccomp FD`): wrong arch or an x32 call is
    killed, a denied call gets EPERM, anything else is allowed."""
    denied = sorted(DENIED_X86_64.values())
    prog = [
        (_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        (_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        (_RET_K, 0, 0, _KILL),
        (_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
        (_JGE_K, 0, 1, X32_SYSCALL_BIT),
        (_RET_K, 0, 0, _KILL),
    ]
    for i, nr in enumerate(denied):
        to_eperm = len(denied) - i  # skip the remaining checks and the allow
        prog.append((_JEQ_K, to_eperm, 0, nr))
    prog += [(_RET_K, 0, 0, _ALLOW), (_RET_K, 0, 0, _EPERM)]
    return b"".join(struct.pack("<HBBI", *ins) for ins in prog)


class BwrapSandbox:
    def __init__(self, bwrap: str | None = None, ro_binds: tuple[str, ...] = ()) -> None:
        """`ro_binds`: more directories seen read-only at their own paths (a Python outside
        /usr whose prefix every user can reach)."""
        self._bwrap = bwrap or shutil.which("bwrap")
        self._ro_binds = ro_binds
        self._checked: str | bool | None = False  # False: not checked yet

    def unavailable(self) -> str | None:
        if self._checked is not False:
            return self._checked  # type: ignore[return-value]
        self._checked = self._check()
        return self._checked

    def _check(self) -> str | None:
        if platform.system() != "Linux":
            system = "macOS" if platform.system() == "Darwin" else platform.system()
            return f"sandboxed runs are not supported on {system} yet (they need Linux)"
        if platform.machine() != "x86_64":
            return f"the sandbox's seccomp filter covers x86-64 only, not {platform.machine()}"
        if self._bwrap is None:
            return "bubblewrap (bwrap) is not installed: 'apt-get install bubblewrap'"
        probe = subprocess.run(
            [self._bwrap, *self._args(Path("/"), (), self._ro_binds), "/bin/true"],
            capture_output=True,
            **_as_user(NOBODY, NOBODY),
            timeout=20,
            check=False,
        )
        if probe.returncode != 0:
            why = probe.stderr.decode(errors="replace").strip()[:200]
            return f"bubblewrap cannot start here (user namespaces off?): {why}"
        return None

    @staticmethod
    def _args(
        workspace: Path | int,
        seccomp: tuple[str, ...],
        ro_binds: tuple[str, ...],
        read_only: bool = False,
    ) -> list[str]:
        args = [
            "--unshare-all",
            "--unshare-user",
            "--uid",
            str(NOBODY),
            "--gid",
            str(NOBODY),
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--clearenv",
            "--setenv",
            "PATH",
            PATH,
            "--setenv",
            "HOME",
            "/work",
            "--setenv",
            "LANG",
            "C.UTF-8",
            "--ro-bind",
            "/usr",
            "/usr",
        ]
        for link in ("bin", "sbin", "lib", "lib64", "lib32", "libx32"):
            target = Path("/") / link
            if target.is_symlink():
                args += ["--symlink", str(target.readlink()), f"/{link}"]
            elif target.is_dir():
                args += ["--ro-bind", str(target), f"/{link}"]
        for name in ETC_FILES:
            if (Path("/etc") / name).exists():
                args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        for path in ro_binds:
            args += ["--ro-bind", path, path]
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        if isinstance(workspace, int):  # an open directory: reached by root, bound for nobody
            args += ["--ro-bind-fd" if read_only else "--bind-fd", str(workspace), "/work"]
        else:
            args += ["--bind", str(workspace), "/work"]
        args += ["--chdir", "/work", *seccomp, "--"]
        return args

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
        reason = self.unavailable()
        if reason is not None:
            raise SandboxUnavailable(reason)
        assert self._bwrap is not None
        uid = gid = secrets.randbelow(RUN_UIDS[1] - RUN_UIDS[0]) + RUN_UIDS[0]
        if as_owner and os.geteuid() == 0:
            owner = workspace.stat()
            uid, gid = owner.st_uid, owner.st_gid
            if uid == 0:
                raise SandboxUnavailable(
                    "the daemon runs as root and this workspace belongs to root, so a command "
                    "there would run as root: give the folder to a user (chown) or run the "
                    "daemon as your own user"
                )
        if os.geteuid() != 0 or as_owner:  # the user's own processes count against the limit
            count = await asyncio.to_thread(_processes_of, uid if os.geteuid() == 0 else None)
            limits = dataclasses.replace(limits, processes=limits.processes + count)
        else:
            await asyncio.to_thread(_chown_tree, workspace, uid)
        read, write = os.pipe()
        os.write(write, seccomp_filter())
        os.close(write)
        work = os.open(workspace, os.O_PATH | os.O_DIRECTORY)
        started = time.monotonic()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            seccomp = ("--seccomp", str(read))
            proc = await asyncio.create_subprocess_exec(
                self._bwrap,
                *self._args(work, seccomp, self._ro_binds, read_only),
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(read, work),
                **_as_user(uid, gid),
                preexec_fn=lambda: _limit(limits),
                start_new_session=True,
            )
        finally:
            for fd in (read, work):
                os.close(fd)
        out = _Capped(limits.output_bytes, on_output)
        timed_out = False
        try:
            async with asyncio.TaskGroup() as tg:
                # The output is read to its end even past the limit or the timeout: a pipe
                # left unread would keep the run from ever being seen to end.
                drains = [tg.create_task(out.drain(proc.stdout, 1))]
                drains.append(tg.create_task(out.drain(proc.stderr, 2)))
                try:
                    async with asyncio.timeout(limits.timeout_s):
                        await asyncio.wait(drains)  # both pipes closed: everything in it ended
                except TimeoutError:
                    timed_out = True
                finally:
                    _kill_group(proc.pid)  # bwrap; its PID namespace takes every descendant
        except BaseException:
            _kill_group(proc.pid)
            raise
        code = await proc.wait()
        if code == 1 and not out.parts[1] and out.parts[2].startswith(b"bwrap: "):
            why = bytes(out.parts[2]).decode(errors="replace").strip()[:300]
            raise SandboxUnavailable(f"the sandbox did not start: {why}")  # nothing of argv ran
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if timed_out:
            outcome, exit_code = Outcome.TIMED_OUT, None
        else:
            outcome, exit_code = (Outcome.SUCCEEDED if code == 0 else Outcome.FAILED), code
        return RunResult(
            outcome,
            exit_code,
            bytes(out.parts[1]),
            bytes(out.parts[2]),
            out.truncated,
            round(time.monotonic() - started, 3),
            round(cpu, 3),
        )


class _Capped:
    """stdout and stderr kept together up to `cap` bytes; the rest read and dropped."""

    def __init__(self, cap: int, on_output: Callable[[bytes], None] | None = None) -> None:
        self.cap = cap
        self.on_output = on_output
        self.kept = 0
        self.truncated = False
        self.parts = {1: bytearray(), 2: bytearray()}

    async def drain(self, stream: asyncio.StreamReader | None, fd: int) -> None:
        if stream is None:
            return
        while chunk := await stream.read(65536):
            room = self.cap - self.kept
            if len(chunk) > room:
                self.truncated = True
                chunk = chunk[: max(0, room)]
            self.parts[fd] += chunk
            self.kept += len(chunk)
            if chunk and self.on_output is not None:
                self.on_output(chunk)


def _chown_tree(root: Path, uid: int) -> None:
    """Give the run's user id its workspace and everything in it (links themselves, never
    what they point to)."""
    os.chown(root, uid, uid)
    for parent, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(Path(parent) / name, uid, uid, follow_symlinks=False)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _as_user(uid: int, gid: int) -> dict[str, Any]:
    """When root, the child becomes `uid` (no account, no capabilities) before it execs bwrap,
    so nothing of root's is reachable and the process limit counts. subprocess does it in C
    between fork and exec: no Python runs in a child forked from a threaded process for it (a
    lock another thread held at the fork would stay held there for good, and with it every
    descriptor the child inherited, the home's lock among them). The exec makes the child
    dumpable again, so bwrap can open its own /proc/self/fd."""
    if os.geteuid() != 0:
        return {}
    return {"user": uid, "group": gid, "extra_groups": []}


def _processes_of(uid: int | None) -> int:
    """How many processes `uid` (None: this process's user) has now."""
    me = str(os.getuid() if uid is None else uid)
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            uid_line = next((ln for ln in status.splitlines() if ln.startswith("Uid:")), "")
            count += uid_line.split()[1:2] == [me]
    return count


def _limit(limits: Limits) -> None:
    """In the child, after subprocess has made it the run's user and before bwrap: the run's
    rlimits. Only setrlimit calls, no import and no library loading, since the child was forked
    from a threaded process. A limit is lowered to what is asked, never raised past the hard
    limit already there (the run's user could not)."""
    mib = 1 << 20
    for which, value in (
        (resource.RLIMIT_CPU, limits.cpu_s),
        (resource.RLIMIT_AS, limits.memory_mb * mib),
        (resource.RLIMIT_FSIZE, limits.file_size_mb * mib),
        (resource.RLIMIT_NOFILE, limits.open_files),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NPROC, limits.processes),
    ):
        hard = resource.getrlimit(which)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (value, value))
