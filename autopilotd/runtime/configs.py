"""The running configuration, and the listeners that apply a change to it.

`settings.update` saves a change and calls `apply(new)`; each service that follows a setting
registered a listener with `on_change` (which returns its unsubscribe) and applies what
concerns it. No command reaches into a service to apply a setting.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from autopilotd.config import Config

logger = logging.getLogger(__name__)

Listener = Callable[[Config, Config], Awaitable[None]]


class LiveConfig:
    """Holds the Config that runs now; `current` is always what the daemon runs."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._listeners: list[Listener] = []

    @property
    def current(self) -> Config:
        return self._config

    def on_change(self, listener: Listener) -> Callable[[], None]:
        """Call `await listener(old, new)` after each applied change; returns the unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def apply(self, new: Config) -> None:
        """Run `new` from now on and let every listener follow (each in turn, in order)."""
        old, self._config = self._config, new
        for listener in list(self._listeners):
            await listener(old, new)
