"""Run btcd, the regtest full node, as a child process.

btcd mines only to `--miningaddr` (it has no `generatetoaddress`); its RPC server speaks
TLS with a certificate it generates on first start, and it closes each RPC connection after
replying. `--minrelaytxfee` stays at 1 sat/vB, the rate ldk-node falls back to on regtest.
"""

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from autopilotd.devnet.buildcache import find_btcd_bin
from autopilotd.devnet.rpc import BtcdRpc, RpcError
from autopilotd.loopback import LOOPBACK

logger = logging.getLogger(__name__)

# BTC per kB: 1 sat/vB.
MIN_RELAY_TX_FEE = "0.00001"


@dataclass(frozen=True)
class BtcdConfig:
    """Where btcd keeps its files and how it is reached."""

    home: Path
    rpc_port: int
    rpc_user: str
    rpc_password: str
    mining_address: str

    @property
    def cert_path(self) -> Path:
        """btcd's self-signed RPC certificate (created by btcd on first start)."""
        return self.home / "rpc.cert"

    @property
    def rpc_url(self) -> str:
        """The RPC endpoint, TLS on loopback."""
        return f"https://{LOOPBACK}:{self.rpc_port}"

    def rpc(self) -> BtcdRpc:
        """A client for this node's RPC server (use as an async context manager)."""
        return BtcdRpc(self.rpc_url, self.rpc_user, self.rpc_password, self.cert_path)

    def argv(self, binary: Path) -> list[str]:
        """btcd's command line: regtest, tx index, loopback RPC only, no P2P listener."""
        config_file = self.home / "btcd.conf"
        return [
            str(binary),
            f"--configfile={config_file}",
            f"--datadir={self.home / 'data'}",
            f"--logdir={self.home / 'logs'}",
            "--regtest",
            "--txindex",
            "--nolisten",
            f"--rpclisten={LOOPBACK}:{self.rpc_port}",
            f"--rpcuser={self.rpc_user}",
            f"--rpcpass={self.rpc_password}",
            f"--rpccert={self.cert_path}",
            f"--rpckey={self.home / 'rpc.key'}",
            f"--miningaddr={self.mining_address}",
            f"--minrelaytxfee={MIN_RELAY_TX_FEE}",
            "--debuglevel=info",
        ]


class BtcdProcess:
    """btcd running as a child of this process, for as long as the context is open."""

    def __init__(
        self, config: BtcdConfig, start_timeout_s: float = 30.0, pid_file: Path | None = None
    ) -> None:
        """`pid_file`, if given, holds btcd's pid from spawn until it has stopped, so a
        crashed parent's btcd can still be found and stopped."""
        self.config = config
        self._start_timeout_s = start_timeout_s
        self._pid_file = pid_file
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        """The process id (only while running)."""
        if self._process is None:
            raise RuntimeError("btcd is not running")
        return self._process.pid

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start btcd and return once its RPC server answers."""
        home = self.config.home
        home.mkdir(parents=True, exist_ok=True)
        # An empty config file keeps a user's ~/.btcd/btcd.conf out of the devnet.
        (home / "btcd.conf").touch()
        binary = find_btcd_bin()
        output = (home / "btcd.out").open("ab")
        try:
            self._process = await asyncio.create_subprocess_exec(
                *self.config.argv(binary),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=output,
            )
        finally:
            output.close()
        if self._pid_file is not None:
            self._pid_file.write_text(f"{self._process.pid}\n")
        logger.info("btcd started (pid %d, rpc %s)", self._process.pid, self.config.rpc_url)
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._start_timeout_s
        assert self._process is not None
        while True:
            if self._process.returncode is not None:
                raise RuntimeError(
                    f"btcd exited with {self._process.returncode}; see {self.config.home}/btcd.out"
                )
            if self.config.cert_path.exists():
                try:
                    async with self.config.rpc() as rpc:
                        await rpc.call("getblockcount")
                    return
                except (OSError, RpcError) as exc:
                    logger.debug("btcd not ready yet: %s", exc)
            if time.monotonic() > deadline:
                raise TimeoutError(f"btcd did not answer within {self._start_timeout_s} s")
            await asyncio.sleep(0.1)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop btcd: SIGTERM (it flushes its database), SIGKILL after `timeout_s`."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout_s)
        except TimeoutError:
            logger.warning("btcd did not stop within %.0f s; killing it", timeout_s)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        if self._pid_file is not None:
            self._pid_file.unlink(missing_ok=True)
        logger.info("btcd stopped")
