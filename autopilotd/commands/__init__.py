"""The registry's commands. Each module has `register(registry, runtime, …)`: the built-in
ones need only the kernel; the others get the service they drive from the composition root."""

from __future__ import annotations

from collections.abc import Callable

from autopilotd.commands import access, settings, setup, starter, system
from autopilotd.registry import Registry
from autopilotd.runtime.context import Runtime

Registrar = Callable[[Registry, Runtime], None]

BUILTINS: tuple[Registrar, ...] = (
    system.register,
    access.register,
    settings.register,
    setup.register,
    starter.register,
)
