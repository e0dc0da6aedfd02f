"""The panes: each one template block, fed by one loader that reads the snapshot.

A loader turns the current snapshot (and, where a pane needs more, read commands of the
registry) into the pane's data; that data is the pane's JSON twin and the only thing its block
sees.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from autopilotd.runtime.context import Runtime

Live = Literal["snapshot", "events", "open", ""]


@dataclass(frozen=True)
class Action:
    """The outcome of one `POST /do/<command>`, handed to the pane it re-renders."""

    command: str
    params: dict[str, Any]
    result: Any = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "params": self.params,
            "result": self.result,
            "error": self.error,
        }


@dataclass(frozen=True)
class View:
    """What a loader may look at: one snapshot, the query string, and the last action."""

    rt: Runtime
    snapshot: dict[str, Any]
    query: Mapping[str, str] = field(default_factory=dict)
    action: Action | None = None

    async def call(self, command: str, params: dict[str, Any] | None = None) -> Any:
        """Run a registry command as the logged-in owner (the web session's scope)."""
        return await self.rt.registry.call(command, params or {}, scope="owner")

    @property
    def now(self) -> float:
        return self.rt.clock.now()

    def acted(self, command: str) -> Action | None:
        return self.action if self.action and self.action.command == command else None


Loader = Callable[[View], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Pane:
    name: str
    title: str
    group: str
    load: Loader
    live: Live = ""  # what re-renders it: snapshot, events, open (when opened), "" (a form)
    in_palette: bool = True

    @property
    def command(self) -> str:
        """The palette command that opens exactly this pane."""
        return f"pane.{self.name}"

    @property
    def template(self) -> str:
        return f"panes/{self.name}.html"

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "group": self.group,
            "command": self.command,
            "live": self.live,
        }
