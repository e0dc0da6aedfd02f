"""Fixtures of the chat tests."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

OWNER = 4242  # as root, a chat's commands run as the workspace's owner, never as root


def own(path: Path) -> None:
    """Give `path` and all below it to the workspace's owner (as root; otherwise it is ours)."""
    if os.geteuid() != 0:
        return
    os.chown(path, OWNER, OWNER, follow_symlinks=False)
    for parent, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(Path(parent) / name, OWNER, OWNER, follow_symlinks=False)


@pytest.fixture
def user_workspace() -> Iterator[Path]:
    """A user's project folder with two files, which a sandboxed run as its owner can reach
    (pytest's own temporary folders are root's alone); `outside` next to it holds a secret."""
    base = Path(tempfile.mkdtemp(prefix="autopilotd-chat-test-"))
    base.chmod(0o711)
    ws = base / "project"
    (ws / "src").mkdir(parents=True)
    (ws / "notes.txt").write_bytes(b"first line\nsecond line\nthird line\n")
    (ws / "src" / "main.py").write_bytes(b"print('hello')\n")
    (base / "outside").mkdir()
    (base / "outside" / "secret.txt").write_text("SECRET")
    own(ws)
    yield ws
    shutil.rmtree(base, ignore_errors=True)
