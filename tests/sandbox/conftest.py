"""Fixtures of the sandbox tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def sandbox_dir() -> Iterator[Path]:
    """A directory for workspaces that a run's own user id can pass through (pytest's own
    temporary folders are root's alone), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="autopilotd-sandbox-test-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)
