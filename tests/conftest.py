"""Shared fixtures: daemons in-process (fast) and as real processes (end-to-end)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import DaemonFactory, DaemonProcess, InProcessDaemon, start_daemon_process

from autopilotd.app import build
from autopilotd.client import locate
from autopilotd.config import Config
from autopilotd.daemon import run_daemon
from autopilotd.paths import Paths
from autopilotd.runtime.context import Runtime
from autopilotd.runtime.sessionlog import SessionLog
from autopilotd.store import Store

# tests/ is on sys.path (the suite imports `support` from it) and holds tests/psionic, which is
# named like the package: put the repository root first, before any test module is collected,
# so that `import psionic` anywhere in the suite finds the package rather than a namespace made
# of that folder (a test module of another folder may import psionic before tests/psionic's).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@pytest.fixture
async def daemon_factory(tmp_path: Path) -> AsyncIterator[DaemonFactory]:
    started: list[InProcessDaemon] = []

    async def start(
        *,
        registrars: Any = (),
        services: Any = (),
        adapters: Any = None,
        home: Path | None = None,
        **settings: Any,
    ) -> InProcessDaemon:
        paths = Paths.for_home(home or tmp_path / f"home{len(started)}")
        config = Config(paths=paths, **settings)
        loop = asyncio.get_running_loop()
        task = loop.create_task(
            run_daemon(config, registrars=registrars, services=services, adapters=adapters)
        )
        deadline = time.monotonic() + 20
        while not paths.manifest_file.exists():
            if task.done():
                task.result()
                raise AssertionError("daemon exited before writing its manifest")
            assert time.monotonic() < deadline, "daemon did not start"
            await asyncio.sleep(0.01)
        daemon = InProcessDaemon(paths, locate(home=str(paths.home)), task)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        await daemon.stop()


@pytest.fixture
async def daemon(daemon_factory: DaemonFactory) -> InProcessDaemon:
    """A daemon with default settings, returned once every service runs (a quiet daemon)."""
    d = await daemon_factory()
    status = await d.call("status")
    while any(s["state"] == "starting" for s in status["services"]):
        status = await d.call("status.wait", {"after_seq": status["seq"], "timeout_s": 5})
    return d


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    """A wired daemon's kernel (commands registered), not running."""
    paths = Paths.for_home(tmp_path)
    log = SessionLog(paths.log_dir, "test", 5, 1 << 20)
    log.open()
    store = await Store.open(paths.database_file)
    yield build(Config(paths=paths), log, store).rt
    await store.close()
    log.close()


@pytest.fixture
def daemon_process(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(home: Path | None = None, **kwargs: Any) -> DaemonProcess:
        d = start_daemon_process(home or tmp_path / f"proc{len(started)}", **kwargs)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.send_signal(signal.SIGTERM)
            try:
                d.proc.wait(20)
            except subprocess.TimeoutExpired:
                d.proc.kill()
                d.proc.wait()
        if d.proc.stderr:
            d.proc.stderr.close()
