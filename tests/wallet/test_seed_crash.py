"""Seed creation under kills (RELIABILITY S1, T12) and import from standard input."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from support import BIN

from autopilotd.paths import Paths
from autopilotd.wallet.seed import read_seed, seed_path

WORDS = "abandon " * 11 + "about"


def _run_wallet_daemon(home: Path, crash_at: str | None) -> subprocess.CompletedProcess[str]:
    import os

    env = {
        **os.environ,
        "AUTOPILOTD_WALLET_NETWORK": "regtest",
        "AUTOPILOTD_WALLET_BITCOIND_RPC_URL": "http://u:p@127.0.0.1:9",
    }
    env.pop("AUTOPILOTD_CRASH_AT", None)
    if crash_at:
        env["AUTOPILOTD_CRASH_AT"] = crash_at
    proc = subprocess.Popen(
        [str(BIN / "autopilotd"), "run", "--home", str(home)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        umask=0,
    )
    if crash_at:
        _, err = proc.communicate(timeout=60)
        return subprocess.CompletedProcess(proc.args, proc.returncode, "", err)
    manifest = Paths.for_home(home).manifest_file
    import time

    deadline = time.monotonic() + 60
    while not manifest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", err)


@pytest.mark.parametrize("point", ["seed.after_create", "seed.after_write", "seed.after_link"])
def test_a_kill_during_creation_never_leaves_a_partial_seed(tmp_path: Path, point: str) -> None:
    home = tmp_path / "h"
    r = _run_wallet_daemon(home, point)
    assert r.returncode == 137, r.stderr
    path = seed_path(Paths.for_home(home).data_dir)
    if path.exists():  # created whole before the kill
        assert len(read_seed(path).split()) == 24
    before = path.read_text() if path.exists() else None
    _run_wallet_daemon(home, None)  # the next start completes (or keeps) the seed
    assert path.exists() and oct(path.stat().st_mode & 0o777) == "0o600"
    words = read_seed(path)
    assert len(words.split()) == 24
    if before is not None:
        assert path.read_text() == before  # never overwritten
    leftovers = [p for p in path.parent.iterdir() if p.name != path.name and p.name.startswith(".")]
    assert leftovers == []


def test_import_from_stdin(tmp_path: Path) -> None:
    home = tmp_path / "h"
    cmd = [str(BIN / "autopilotd"), "wallet", "import", "--home", str(home)]
    r = subprocess.run(cmd, input="not words\n", capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "not a valid BIP-39" in r.stderr
    r = subprocess.run(cmd, input=WORDS.upper() + "\n", capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    path = seed_path(Paths.for_home(home).data_dir)
    assert read_seed(path) == WORDS.strip()
    r = subprocess.run(cmd, input=WORDS + "\n", capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "never overwritten" in r.stderr
