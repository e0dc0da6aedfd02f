"""Bring a devnet up and down from Python: `Devnet`, an async context manager.

    async with Devnet(directory) as net:
        client = net.client                 # mine, fund, open_channel, hub_invoice ...
        chain = net.chain_source            # for ldk-node's set_chain_source_bitcoind_rpc

`up` starts the supervisor detached and returns once it has published `devnet.json`; `down`
stops it with SIGTERM (it stops the hub node and btcd) and, if anything is left behind after
a crash, kills what the pid files name.
"""

import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from autopilotd.devnet.client import DevnetClient, DevnetError
from autopilotd.devnet.ldk import ChainSource
from autopilotd.devnet.state import DevnetInfo, DevnetLayout, read_info, read_pid
from autopilotd.manifest import pid_alive

logger = logging.getLogger(__name__)

SUPERVISOR_MODULE = "autopilotd.devnet.supervisor"
UP_TIMEOUT_S = 180.0
DOWN_TIMEOUT_S = 30.0


def _pid_runs(pid: int, needle: str) -> bool:
    """Whether `pid` is alive and its command line mentions `needle` (guards pid reuse)."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return True
    return needle in cmdline


class Devnet:
    """A devnet in `directory`: start it, reach it, stop it."""

    def __init__(self, directory: Path, *, lsp_client_trusts_lsp: bool = False) -> None:
        self.layout = DevnetLayout(directory.resolve())
        self._info: DevnetInfo | None = None
        self._lsp_flags = ["--lsp-client-trusts-lsp"] if lsp_client_trusts_lsp else []

    async def __aenter__(self) -> Self:
        await self.up(owner=os.getpid())  # a devnet used as a context dies with its user
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.down()

    @property
    def info(self) -> DevnetInfo:
        """Endpoints and credentials of the running devnet."""
        if self._info is None:
            self._info = self.status()
        if self._info is None:
            raise DevnetError(f"no devnet is running in {self.layout.root}")
        return self._info

    @property
    def client(self) -> DevnetClient:
        """A control-API client."""
        return DevnetClient.for_info(self.info)

    @property
    def chain_source(self) -> ChainSource:
        """The shim's endpoint, for participants' ldk-node (bitcoind RPC chain source)."""
        info = self.info
        return ChainSource(info.shim_host, info.shim_port, info.shim_user, info.shim_password)

    def status(self) -> DevnetInfo | None:
        """The running devnet's info, or None when it is not up."""
        info = read_info(self.layout)
        if info is None or not pid_alive(info.supervisor_pid):
            return None
        return info

    async def up(self, timeout_s: float = UP_TIMEOUT_S, owner: int | None = None) -> DevnetInfo:
        """Start the devnet (or attach to the one already running) and wait until it answers.

        With `owner` (a pid), a devnet started here stops itself once that process is gone,
        even if it was killed before it could call `down`.
        """
        existing = self.status()
        if existing is not None:
            self._info = existing
            return existing
        if not self._supervisor_running():
            # Nothing is starting either: clear what a crashed run left, then start.
            await self._cleanup_leftovers()
            await self._spawn_supervisor(owner)
        started = time.monotonic()
        while True:
            info = self.status()
            if info is not None:
                self._info = info
                logger.info("devnet up in %s", self.layout.root)
                return info
            elapsed = time.monotonic() - started
            pid = read_pid(self.layout.supervisor_pid_file)
            # A fresh supervisor gets a moment to write its pid file before it is judged.
            if (pid is None or not pid_alive(pid)) and elapsed > 5:
                raise DevnetError(f"the devnet failed to start:\n{self._log_tail()}")
            if elapsed > timeout_s:
                await self.down()
                raise DevnetError(f"the devnet did not come up in {timeout_s:.0f} s")
            await asyncio.sleep(0.2)

    def _supervisor_running(self) -> bool:
        pid = read_pid(self.layout.supervisor_pid_file)
        return pid is not None and _pid_runs(pid, SUPERVISOR_MODULE)

    async def _spawn_supervisor(self, owner: int | None) -> None:
        self.layout.create()
        follow = ["--owner", str(owner)] if owner is not None else []
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            SUPERVISOR_MODULE,
            "--dir",
            str(self.layout.root),
            "--detach",
            *follow,
            *self._lsp_flags,
            stdin=asyncio.subprocess.DEVNULL,
        )
        if await process.wait() != 0:
            raise DevnetError(f"the devnet supervisor did not start; see {self.layout.log_file}")

    async def down(self, timeout_s: float = DOWN_TIMEOUT_S) -> None:
        """Stop the devnet and everything it started; a no-op when it is not running."""
        self._info = None
        pid = read_pid(self.layout.supervisor_pid_file)
        if pid is not None and _pid_runs(pid, SUPERVISOR_MODULE):
            os.kill(pid, signal.SIGTERM)
            if not await _wait_gone(pid, timeout_s):
                logger.warning("devnet supervisor %d ignored SIGTERM; killing it", pid)
                os.kill(pid, signal.SIGKILL)
                await _wait_gone(pid, 5.0)
        await self._cleanup_leftovers()

    async def _cleanup_leftovers(self) -> None:
        """Kill a btcd orphaned by a crashed supervisor; drop stale runtime files."""
        btcd_pid = read_pid(self.layout.btcd_pid_file)
        if btcd_pid is not None and _pid_runs(btcd_pid, str(self.layout.root)):
            os.kill(btcd_pid, signal.SIGTERM)
            if not await _wait_gone(btcd_pid, 10.0):
                os.kill(btcd_pid, signal.SIGKILL)
                await _wait_gone(btcd_pid, 5.0)
        for path in (
            self.layout.info_file,
            self.layout.btcd_pid_file,
            self.layout.supervisor_pid_file,
        ):
            pid = read_pid(path) if path != self.layout.info_file else None
            if pid is None or not pid_alive(pid):
                path.unlink(missing_ok=True)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.layout.log_file.read_text().splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


async def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True
