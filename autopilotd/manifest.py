"""The runtime manifest: how clients find a running daemon.

Written only after the servers have bound, atomically, mode 0600 in a 0700 runtime directory,
and removed on exit. It holds the control token, so clients refuse a manifest that others can
read, and check that its pid is alive before trusting it.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from autopilotd.errors import DaemonNotRunning, UserError
from autopilotd.paths import private_dir, write_private_atomic

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    pid: int
    started_at: float
    version: str
    rpc_url: str
    web_url: str
    auth_token: str
    home: str
    latest_session_log: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def write_manifest(path: Path, manifest: Manifest) -> None:
    private_dir(path.parent)
    write_private_atomic(path, json.dumps(manifest.to_json(), indent=2).encode() + b"\n")


def remove_manifest(path: Path, pid: int) -> None:
    """Remove the manifest if it is still ours (a newer daemon may have replaced it)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return
    if data.get("pid") == pid:
        path.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Is `pid` a running process? An exited one not yet reaped (a zombie) is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(0) is the best we have
    return fields[0] not in ("Z", "X")


def read_manifest(path: Path) -> Manifest:
    """Load and vet a manifest; say plainly when the daemon is not running."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DaemonNotRunning(f"autopilotd is not running (no manifest at {path})") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UserError(
            f"refusing {path}: it is readable by other users (mode {st.st_mode & 0o777:o}); "
            "it holds the control token. Restart the daemon to rewrite it with mode 600."
        )
    if st.st_uid != os.getuid():
        raise UserError(f"refusing {path}: it belongs to another user")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        manifest = Manifest(**{k: data[k] for k in Manifest.__dataclass_fields__})
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path} is not a valid autopilotd manifest") from None
    if manifest.schema_version != SCHEMA_VERSION:
        raise UserError(f"{path}: manifest schema {manifest.schema_version} is not supported")
    if not pid_alive(manifest.pid):
        raise DaemonNotRunning(
            f"autopilotd is not running (the manifest names pid {manifest.pid}, which has exited)"
        )
    return manifest
