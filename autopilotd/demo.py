"""`autopilotd demo`: the embedded default, started in an isolated home.

For now it runs one user daemon and prints its web and RPC addresses and a status line; the
wallet, psionic and earn-loop issues extend it with the devnet, a local relay, a Nexus and a
buyer. Every part is a real process that `autopilotctl --home DIR` can talk to.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path

from autopilotd.ctl.client import RpcClient, locate
from autopilotd.ctl.render import render_status
from autopilotd.errors import AutopilotError, DaemonNotRunning, UserError

READY_TIMEOUT_S = 60.0


async def _wait_ready(home: Path, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise UserError(f"the daemon exited during start-up (code {proc.returncode})")
        try:
            endpoint = locate(home=str(home))
            async with RpcClient(endpoint) as client:
                result = await client.call(
                    "wait.until", {"condition": "daemon-ready", "timeout_s": 5}
                )
                if result["met"]:
                    return
        except DaemonNotRunning:
            await asyncio.sleep(0.2)
    raise UserError(f"the daemon did not become ready within {READY_TIMEOUT_S:g} s")


async def run_demo(home: Path, *, once: bool) -> int:
    home = home.expanduser().resolve()
    daemon_home = home / "user"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "autopilotd", "run", "--home", str(daemon_home)
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await _wait_ready(daemon_home, proc)
        endpoint = locate(home=str(daemon_home))
        async with RpcClient(endpoint) as client:
            snapshot = await client.call("status")
        print()
        print("autopilotd demo is running")
        print(f"  web UI    {endpoint.web_url}")
        print(f"  JSON-RPC  {endpoint.rpc_url}")
        print(f"  try       autopilotctl --home {daemon_home} status")
        print()
        print(render_status(snapshot))
        print("\nPress Ctrl-C to stop.", flush=True)
        if not once:
            async with asyncio.TaskGroup() as tg:
                waiters = [tg.create_task(stop.wait()), tg.create_task(proc.wait())]
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
        return 0
    except AutopilotError as exc:
        print(f"autopilotd demo: {exc.message}", file=sys.stderr)
        return 1
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 20)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
