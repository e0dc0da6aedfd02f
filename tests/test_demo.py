from __future__ import annotations

import subprocess
from pathlib import Path

from support import BIN


def test_demo_prints_addresses_and_status(tmp_path: Path) -> None:
    r = subprocess.run(
        [str(BIN / "autopilotd"), "demo", "--home", str(tmp_path / "demo"), "--once"],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr
    assert "web UI    http://127.0.0.1:" in r.stdout
    assert "JSON-RPC  http://127.0.0.1:" in r.stdout
    assert "READY" in r.stdout
    assert not (tmp_path / "demo" / "user" / "run" / "autopilotd.json").exists()
