"""The engine port: what does the work of an Autopilot Chat turn (chat/service.py, docs/chat.md).

The chat service owns threads, turns, the item and event records and the turn's task; an
engine is handed one turn at a time (`run_turn`) with a `TurnContext`, and records what it
does only through it: it starts an item, appends text to it as it comes (`item.delta`), and
completes or fails it. So every engine (the command lane, a local model, and the Codex
app-server later) produces the same items and events, and the service can end whatever an
engine left unfinished.

An engine never raises for what the user asked wrongly (a refused path is a failed item with
the reason); raising is an engine breaking down, and fails the turn. Cancellation is an
interrupt (or the daemon stopping): an engine lets it through.

Engines read a workspace through `WorkspaceFiles`, whose one implementation is the module
autopilotd/sandbox/workspace.py itself (handed in by the composition root): no `..`, no
absolute path, no symlink, only regular files.

Actions that do more than read go through the context too, so every engine gets the same
rules: `request_approval` asks the user (or a grant of the thread answers) and waits;
`run_command` runs a shell command in the sandbox with the workspace as its only writable
directory; `change_file` writes a file, keeping what it replaces so that `revert` can put it
back byte for byte. The engine starts the item, asks, acts, and ends the item.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from autopilotd.ports.sandbox import RunResult
from autopilotd.store.buys import BuyRequest
from autopilotd.store.chat_records import FileChange, ItemKind


@dataclass(frozen=True)
class CommandRun:
    """A command run for a chat: how it ended, and what it printed as the item shows it
    (stdout and stderr in the order they came, its first 64 KiB)."""

    result: RunResult
    output: str
    truncated: bool


@dataclass(frozen=True)
class Approval:
    """How an approval ended: `approved`, or not with `status` (declined, expired) and the
    reason, which the engine tells its model."""

    approved: bool
    status: str  # approved | declined | expired
    reason: str | None

    def refusal(self, what: str) -> str:
        """What an item says when this approval was not given, e.g. "not run: the approval
        was declined (declined by the user)"."""
        return f"{what}: the approval was {self.status}" + (
            f" ({self.reason})" if self.reason else ""
        )


@dataclass(frozen=True)
class Done:
    """What became of an action's item: `ok` (completed) or not, and its final body, with the
    reason as `error` when it failed."""

    item_id: str
    ok: bool
    body: Mapping[str, Any]


class BuyAction(Protocol):
    """The chat's buy action (chat/actions.py), which an engine's own buy tool uses."""

    async def buy_item(self, ctx: TurnContext, item_id: str, body: Mapping[str, Any]) -> Done:
        """Buy for the started network_request item whose body holds a prompt and a budget:
        the thread's spend ceiling, the owner's approval, then the buyer."""
        ...


@dataclass(frozen=True)
class EngineStatus:
    """What `engine.status` says: honestly whether the engine can run turns, and on what."""

    name: str
    installed: bool  # its program or model is on this machine
    ready: bool  # it can run a turn now
    model: str | None  # the model it runs, if it runs one
    reason: str  # in words: what it is, or why it is not ready and what to do


class TurnFailed(Exception):
    """Raised by an engine whose turn cannot go on for a reason it can say in words (its model
    server gone, its program exited): the turn fails with this message, which is shown to the
    user, as its `error` item. Anything else an engine raises is a breakdown with an error id."""


@dataclass(frozen=True)
class PastItem:
    """An item of an earlier turn of the thread, as a model engine replays it."""

    kind: str  # an ItemKind value
    status: str  # started | completed | failed | interrupted
    body: Mapping[str, Any]


class TurnContext(Protocol):
    """One running turn, as its engine records it. Every call is one write of the item and its
    event; once the turn has ended (interrupted), each is refused with Conflict."""

    @property
    def thread_id(self) -> str: ...

    @property
    def turn_id(self) -> str: ...

    @property
    def workspace(self) -> Path:
        """The thread's workspace: the root every file the engine reads is relative to."""
        ...

    @property
    def sandbox_mode(self) -> str:
        """The thread's sandbox mode: `workspace-write`, or `read-only` (change nothing)."""
        ...

    async def history(self) -> list[PastItem]:
        """The items of the thread's earlier turns, oldest first: the conversation so far."""
        ...

    async def start_item(self, kind: ItemKind, body: Mapping[str, Any]) -> str:
        """Record a new item, `started`, with its first body; returns its id."""
        ...

    async def append(self, item_id: str, field: str, text: str) -> None:
        """Append `text` to the text field `field` of the item's body (streamed output)."""
        ...

    async def complete(self, item_id: str, body: Mapping[str, Any] | None = None) -> None:
        """The item is done; `body`, when given, is its final body."""
        ...

    async def fail(self, item_id: str, reason: str, body: Mapping[str, Any] | None = None) -> None:
        """The item could not be done: `reason` (shown to the user) goes into its body as
        `error`, over `body` when given."""
        ...

    async def request_approval(
        self, item_id: str, action: str, command: str | None = None
    ) -> Approval:
        """Ask before the started item's `action` ("command", "file_change"): a grant of the
        thread answers a `command` at once; otherwise the user is asked, and the wait ends at
        their answer or the deadline (then `expired`, a decline)."""
        ...

    async def run_command(
        self, item_id: str, command: str, *, read_only: bool = False
    ) -> CommandRun:
        """Run `command` with /bin/sh in the sandbox, in the workspace (read-only when asked,
        or when the thread's sandbox mode is read-only), streaming what it prints into the
        started item's `output` as it comes (its first 64 KiB). SandboxUnavailable when it
        cannot."""
        ...

    async def current(self, path: str) -> bytes | None:
        """The workspace's file `path` as it is now (at most 8 MiB), or None when there is no
        such file; the workspace's error when the path is refused (`..`, a symlink, …)."""
        ...

    async def change_file(
        self, item_id: str, path: str, before: bytes | None, after: bytes | None
    ) -> None:
        """Make the file `path` `after` (None: delete it), if it is still `before` (None:
        absent); keeps `before` with the started item for a revert. Refused (Conflict or the
        workspace's error) without writing anything otherwise."""
        ...

    async def revert(self, item_id: str, by: str) -> FileChange:
        """Put back what the file change of item `item_id` replaced, byte for byte, if the
        file is still as the change left it; refused otherwise, with nothing written."""
        ...

    async def changes(self) -> list[FileChange]:
        """The thread's file changes in effect (applied, not reverted), oldest first."""
        ...

    async def update(self, item_id: str, body: Mapping[str, Any]) -> None:
        """Replace a started item's body (its approval is kept), e.g. with a request's id as
        soon as it exists."""
        ...

    async def spend_left(self) -> int:
        """Sats this thread may still approve spending: its ceiling less the budgets of its
        approved network requests."""
        ...

    async def buy(
        self, item_id: str, prompt: str, budget_sats: int, timeout_s: float
    ) -> BuyRequest:
        """Buy a text-generation job from the network through the buyer (which pays only an
        invoice within `budget_sats`, from the wallet), once the started item's spend approval
        was given; the request's id goes into the item at once, and this returns when the
        request is done, failed or expired."""
        ...


class Engine(Protocol):
    @property
    def name(self) -> str:
        """The engine's name, recorded with every thread it runs (e.g. "commands")."""
        ...

    def status(self) -> EngineStatus: ...

    async def run_turn(self, ctx: TurnContext, text: str) -> None:
        """Do the user's `text` in the turn `ctx`, recording each step as an item; return when
        the turn's work is done."""
        ...


class NetworkBuying(Protocol):
    """Buying from the network: the buyer service (buyer/service.py)."""

    async def submit(
        self,
        kind: int,
        prompt: str,
        budget_sats: int,
        providers: list[str],
        timeout_s: float,
        max_tokens: int | None,
    ) -> BuyRequest: ...

    async def wait(self, request_id: str, timeout: float) -> BuyRequest: ...


class FileEntry(Protocol):
    """A regular file of a workspace (sandbox/workspace.py's `FileInfo`)."""

    @property
    def path(self) -> str: ...  # relative POSIX path, e.g. "src/main.py"

    @property
    def size(self) -> int: ...

    @property
    def sha256(self) -> str: ...


class WorkspaceFiles(Protocol):
    """Confined reads of a workspace: the module autopilotd/sandbox/workspace.py satisfies this
    as it is. Every refusal raises `WorkspaceError`, whose message is safe to show a user."""

    @property
    def WorkspaceError(self) -> type[Exception]: ...  # the module's exception class

    def clean_path(self, path: str) -> tuple[str, ...]:
        """The components of a relative path; refuses `..`, absolute paths, empty parts."""
        ...

    def read_file(self, root: Path, path: str, max_bytes: int) -> bytes:
        """The bytes of the regular file `path` under `root` (no symlink anywhere on the way);
        refused over `max_bytes`."""
        ...

    def scan(self, root: Path, max_files: int) -> Sequence[FileEntry]:
        """Every regular file under `root` by path (symlinks and special files skipped), at
        most `max_files`."""
        ...

    def write_user_file(self, root: Path, path: str, data: bytes) -> FileEntry:
        """Create or replace the regular file `path` under `root` by rename (parents made),
        keeping the replaced file's mode and owner; refused over 8 MiB."""
        ...

    def remove_file(self, root: Path, path: str) -> None:
        """Delete the regular file `path` under `root`."""
        ...
