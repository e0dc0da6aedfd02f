"""Test support: daemons in-process (fast) and as real processes (end-to-end)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autopilotd.adapters.fake_inference import FakeInference
from autopilotd.adapters.fake_lightning import FakeNetwork, FakeNode
from autopilotd.adapters.fake_relays import FakeNetwork as FakeRelays
from autopilotd.app import Adapters
from autopilotd.client import Endpoint, RpcClient
from autopilotd.paths import Paths

BIN = Path(sys.executable).parent


@dataclass
class InProcessDaemon:
    paths: Paths
    endpoint: Endpoint
    task: asyncio.Task[int]

    @property
    def port(self) -> int:
        return int(self.endpoint.rpc_url.rsplit(":", 1)[1].split("/")[0])

    def client(self, token: str | None = None) -> RpcClient:
        ep = self.endpoint if token is None else Endpoint(self.endpoint.rpc_url, token)
        return RpcClient(ep)

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        async with self.client() as c:
            return await c.call(method, params)

    async def stop(self) -> int:
        if not self.task.done():
            with contextlib.suppress(Exception):
                await self.call("daemon.stop")
        return await asyncio.wait_for(self.task, 30)


DaemonFactory = Callable[..., Awaitable[InProcessDaemon]]


@dataclass
class DaemonProcess:
    home: Path
    proc: subprocess.Popen[bytes]

    @property
    def paths(self) -> Paths:
        return Paths.for_home(self.home)

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run_ctl("--home", str(self.home), *args, timeout=timeout)

    def wait_exit(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)


def left_running(marker: str) -> list[int]:
    """Processes whose command line holds `marker` (none may outlive the run that started
    them)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(entry.name))
    return found


def run_ctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "autopilotctl"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def start_daemon_process(
    home: Path, *, umask: int = 0o022, env: dict[str, str] | None = None
) -> DaemonProcess:
    """Start `autopilotd run --home` as a real process and wait for its manifest."""
    proc = subprocess.Popen(
        [str(BIN / "autopilotd"), "run", "--home", str(home)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        umask=umask,
        env={**os.environ, **(env or {})},
    )
    manifest = Paths.for_home(home).manifest_file
    deadline = time.monotonic() + 30
    while not manifest.exists():
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"daemon exited with {proc.returncode}: {err}")
        assert time.monotonic() < deadline, "daemon did not write its manifest in 30 s"
        time.sleep(0.05)
    return DaemonProcess(home, proc)


async def online_daemon(factory: DaemonFactory) -> InProcessDaemon:
    """An in-process daemon online for real with fakes at its ports (Lightning node, psionic,
    relays): what a provider looks like between jobs."""
    node = FakeNode(FakeNetwork(), "provider", 0)
    relays = FakeRelays()
    d = await factory(
        adapters=Adapters(
            node_factory=lambda mnemonic: node, inference=FakeInference, relay_pool=relays.pool()
        ),
        wallet_network="regtest",
        wallet_bitcoind_rpc_url="http://u:p@127.0.0.1:1",
        runtime_mode="url",
        runtime_url="http://fake-psionic",
        relays=", ".join(relays.relays),
    )
    for condition in ("wallet-ready", "runtime-ready"):
        assert (await d.call("wait.until", {"condition": condition, "timeout_s": 10}))["met"]
    await d.call("provider.online")
    assert (await d.call("wait.until", {"condition": "provider-online", "timeout_s": 10}))["met"]
    return d


async def wallet_daemon(
    factory: DaemonFactory, net: FakeNetwork, name: str, balance_msat: int
) -> tuple[InProcessDaemon, FakeNode]:
    """An in-process daemon whose wallet is the fake node `name` on `net`, ready."""
    node = FakeNode(net, name, balance_msat)
    d = await factory(
        adapters=Adapters(node_factory=lambda mnemonic: node),
        wallet_network="regtest",
        wallet_bitcoind_rpc_url="http://u:p@127.0.0.1:1",
    )
    result = await d.call("wait.until", {"condition": "wallet-ready", "timeout_s": 10})
    assert result["met"]
    return d, node


def host_cases(port: int) -> list[tuple[str, bool]]:
    """Host headers for the T10 matrices, each with whether the server must accept it."""
    return [
        (f"127.0.0.1:{port}", True),
        (f"localhost:{port}", True),
        (f"[::1]:{port}", True),
        (f"evil.example:{port}", False),
        (f"127.0.0.1:{port + 1}", False),
        ("127.0.0.1", False),
    ]


def origin_cases(port: int, host: str) -> list[tuple[str | None, bool]]:
    """Origin headers for a request to `host`, each with whether it must be accepted."""
    return [
        (None, True),
        (f"http://{host}", True),
        ("http://evil.example", False),
        ("null", False),
        (f"https://{host}", False),
        (f"http://127.0.0.1:{port + 1}", False),
    ]
