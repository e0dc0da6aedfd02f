"""A daemon process for the Autopilot Chat benches: `autopilotd run` as it is, but for its chat
engine, which the bench hands in.

The bench script runs itself again as the daemon (`python SCRIPT --serve HOME`), so client and
daemon are two processes, as they are for a user; the client side waits for the daemon's
manifest and its chat service, and stops it at the end:

    if args.serve:
        await serve(args.serve, MyEngine())          # in the daemon process
    ...
    async with daemon_process(__file__, home) as rpc:  # in the bench's own
        await rpc.call("thread.start", {...})
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from autopilotd.app import Adapters
from autopilotd.client import RpcClient, locate
from autopilotd.config import Config
from autopilotd.daemon import run_daemon
from autopilotd.paths import Paths
from autopilotd.ports.engine import Engine


async def serve(home: Path, engine: Engine) -> None:
    """Run the daemon of `home` with `engine` doing the chat's turns, until it is stopped."""
    await run_daemon(Config(paths=Paths.for_home(home)), adapters=Adapters(engine=engine))


@asynccontextmanager
async def daemon_process(script: str, home: Path) -> AsyncIterator[RpcClient]:
    """`python SCRIPT --serve HOME` started, and a client of it once its chat service is
    ready; on leaving, daemon.stop and the process's exit (killed after 30 s)."""
    server = await asyncio.create_subprocess_exec(sys.executable, script, "--serve", str(home))
    try:
        manifest = Paths.for_home(home).manifest_file
        deadline = time.monotonic() + 30
        while not manifest.exists():
            assert server.returncode is None, "the daemon exited"
            assert time.monotonic() < deadline, "the daemon did not start in 30 s"
            await asyncio.sleep(0.05)
        async with RpcClient(locate(home=str(home))) as rpc:
            status = await rpc.call("status")
            while status["chat"]["state"] != "ready":
                status = await rpc.call("status.wait", {"after_seq": status["seq"], "timeout_s": 5})
            yield rpc
            await rpc.call("daemon.stop")
        await asyncio.wait_for(server.wait(), 30)
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()
