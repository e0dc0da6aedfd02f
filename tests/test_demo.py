"""`autopilotd demo --smoke N`: the whole embedded default, real parts, N paid jobs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from support import BIN

pytestmark = pytest.mark.devnet


def test_demo_smoke_pays_jobs(tmp_path: Path) -> None:
    r = subprocess.run(
        [str(BIN / "autopilotd"), "demo", "--home", str(tmp_path / "demo"), "--smoke", "2"],
        capture_output=True,
        text=True,
        timeout=540,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "smoke: 2 jobs paid, 20 sats earned" in r.stdout
    assert "[1] done" in r.stdout and "[2] done" in r.stdout
