"""psionic's HTTP server in the bench's own process, on a free loopback port, for the bench
scripts that ask it over a local socket (adapters.py, prefix.py, embed_concurrent.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from psionic.runtime import Runtime
from psionic.server import create_app


@contextlib.asynccontextmanager
async def serving(runtime: Runtime, *, warm: bool) -> AsyncIterator[str]:
    """Serve ``runtime`` until the block ends; yields the server's base URL."""
    runner = web.AppRunner(create_app(runtime, warm=warm), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
