"""Built-in commands. Each module has `register(registry, runtime)`."""

from __future__ import annotations

from collections.abc import Callable

from autopilotd.commands import access, system
from autopilotd.registry import Registry
from autopilotd.runtime.context import Runtime

Registrar = Callable[[Registry, Runtime], None]

BUILTINS: tuple[Registrar, ...] = (system.register, access.register)
