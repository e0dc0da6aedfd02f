"""One aiohttp session for an adapter's calls to a local HTTP server, opened on first use (so
an adapter can be made outside the event loop) and opened again after it was closed."""

from __future__ import annotations

import aiohttp


class LazySession:
    def __init__(self, timeout_s: float) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def __call__(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
