"""`autopilotd demo --smoke N`: the whole embedded default, real parts, N paid jobs."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support import BIN

from autopilotd.devnet.state import DevnetLayout
from autopilotd.manifest import pid_alive

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
    found = re.search(
        r"smoke: open-network jobs paid: 2, starter jobs paid: (\d+), sats earned: (\d+)",
        r.stdout,
    )
    assert found, r.stdout[-3000:]
    starter, sats = int(found[1]), int(found[2])
    assert starter >= 1 and sats > 20  # the buyer's 2 × 10 sats and the starter jobs' prices
    assert "[1] done" in r.stdout and "[2] done" in r.stdout
    assert "smoke: chat thread completed, 3 files listed" in r.stdout
    # Autopilot Chat's /buy, approved, paid to the demo's other daemon, which sold the job
    assert re.search(
        r"smoke: chat bought a job: completed, payment [0-9a-f]{12}, result: \S.*", r.stdout
    ), r.stdout[-3000:]


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (Linux)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        children = {p for p, pp in parents.items() if pp == parent}
        found |= children
        todo.extend(children)
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_demo_leaves_nothing_running(tmp_path: Path) -> None:
    """kill -9 of `autopilotd demo`: its daemons, psionic, relay and devnet all stop."""
    root = tmp_path / "demo"
    demo = subprocess.Popen(
        [str(BIN / "autopilotd"), "demo", "--home", str(root)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _kill_the_demo_when_up(demo, root)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()


def _kill_the_demo_when_up(demo: subprocess.Popen[str], root: Path) -> None:
    assert demo.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(demo.stdout or ()), daemon=True)
    reader.start()
    deadline = time.monotonic() + 480
    while not any("autopilotd demo is running" in line for line in lines):
        assert demo.poll() is None, "".join(lines)[-3000:]
        assert time.monotonic() < deadline, "the demo did not come up"
        time.sleep(0.5)
    layout = DevnetLayout(root / "devnet")
    pids = _descendants(demo.pid) | {
        int(path.read_text()) for path in (layout.supervisor_pid_file, layout.btcd_pid_file)
    }
    assert len(pids) >= 6  # relay, provider, buyer, psionic, devnet supervisor, btcd …
    demo.kill()
    demo.wait()
    reader.join(10)
    demo.stdout.close()
    deadline = time.monotonic() + 90
    while alive := [p for p in pids if pid_alive(p)]:
        assert time.monotonic() < deadline, f"still running after the demo died: {alive}"
        time.sleep(0.5)
