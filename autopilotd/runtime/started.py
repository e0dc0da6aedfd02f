"""Whether a service has started: a command that needs what a service sets up in `run` (its
TaskGroup, its relays) and is asked while the daemon is still starting waits for that start,
rather than fail at once or answer as if the service had nothing. One still not running after
`START_WAIT_S` is a `NotReady` that names it."""

from __future__ import annotations

import asyncio

from autopilotd.errors import NotReady

START_WAIT_S = 30.0


class Started:
    def __init__(self, what: str) -> None:
        self._what = what
        self._event = asyncio.Event()

    def set(self) -> None:
        """The service runs (call it just before `ready()`)."""
        self._event.set()

    def clear(self) -> None:
        """The service has stopped."""
        self._event.clear()

    async def wait(self) -> None:
        try:
            async with asyncio.timeout(START_WAIT_S):
                await self._event.wait()
        except TimeoutError:
            raise NotReady(
                f"{self._what} is not running yet; see its state in `status` and try again"
            ) from None
