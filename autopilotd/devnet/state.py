"""The devnet directory: its layout and the runtime file that says how to reach a running net.

`devnet.json` is written atomically (mode 0600, it holds credentials) by the supervisor once
everything is ready, and removed when it stops; its presence plus a live supervisor pid
means "up". Pid files are written as soon as each process starts, so `down` can clean up
after a supervisor that died half-way.
"""

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DevnetLayout:
    """Paths inside one devnet directory."""

    root: Path

    @property
    def info_file(self) -> Path:
        """The runtime file (`DevnetInfo`), present only while the devnet is up."""
        return self.root / "devnet.json"

    @property
    def supervisor_pid_file(self) -> Path:
        """Pid of the supervisor process (shim, hub node, control API; parent of btcd)."""
        return self.root / "supervisor.pid"

    @property
    def btcd_pid_file(self) -> Path:
        """Pid of btcd."""
        return self.root / "btcd.pid"

    @property
    def lock_file(self) -> Path:
        """Held (flock) by the running supervisor: one per directory."""
        return self.root / "supervisor.lock"

    @property
    def log_file(self) -> Path:
        """The supervisor's log."""
        return self.root / "supervisor.log"

    @property
    def btcd_home(self) -> Path:
        """btcd's data, logs and TLS certificate."""
        return self.root / "btcd"

    @property
    def hub_storage(self) -> Path:
        """The hub node's ldk-node storage (its seed, channels, wallet)."""
        return self.root / "hub"

    @property
    def lsp_storage(self) -> Path:
        """The LSP node's storage (ldk-lsp: its seed, channels, wallet, log)."""
        return self.root / "lsp"

    @property
    def miner_key_file(self) -> Path:
        """The key every block reward goes to."""
        return self.root / "miner.key"

    def create(self) -> None:
        """Create the directory, private to the user."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)


@dataclass(frozen=True)
class DevnetInfo:
    """How to reach a running devnet (all endpoints on 127.0.0.1)."""

    supervisor_pid: int
    btcd_pid: int
    btcd_rpc_port: int
    btcd_rpc_user: str
    btcd_rpc_password: str
    btcd_cert: str
    shim_host: str
    shim_port: int
    shim_user: str
    shim_password: str
    control_url: str
    control_token: str
    hub_node_id: str
    hub_address: str
    miner_address: str
    lsp_node_id: str = ""
    lsp_address: str = ""
    lsp_token: str = ""

    @property
    def lsp(self) -> str:
        """The LSP as a wallet's `wallet_lsp` setting names it: node_id@host:port."""
        return f"{self.lsp_node_id}@{self.lsp_address}"

    @property
    def shim_url(self) -> str:
        """The bitcoind-compatible RPC endpoint (plain HTTP, Basic auth)."""
        return f"http://{self.shim_host}:{self.shim_port}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "DevnetInfo":
        """Inverse of `to_json`; unknown keys are ignored."""
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)


def write_private_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically, mode 0600, fsynced with its directory."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp_name).replace(path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_info(layout: DevnetLayout, info: DevnetInfo) -> None:
    """Publish `info`: from now on the devnet counts as up."""
    write_private_atomic(layout.info_file, json.dumps(info.to_json(), indent=2) + "\n")


def read_info(layout: DevnetLayout) -> DevnetInfo | None:
    """The runtime file's contents, or None when there is none."""
    try:
        data = json.loads(layout.info_file.read_text())
    except FileNotFoundError:
        return None
    return DevnetInfo.from_json(data)


def read_pid(path: Path) -> int | None:
    """The pid in a pid file, or None."""
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def write_pid(path: Path, pid: int) -> None:
    """Record a pid."""
    write_private_atomic(path, f"{pid}\n")
