"""Which Python a sandbox job runs, and where its workspaces live."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from autopilotd.config import Config
from autopilotd.paths import Paths
from autopilotd.sandbox.service import python_runtime, sandbox_root

VERSION = f"python{sys.version_info[0]}.{sys.version_info[1]}"


def _interpreter(prefix: Path) -> Path:
    binary = prefix / "bin" / VERSION
    binary.parent.mkdir(parents=True)
    binary.write_text("")
    return binary


def test_the_projects_interpreter_when_a_run_can_reach_it(
    sandbox_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = _interpreter(sandbox_dir / "py")
    for path in (sandbox_dir / "py", sandbox_dir / "py" / "bin"):
        path.chmod(0o755)
    monkeypatch.setattr(sys, "base_prefix", str(sandbox_dir / "py"))
    assert python_runtime() == str(binary)


def test_else_the_systems_of_the_same_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = tmp_path / "private"
    _interpreter(private / "py")
    private.chmod(0o700)  # a home no other user may pass through
    monkeypatch.setattr(sys, "base_prefix", str(private / "py"))
    expected = shutil.which(VERSION, path="/usr/local/bin:/usr/bin:/bin") or shutil.which(
        "python3", path="/usr/local/bin:/usr/bin:/bin"
    )
    assert python_runtime() == (expected or "/usr/bin/python3")


def test_workspaces_live_where_a_run_can_reach_them(tmp_path: Path) -> None:
    paths = Paths.for_home(tmp_path)
    assert sandbox_root(Config(paths=paths, sandbox_dir=str(tmp_path / "s"))) == tmp_path / "s"
    root = sandbox_root(Config(paths=paths))
    if os.geteuid() == 0:
        assert root.parent == Path("/var/lib/autopilotd/sandbox")
        assert root == sandbox_root(Config(paths=Paths.for_home(tmp_path)))  # stable
    else:
        assert root == paths.data_dir / "sandbox"
