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

Actions beyond reading go through the turn's context (ports/engine.py): an approval is kept in
its item's body and waited for here until `answer` (approval.answer) or its deadline; commands
run in the sandbox port as the workspace's owner; a file change keeps the bytes it replaces
(store) before writing them, so `revert` can put them back exactly.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autopilotd.chat import approvals
from autopilotd.errors import Conflict, Forbidden, NotFound, UserError
from autopilotd.nostr.nip90 import KIND_TEXT_GENERATION
from autopilotd.ports.engine import (
    Approval,
    CommandRun,
    Engine,
    EngineStatus,
    NetworkBuying,
    PastItem,
    TurnFailed,
    WorkspaceFiles,
)
from autopilotd.ports.sandbox import Limits, Sandbox
from autopilotd.runtime.events import EventBus
from autopilotd.runtime.sections import ChatSection
from autopilotd.runtime.started import Started
from autopilotd.runtime.state import SectionWriter
from autopilotd.store.buys import BuyRequest
from autopilotd.store.chat import ChatThreads
from autopilotd.store.chat_records import (
    ApprovalPolicy,
    ApprovalStatus,
    ChatEvent,
    Decision,
    Ended,
    FileChange,
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
EXPIRED_AT_RESTART = "expired at restart"
OUTPUT_SHOWN_BYTES = 64 << 10  # what a command's item keeps of what it printed
OUTPUT_FLUSH_S = 0.1  # how often a running command's new output is written to its item
FILE_MAX_BYTES = 8 << 20  # a file a chat changes (and keeps a copy of, to revert it)


@dataclass(frozen=True)
class ActionRules:
    """What actions may do: the sandbox's limits for a command, how long an approval waits."""

    limits: Limits
    approval_timeout_s: float = 600.0
    spend_ceiling_sats: int = 1000  # per thread, the budgets of its approved /buy in all


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
        sandbox: Sandbox,
        files: WorkspaceFiles,
        buying: NetworkBuying,
        rules: ActionRules,
    ) -> None:
        """`private`: the daemon's own directories (config, data, runtime, logs), which no
        workspace may hold or lie inside."""
        self.threads = threads
        self._writer = writer
        self._events = events
        self._engine = engine
        self._private = tuple(private)
        self._sandbox = sandbox
        self._files = _Files(files)
        self._buying = buying
        self._rules = rules
        self._answered: dict[str, asyncio.Future[Item]] = {}
        self._reverting = asyncio.Lock()
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._ended: dict[str, asyncio.Event] = {}
        self._interrupting: set[str] = set()
        self._tg: asyncio.TaskGroup | None = None
        self._started = Started("the chat service")

    # -- the service ---------------------------------------------------------------------

    async def run(self, ready: Callable[[], None]) -> None:
        for ended in await self.threads.interrupt_running(INTERRUPTED_AT_STOP, EXPIRED_AT_RESTART):
            self._publish_end(ended)
        await self._show()
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            self._started.set()
            self._writer.set(state="ready", reason=f"turns run on the {self._engine.name} engine")
            ready()
            await asyncio.Event().wait()

    def engine_status(self) -> EngineStatus:
        return self._engine.status()

    # -- threads -------------------------------------------------------------------------

    async def start_thread(
        self, title: str, workspace: str, sandbox_mode: SandboxMode = SandboxMode.WORKSPACE_WRITE
    ) -> Thread:
        root = await asyncio.to_thread(self._workspace, workspace)
        thread = await self.threads.create_thread(
            _new_id("thr"),
            title.strip() or root.name,
            self._engine.name,
            str(root),
            sandbox_mode,
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
        await self._started.wait()
        assert self._tg is not None
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

    # -- approvals and changes -------------------------------------------------------------

    async def answer(self, item_id: str, decision: Decision, *, owner: bool) -> Item:
        """Answer an item's pending approval; the engine waiting on it goes on. Spending needs
        the owner (`owner`); a grant "for this thread" is for commands only."""
        item = await self._item(item_id)
        approval = item.body.get("approval")
        if not isinstance(approval, dict):
            raise Conflict(f"item {item_id} asks for no approval")
        if approval.get("action") == "spend" and not owner:
            raise Forbidden(
                "only the owner approves spending: approval.answer_spend with the owner token"
            )
        grant = None
        if decision in (Decision.THREAD, Decision.DENY_THREAD):
            prefixes = approvals.prefixes(str(item.body.get("command", "")))
            if approval.get("action") != "command" or len(prefixes) != 1:
                raise UserError(
                    "only a simple command (no ;, &&, |, $( )) can be allowed or denied for "
                    "the thread: answer approve or deny"
                )
            grant = ("allow" if decision is Decision.THREAD else "deny", prefixes[0])
        if decision is Decision.GRANT:
            raise UserError("answer approve, approve_thread, deny or deny_thread")
        pending = approval.get("status") == ApprovalStatus.PENDING
        if pending and float(approval.get("deadline", 0)) < time.time():
            raise Conflict(f"the approval of item {item_id} expired at its deadline")
        approved = decision in (Decision.ONCE, Decision.THREAD)
        answered = await self.threads.answer(
            item_id,
            ApprovalStatus.APPROVED if approved else ApprovalStatus.DECLINED,
            decision,
            None if approved else "declined by the user",
            grant=grant,
        )
        waiting = self._answered.pop(item_id, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(answered)
        self._events.publish(
            "chat.approval_answered",
            thread_id=item.thread_id,
            item_id=item_id,
            decision=decision.value,
        )
        return answered

    async def revert(self, item_id: str, by: str) -> FileChange:
        """Put back what a file change replaced (see TurnContext.revert)."""
        item = await self._item(item_id)
        change = await self.threads.change(item_id)
        if change is None or item.kind != ItemKind.FILE_CHANGE:
            raise Conflict(f"item {item_id} is not a file change: nothing to revert")
        if item.status is not ItemStatus.COMPLETED:
            raise Conflict(f"item {item_id} is {item.status}: its change never took effect")
        if change.reverted_at is not None:
            raise Conflict(f"item {item_id} was reverted already")
        root = Path((await self.get_thread(item.thread_id)).workspace)
        async with self._reverting:  # one at a time: a second finds the first's mark
            if (await self.threads.change(item_id) or change).reverted_at is not None:
                raise Conflict(f"item {item_id} was reverted already")
            try:
                now = await asyncio.to_thread(self._files.current, root, change.path)
                if _digest(now) != change.after_sha256:
                    raise Conflict(
                        f"{change.path} has changed since item {item_id} changed it: not "
                        "reverted, nothing written"
                    )
                await asyncio.to_thread(self._files.put, root, change.path, change.before)
            except (self._files.error, OSError) as exc:
                raise Conflict(f"{change.path} cannot be reverted: {exc}") from None
            await self.threads.mark_reverted(item_id, by)
        self._events.publish("chat.item_reverted", thread_id=item.thread_id, item_id=item_id)
        return change

    async def _item(self, item_id: str) -> Item:
        item = await self.threads.item(item_id)
        if item is None:
            raise NotFound(f"no chat item {item_id!r}; thread.read shows a thread's items")
        return item

    # -- a turn --------------------------------------------------------------------------

    async def _run(self, thread: Thread, turn: Turn) -> None:
        ctx = _Context(
            thread,
            turn.id,
            threads=self.threads,
            events=self._events,
            sandbox=self._sandbox,
            files=self._files,
            buying=self._buying,
            rules=self._rules,
            answered=self._answered,
            read_thread=self.read_thread,
            revert=self.revert,
        )
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
        except TurnFailed as exc:
            logger.warning("chat turn %s: the %s engine: %s", turn.id, self._engine.name, exc)
            status, error = TurnStatus.FAILED, f"the {self._engine.name} engine: {exc}"
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


class _Files:
    """A workspace's files as chat actions read and write them (in a worker thread)."""

    def __init__(self, files: WorkspaceFiles) -> None:
        self.error = files.WorkspaceError
        self._files = files

    def current(self, root: Path, path: str) -> bytes | None:
        """The file's bytes now, or None when there is none."""
        self._files.clean_path(path)
        try:
            return self._files.read_file(root, path, FILE_MAX_BYTES)
        except self._files.WorkspaceError as exc:
            if str(exc).startswith("no such file"):
                return None
            raise

    def put(self, root: Path, path: str, data: bytes | None) -> None:
        if data is None:
            self._files.remove_file(root, path)
        else:
            self._files.write_user_file(root, path, data)


class _Context:
    """A running turn as its engine records it (ports/engine.py's TurnContext)."""

    def __init__(
        self,
        thread: Thread,
        turn_id: str,
        *,
        threads: ChatThreads,
        events: EventBus,
        sandbox: Sandbox,
        files: _Files,
        buying: NetworkBuying,
        rules: ActionRules,
        answered: dict[str, asyncio.Future[Item]],
        read_thread: Callable[[str], Awaitable[ThreadView]],
        revert: Callable[[str, str], Awaitable[FileChange]],
    ) -> None:
        self._threads = threads
        self._events = events
        self._sandbox = sandbox
        self._files = files
        self._buying = buying
        self._rules = rules
        self._answered = answered  # approval.answer resolves the future a turn waits on
        self._read_thread = read_thread
        self._revert = revert
        self._thread = thread
        self.thread_id = thread.id
        self.turn_id = turn_id
        self.workspace = Path(thread.workspace)
        self.sandbox_mode = thread.sandbox_mode

    async def history(self) -> list[PastItem]:
        view = await self._read_thread(self.thread_id)
        return [
            PastItem(i.kind, i.status.value, i.body)
            for i in view.items
            if i.turn_id != self.turn_id
        ]

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

    async def request_approval(
        self, item_id: str, action: str, command: str | None = None
    ) -> Approval:
        deadline = time.time() + self._rules.approval_timeout_s
        asked = {"action": action, "status": ApprovalStatus.PENDING.value, "deadline": deadline}
        ruled = None
        if command is not None:
            ruled = approvals.decide(command, await self._threads.grants(self.thread_id))
        await self._threads.ask(self.turn_id, item_id, asked)
        if ruled is not None:  # a grant of the thread answers at once
            approved = ruled == "allow"
            reason = None if approved else "denied for this thread (a grant)"
            status = ApprovalStatus.APPROVED if approved else ApprovalStatus.DECLINED
            await self._threads.answer(item_id, status, Decision.GRANT, reason)
            return Approval(approved, status.value, reason)
        waiting = asyncio.get_running_loop().create_future()
        self._answered[item_id] = waiting
        self._events.publish(
            "chat.approval_requested", thread_id=self.thread_id, item_id=item_id, action=action
        )
        try:
            async with asyncio.timeout(max(0.0, deadline - time.time())):
                item: Item = await waiting
        except TimeoutError:
            reason = f"no answer within {self._rules.approval_timeout_s:g} s"
            try:
                item = await self._threads.answer(item_id, ApprovalStatus.EXPIRED, None, reason)
            except Conflict:  # answered in the same instant: that answer stands
                found = await self._threads.item(item_id)
                assert found is not None
                item = found
        finally:
            self._answered.pop(item_id, None)
        answer = item.body["approval"]
        said = str(answer["status"])
        return Approval(said == ApprovalStatus.APPROVED, said, answer.get("reason"))

    async def run_command(
        self, item_id: str, command: str, *, read_only: bool = False
    ) -> CommandRun:
        read_only = read_only or self._thread.sandbox_mode == SandboxMode.READ_ONLY
        stream = _OutputStream(self._threads, self.turn_id, item_id)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(stream.pump(OUTPUT_FLUSH_S))
            try:
                result = await self._sandbox.run(
                    self.workspace,
                    ["/bin/sh", "-c", command],
                    self._rules.limits,
                    as_owner=True,
                    read_only=read_only,
                    on_output=stream.take,
                )
            finally:
                stream.ended.set()  # the pump writes what is left and returns
        await stream.flush(final=True)
        return CommandRun(result, stream.shown, stream.truncated or result.truncated)

    async def current(self, path: str) -> bytes | None:
        return await asyncio.to_thread(self._files.current, self.workspace, path)

    async def change_file(
        self, item_id: str, path: str, before: bytes | None, after: bytes | None
    ) -> None:
        if self._thread.sandbox_mode == SandboxMode.READ_ONLY:
            raise Conflict("this thread's sandbox mode is read-only: it changes no file")
        now = await asyncio.to_thread(self._files.current, self.workspace, path)
        if now != before:
            raise Conflict(f"{path} changed while the change waited: nothing written")
        await self._threads.record_change(self.turn_id, item_id, path, before, _digest(after))
        await asyncio.to_thread(self._files.put, self.workspace, path, after)

    async def revert(self, item_id: str, by: str) -> FileChange:
        return await self._revert(item_id, by)

    async def changes(self) -> list[FileChange]:
        return await self._threads.changes(self.thread_id)

    async def update(self, item_id: str, body: Mapping[str, Any]) -> None:
        await self._threads.update(self.turn_id, item_id, dict(body))

    async def spend_left(self) -> int:
        spent = await self._threads.spent(self.thread_id)
        return max(0, self._rules.spend_ceiling_sats - spent)

    async def buy(
        self, item_id: str, prompt: str, budget_sats: int, timeout_s: float
    ) -> BuyRequest:
        item = await self._threads.item(item_id)
        approval = {} if item is None else item.body.get("approval", {})
        if approval.get("action") != "spend" or approval.get("status") != "approved":
            raise Conflict(f"item {item_id}: spending was not approved")
        buying = self._buying
        request = await buying.submit(
            KIND_TEXT_GENERATION, prompt, budget_sats, [], timeout_s, None
        )
        assert item is not None
        await self.update(item_id, {**item.body, "request_id": request.request_id})
        while not request.finished:
            request = await buying.wait(request.request_id, 30.0)
        return request


class _OutputStream:
    """What a command prints, appended to its item's `output` (item.delta events) a few times
    a second rather than per read, up to OUTPUT_SHOWN_BYTES; the rest is counted, not kept."""

    def __init__(self, threads: ChatThreads, turn_id: str, item_id: str) -> None:
        self._threads = threads
        self._turn_id = turn_id
        self._item_id = item_id
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = bytearray()
        self._room = OUTPUT_SHOWN_BYTES
        self.shown = ""
        self.truncated = False
        self.ended = asyncio.Event()

    def take(self, chunk: bytes) -> None:
        kept = chunk[: self._room]
        self._room -= len(kept)
        self.truncated = self.truncated or len(kept) < len(chunk)
        self._pending += kept

    async def pump(self, interval_s: float) -> None:
        """Write what came every `interval_s` until `ended` is set (never in the middle of a
        write: it is only ever stopped by `ended`, or by the turn's own cancellation)."""
        while not self.ended.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval_s):
                    await self.ended.wait()
            await self.flush()

    async def flush(self, *, final: bool = False) -> None:
        data, self._pending = bytes(self._pending), bytearray()
        text = self._decoder.decode(data, final=final)
        if text:
            self.shown += text
            await self._threads.append(self._turn_id, self._item_id, "output", text)


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


def _digest(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"
