"""Secrets at rest and the manifest contract (RELIABILITY S2, T12)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support import DaemonProcess

from autopilotd.errors import DaemonNotRunning, UserError
from autopilotd.manifest import Manifest, read_manifest, write_manifest


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_files_are_private_under_any_umask(
    daemon_process: Callable[..., DaemonProcess], tmp_path: Path, umask: int
) -> None:
    d = daemon_process(tmp_path / "home", umask=umask)
    paths = d.paths
    manifest = paths.manifest_file
    assert _mode(manifest) == 0o600
    for directory in (paths.runtime_dir, paths.data_dir, paths.log_dir, paths.config_dir):
        assert _mode(directory) == 0o700, directory
    assert _mode(paths.database_file) == 0o600
    session_logs = list((paths.log_dir / "sessions").glob("*.jsonl"))
    assert session_logs and all(_mode(p) == 0o600 for p in session_logs)
    data = json.loads(manifest.read_text())
    assert set(data) == {
        "schema_version",
        "pid",
        "started_at",
        "version",
        "rpc_url",
        "web_url",
        "auth_token",
        "home",
        "latest_session_log",
    }
    assert data["pid"] == d.proc.pid
    assert len(data["auth_token"]) >= 43  # 32 random bytes, base64url
    assert data["rpc_url"].startswith("http://127.0.0.1:")
    # The token appears nowhere else: not in argv, environment or logs.
    assert data["auth_token"] not in (paths.log_dir / "latest.jsonl").read_text()
    assert data["auth_token"] not in Path(f"/proc/{d.proc.pid}/cmdline").read_text()
    r = d.ctl("stop")
    assert r.returncode == 0, r.stderr
    assert d.wait_exit() == 0
    assert not manifest.exists()


def test_new_token_per_start(daemon_process: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = daemon_process(home)
    token1 = json.loads(first.paths.manifest_file.read_text())["auth_token"]
    assert first.ctl("stop").returncode == 0
    first.wait_exit()
    second = daemon_process(home)
    token2 = json.loads(second.paths.manifest_file.read_text())["auth_token"]
    assert token1 != token2


def _manifest(pid: int) -> Manifest:
    return Manifest(
        1, pid, 0.0, "0", "http://127.0.0.1:1/rpc", "http://127.0.0.1:1/", "t" * 43, "/h", "/l"
    )


def test_client_refuses_readable_manifest(tmp_path: Path) -> None:
    path = tmp_path / "run" / "autopilotd.json"
    write_manifest(path, _manifest(os.getpid()))
    assert read_manifest(path).pid == os.getpid()
    path.chmod(0o644)
    with pytest.raises(UserError, match="readable by other users"):
        read_manifest(path)


def test_client_says_plainly_when_not_running(tmp_path: Path) -> None:
    path = tmp_path / "run" / "autopilotd.json"
    with pytest.raises(DaemonNotRunning, match="not running"):
        read_manifest(path)
    child = subprocess.Popen(["true"])  # a pid that surely exited: our own child, reaped
    child.wait()
    pid = child.pid
    write_manifest(path, _manifest(pid))
    with pytest.raises(DaemonNotRunning, match="has exited"):
        read_manifest(path)
    path.write_text("{broken")
    path.chmod(0o600)
    with pytest.raises(UserError, match="not a valid"):
        read_manifest(path)
