"""Autopilot Chat: threads of turns of items, each turn done by an engine (docs/chat.md).

A thread is a conversation about one workspace: a directory of this machine, chosen when the
thread starts, never one that holds (or lies inside) the daemon's own directories, where its
seed and tokens are. A turn is the user's input and what the engine did with it: `turn.start`
records the turn `running`, with the user's message as its first item, and runs the engine in
a task of this service's TaskGroup; the engine records its items through a TurnContext
(ports/engine.py). A thread runs one turn at a time: a second is refused, never interleaved.

Every change is written with its event (store/chat.py) and published on the event bus as
`chat.*` with ids, kinds and statuses only (never a file's content), for the activity feed
and the session log. `turn.interrupt` cancels a turn's task: the turn and its unfinished items
end `interrupted`, keeping what they had. When the daemon stops, a turn's task dies with it,
and at the next start every turn still running and item still started ends `interrupted`. An
engine that raises fails its turn, with an `error` item naming an error id whose traceback
is in the session log. Owns the snapshot's `chat` section.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from autopilotd.errors import Conflict, NotFound, UserError
from autopilotd.ports.engine import Engine, EngineStatus
from autopilotd.runtime.events import EventBus
from autopilotd.runtime.sections import ChatSection
from autopilotd.runtime.state import SectionWriter
from autopilotd.store.chat import ChatThreads
from autopilotd.store.chat_records import (
    ApprovalPolicy,
    ChatEvent,
    Ended,
    Item,
    ItemKind,
    ItemStatus,
    SandboxMode,
    Thread,
    ThreadView,
    Turn,
    TurnStatus,
)

logger = logging.getLogger(__name__)

RECENT = 20
INTERRUPTED_AT_STOP = "the daemon stopped while it ran"
INTERRUPTED_BY_USER = "interrupted (turn.interrupt)"
UNFINISHED = "the engine ended the turn without finishing it"


class ChatService:
    name = "chat"

    def __init__(
        self,
        *,
        threads: ChatThreads,
        writer: SectionWriter[ChatSection],
        events: EventBus,
        engine: Engine,
        private: Sequence[Path],
    ) -> None:
        """`private`: the daemon's own directories (config, data, runtime, logs), which no
        workspace may hold or lie inside."""
        self.threads = threads
        self._writer = writer
        self._events = events
        self._engine = engine
        self._private = tuple(private)
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._ended: dict[str, asyncio.Event] = {}
        self._interrupting: set[str] = set()
        self._tg: asyncio.TaskGroup | None = None

    # -- the service ---------------------------------------------------------------------

    async def run(self, ready: Callable[[], None]) -> None:
        for ended in await self.threads.interrupt_running(INTERRUPTED_AT_STOP):
            self._publish_end(ended)
        await self._show()
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            self._writer.set(state="ready", reason=f"turns run on the {self._engine.name} engine")
            ready()
            await asyncio.Event().wait()

    def engine_status(self) -> EngineStatus:
        return self._engine.status()

    # -- threads -------------------------------------------------------------------------

    async def start_thread(self, title: str, workspace: str) -> Thread:
        root = await asyncio.to_thread(self._workspace, workspace)
        thread = await self.threads.create_thread(
            _new_id("thr"),
            title.strip() or root.name,
            self._engine.name,
            str(root),
            SandboxMode.READ_ONLY,
            ApprovalPolicy.ASK,
        )
        self._events.publish("chat.thread_started", thread_id=thread.id, engine=thread.engine)
        await self._show()
        return thread

    async def get_thread(self, thread_id: str) -> Thread:
        thread = await self.threads.thread(thread_id)
        if thread is None:
            raise NotFound(f"no chat thread {thread_id!r}; thread.list shows them")
        return thread

    async def read_thread(self, thread_id: str) -> ThreadView:
        view = await self.threads.view(thread_id)
        if view is None:
            raise NotFound(f"no chat thread {thread_id!r}; thread.list shows them")
        return view

    async def archive(self, thread_id: str) -> Thread:
        before = await self.get_thread(thread_id)
        thread = await self.threads.archive(thread_id)
        if before.status != thread.status:
            self._events.publish("chat.thread_archived", thread_id=thread_id)
            await self._show()
        return thread

    async def events(
        self, thread_id: str, after_seq: int, limit: int, timeout_s: float = 0.0
    ) -> tuple[list[ChatEvent], int]:
        """The thread's events after `after_seq`; with none yet, those that come within
        `timeout_s` (none at the timeout)."""
        await self.get_thread(thread_id)
        return await self.threads.wait_events(thread_id, after_seq, limit, timeout_s)

    # -- turns ---------------------------------------------------------------------------

    async def start_turn(self, thread_id: str, text: str) -> Turn:
        """Start a turn of the thread with the user's `text`; it runs in the background."""
        if not text.strip():
            raise UserError("the input is empty: write something, or a command such as /ls")
        if self._tg is None:
            raise Conflict("the chat service is not running yet: try again in a moment")
        thread = await self.get_thread(thread_id)
        turn = await self.threads.start_turn(thread_id, _new_id("turn"), _new_id("item"), text)
        self._ended[turn.id] = asyncio.Event()
        self._runs[turn.id] = self._tg.create_task(self._run(thread, turn), name=f"chat {turn.id}")
        self._events.publish("chat.turn_started", thread_id=thread_id, turn_id=turn.id, n=turn.n)
        await self._show()
        return turn

    async def get_turn(self, turn_id: str) -> tuple[Turn, list[Item]]:
        found = await self.threads.turn_with_items(turn_id)
        if found is None:
            raise NotFound(f"no chat turn {turn_id!r}; thread.read shows a thread's turns")
        return found

    async def wait(self, turn_id: str, timeout_s: float) -> tuple[Turn, list[Item]]:
        """The turn and its items once it ended, or as they are at the timeout."""
        turn, items = await self.get_turn(turn_id)
        ended = self._ended.get(turn_id)
        if turn.ended or ended is None:
            return turn, items
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await ended.wait()
        return await self.get_turn(turn_id)

    async def interrupt(self, turn_id: str) -> tuple[Turn, list[Item]]:
        """Cancel a running turn: it and its unfinished items end `interrupted`. A turn that
        has ended is returned as it is."""
        turn, items = await self.get_turn(turn_id)
        run = self._runs.get(turn_id)
        if turn.ended:
            return turn, items
        if run is not None:
            self._interrupting.add(turn_id)
            run.cancel()
        return await self.wait(turn_id, 10.0)

    # -- a turn --------------------------------------------------------------------------

    async def _run(self, thread: Thread, turn: Turn) -> None:
        ctx = _Context(self.threads, self._events, thread, turn.id)
        status, error = TurnStatus.COMPLETED, None
        try:
            await self._engine.run_turn(ctx, turn.input)
        except asyncio.CancelledError:
            if turn.id not in self._interrupting:
                raise  # the daemon is stopping: the next start ends the turn interrupted
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            status, error = TurnStatus.INTERRUPTED, INTERRUPTED_BY_USER
        except Exception:
            error_id = secrets.token_hex(6)
            logger.exception("chat turn %s: the engine failed [error id %s]", turn.id, error_id)
            status = TurnStatus.FAILED
            error = f"the {self._engine.name} engine failed (error id {error_id}; see the log)"
        finally:  # from here on, an interrupt has nothing left to cancel: the turn is ending
            self._runs.pop(turn.id, None)
            self._interrupting.discard(turn.id)
        await self._end(ctx, turn, status, error)

    async def _end(self, ctx: _Context, turn: Turn, status: TurnStatus, error: str | None) -> None:
        if status is TurnStatus.FAILED:
            item_id = await ctx.start_item(ItemKind.ERROR, {"message": error})
            await ctx.complete(item_id)
        interrupted = status is TurnStatus.INTERRUPTED
        ended = await self.threads.end_turn(
            turn.id,
            status,
            error,
            leftover=ItemStatus.INTERRUPTED if interrupted else ItemStatus.FAILED,
            leftover_error=None if interrupted else error or UNFINISHED,
        )
        if ended is not None:
            self._publish_end(ended)
        done = self._ended.pop(turn.id, None)
        if done is not None:
            done.set()
        await self._show()

    def _publish_end(self, ended: Ended) -> None:
        turn = ended.turn
        for item in ended.items:
            _publish_item(self._events, item)
        self._events.publish(
            f"chat.turn_{turn.status}",
            thread_id=turn.thread_id,
            turn_id=turn.id,
            error=turn.error,
        )

    def _workspace(self, path: str) -> Path:
        """The directory `path` names, resolved, if it may be a workspace (see the module
        docstring); UserError saying why not otherwise."""
        if not Path(path).is_absolute():
            raise UserError(
                f"workspace {path!r} is not an absolute path: name a directory of this "
                "machine in full, e.g. /home/me/project"
            )
        try:
            root = Path(path).resolve(strict=True)
            is_dir = root.is_dir()
        except (OSError, RuntimeError):
            raise UserError(f"workspace {path} does not exist (or cannot be reached)") from None
        if not is_dir:
            raise UserError(f"workspace {path} is not a directory")
        if root == Path(root.anchor):
            raise UserError("the workspace cannot be the whole filesystem: choose a directory")
        for own in self._private:
            own = own.resolve()
            if root == own or own.is_relative_to(root) or root.is_relative_to(own):
                raise UserError(
                    f"workspace {path} holds, or lies inside, this daemon's own directory "
                    f"{own} (its seed and tokens): choose a directory that does not"
                )
        return root

    async def _show(self) -> None:
        counts, running = await self.threads.counts()
        recent = await self.threads.threads(RECENT, include_archived=True)
        self._writer.set(
            threads=counts,
            running_turns=running,
            recent=tuple(
                {k: t.to_json()[k] for k in ("id", "title", "status", "updated_at", "last_turn")}
                for t in recent
            ),
        )


class _Context:
    """A running turn as its engine records it (ports/engine.py's TurnContext)."""

    def __init__(self, threads: ChatThreads, events: EventBus, thread: Thread, turn_id: str):
        self._threads = threads
        self._events = events
        self.thread_id = thread.id
        self.turn_id = turn_id
        self.workspace = Path(thread.workspace)

    async def start_item(self, kind: ItemKind, body: Mapping[str, Any]) -> str:
        item = await self._threads.start_item(self.turn_id, _new_id("item"), kind, dict(body))
        return item.id

    async def append(self, item_id: str, field: str, text: str) -> None:
        await self._threads.append(self.turn_id, item_id, field, text)

    async def complete(self, item_id: str, body: Mapping[str, Any] | None = None) -> None:
        item = await self._threads.end_item(
            self.turn_id, item_id, ItemStatus.COMPLETED, None if body is None else dict(body)
        )
        _publish_item(self._events, item)

    async def fail(self, item_id: str, reason: str, body: Mapping[str, Any] | None = None) -> None:
        item = await self._threads.end_item(
            self.turn_id,
            item_id,
            ItemStatus.FAILED,
            None if body is None else dict(body),
            error=reason,
        )
        _publish_item(self._events, item)


def _publish_item(events: EventBus, item: Item) -> None:
    """`chat.item_<status>` for an item that ended: ids, kind, tool, never its content."""
    events.publish(
        f"chat.item_{item.status}",
        thread_id=item.thread_id,
        turn_id=item.turn_id,
        item_id=item.id,
        kind=item.kind,
        tool=item.body.get("tool"),
    )


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"
