"""The devnet harness shared by end-to-end tests: a network, daemons as real processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autopilotd.devnet import Devnet
from autopilotd.devnet.client import DevnetClient
from autopilotd.paths import Paths
from support import BIN, run_ctl


@dataclass
class Net:
    devnet: Devnet
    client: DevnetClient
    root: Path
    daemons: list[WalletDaemon] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        info = self.devnet.info
        return {
            "AUTOPILOTD_WALLET_NETWORK": "regtest",
            "AUTOPILOTD_WALLET_BITCOIND_RPC_URL": (
                f"http://{info.shim_user}:{info.shim_password}@{info.shim_host}:{info.shim_port}"
            ),
            "AUTOPILOTD_WALLET_TRUSTED_PEERS_NO_RESERVE": info.hub_node_id,
            "AUTOPILOTD_WALLET_PEERS": f"{info.hub_node_id}@{info.hub_address}",
        }

    def daemon(self, name: str, **settings: str) -> WalletDaemon:
        """A daemon whose wallet uses this devnet; settings are extra AUTOPILOTD_* values."""
        extra = {f"AUTOPILOTD_{k.upper()}": v for k, v in settings.items()}
        d = WalletDaemon(self.root / name, {**self.env(), **extra})
        self.daemons.append(d)
        return d

    async def channel(self, d: WalletDaemon, sats: int, push_sats: int) -> None:
        status = d.ctl_json("wallet.status")
        await self.client.open_channel(status["node_id"], status["listening"], sats, push_sats)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            balance = d.ctl_json("wallet.balance")
            if balance["spendable_sats"] + balance["receivable_sats"] > 0:
                return
            await asyncio.sleep(0.5)
        raise AssertionError(f"{d.home.name}: the channel never became usable")


@dataclass
class WalletDaemon:
    home: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def paths(self) -> Paths:
        return Paths.for_home(self.home)

    def start(
        self, crash_at: str | None = None, wait_ready: bool = True, crash_how: str = "kill"
    ) -> WalletDaemon:
        """Start the daemon; `crash_at` names a crash point where it dies (`crash_how="kill"`,
        exit 137) or asks itself to stop (`"term"`, a SIGTERM at exactly that point)."""
        env = {**os.environ, **self.env}
        env.pop("AUTOPILOTD_CRASH_AT", None)
        env.pop("AUTOPILOTD_CRASH_HOW", None)
        if crash_at:
            env["AUTOPILOTD_CRASH_AT"] = crash_at
            env["AUTOPILOTD_CRASH_HOW"] = crash_how
        log = (self.home.parent / f"{self.home.name}.stderr").open("ab")
        self.proc = subprocess.Popen(
            [str(BIN / "autopilotd"), "run", "--home", str(self.home)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 60
        while self._manifest_pid() != self.proc.pid:  # a killed daemon leaves a stale one
            assert self.proc.poll() is None, f"{self.home.name} exited: {self.stderr()[-2000:]}"
            assert time.monotonic() < deadline, "no manifest after 60 s"
            time.sleep(0.05)
        if wait_ready:
            r = self.ctl("wait", "wallet-ready", "--timeout", "120")
            assert r.returncode == 0, r.stdout + r.stderr + self.stderr()[-2000:]
        return self

    def _manifest_pid(self) -> int | None:
        try:
            return int(json.loads(self.paths.manifest_file.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def usable(self) -> bool:
        """Whether the node's channels can send and receive now."""
        balance = self.ctl_json("wallet.balance")
        return bool(balance["spendable_sats"] > 0 and balance["receivable_sats"] > 0)

    def wait_usable(self, timeout: float = 90) -> None:
        """Wait until the node's channels are usable again (peer reconnected after a restart)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.usable():
                return
            time.sleep(0.25)
        raise AssertionError(f"{self.home.name}: channels not usable after {timeout} s")

    def stderr(self) -> str:
        path = self.home.parent / f"{self.home.name}.stderr"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def ldk_log(self) -> Path:
        """ldk-node's own log: where LDK says why it closed a channel."""
        return self.paths.data_dir / "wallet" / "ldk" / "ldk_node.log"

    def ldk_log_size(self) -> int:
        return self.ldk_log.stat().st_size if self.ldk_log.exists() else 0

    def closes_since(self, offset: int) -> list[str]:
        """The channel closes ldk-node logged after `offset` (a `ldk_log_size()`), one line
        each with LDK's reason, e.g. a stale ChannelManager after a kill."""
        with self.ldk_log.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        return [line for line in text.splitlines() if "closed due to" in line]

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_ctl("--home", str(self.home), *args, timeout=timeout)

    def ctl_json(self, *args: str) -> Any:
        r = self.ctl("--json", *args)
        assert r.returncode == 0, f"{args}: {r.stderr}"
        return json.loads(r.stdout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)


@dataclass
class NexusDaemon:
    """`autopilotd nexus` as a real process on the devnet, on a fixed port (a restart keeps
    its address, as a real Nexus's does)."""

    home: Path
    env: dict[str, str]
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def paths(self) -> Paths:
        return Paths.for_home(self.home)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, crash_at: str | None = None) -> NexusDaemon:
        env = {**os.environ, **self.env}
        env.pop("AUTOPILOTD_CRASH_AT", None)
        if crash_at:
            env["AUTOPILOTD_CRASH_AT"] = crash_at
        log = (self.home.parent / f"{self.home.name}.stderr").open("ab")
        self.proc = subprocess.Popen(
            [str(BIN / "autopilotd"), "nexus", "--home", str(self.home), "--port", str(self.port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 120
        while self._file_pid() != self.proc.pid:  # written once the treasury is ready
            assert self.proc.poll() is None, f"the Nexus exited: {self.stderr()[-2000:]}"
            assert time.monotonic() < deadline, "the Nexus did not serve in 120 s"
            time.sleep(0.1)
        return self

    def _file_pid(self) -> int | None:
        try:
            return int(json.loads((self.paths.runtime_dir / "nexus.json").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def operator(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.loads((self.paths.runtime_dir / "nexus.json").read_text())
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {data['operator_token']}"},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.loads(resp.read())

    def public(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as resp:
            return json.loads(resp.read())

    def sql(self, query: str, *args: object) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.paths.data_dir / "nexus.sqlite3")
        try:
            return list(conn.execute(query, args).fetchall())
        finally:
            conn.close()

    def stderr(self) -> str:
        path = self.home.parent / f"{self.home.name}.stderr"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)
