"""thread.*, turn.* and engine.* commands: Autopilot Chat (chat/service.py, docs/chat.md).

Named `thread`/`turn`, not `chat`: in the original's CLI `chat` means NIP-28 channels.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

from autopilotd.chat.service import ChatService
from autopilotd.codec import Bounds
from autopilotd.commands.system import LONG_POLL_MAX_S, clamp_timeout
from autopilotd.registry import Registry
from autopilotd.runtime.context import Runtime
from autopilotd.store.chat_records import Decision, Item, SandboxMode, Turn

ThreadId = Annotated[str, Bounds(max_length=64)]
TurnId = Annotated[str, Bounds(max_length=64)]
ItemId = Annotated[str, Bounds(max_length=64)]
INPUT_MAX_CHARS = 16_000


def register(reg: Registry, rt: Runtime, chat: ChatService) -> None:
    @reg.command("thread.start", access="control")
    async def thread_start(
        workspace: Annotated[str, Bounds(max_length=4096)],
        title: Annotated[str, Bounds(max_length=200)] = "",
        sandbox_mode: Literal["workspace-write", "read-only"] = "workspace-write",
    ) -> dict[str, Any]:
        """Start a chat thread about a workspace: `workspace` is an existing directory of this
        machine, named in full (absolute); the engine reads files there and nowhere else. It
        may not hold, or lie inside, the daemon's own directories (where its seed is).
        `title` defaults to the directory's name. `sandbox_mode`: workspace-write (commands,
        once approved, may change files in the workspace, and patches apply) or read-only
        (commands see the workspace read-only; no file changes). Then turn.start."""
        return (await chat.start_thread(title, workspace, SandboxMode(sandbox_mode))).to_json()

    @reg.command("thread.list")
    async def thread_list(
        limit: Annotated[int, Bounds(1, 500)] = 50, include_archived: bool = False
    ) -> dict[str, Any]:
        """List chat threads, the most recently active first, each with its newest turn's
        status (`last_turn`); archived ones only with include_archived."""
        threads = await chat.threads.threads(limit, include_archived=include_archived)
        return {"threads": [t.to_json() for t in threads]}

    @reg.command("thread.read")
    async def thread_read(thread_id: ThreadId) -> dict[str, Any]:
        """Show a thread whole: its turns in order, each with its items in order (the user's
        message, tool calls with their results, the agent's messages, errors), and `last_seq`,
        the sequence number of its newest event (thread.events continues from there)."""
        return (await chat.read_thread(thread_id)).to_json()

    @reg.command("thread.archive", access="control")
    async def thread_archive(thread_id: ThreadId) -> dict[str, Any]:
        """Archive a thread: it stays readable, is listed only with include_archived, and takes
        no more turns. A thread with a running turn is refused: interrupt the turn first."""
        return (await chat.archive(thread_id)).to_json()

    @reg.command("thread.events")
    async def thread_events(
        thread_id: ThreadId,
        after_seq: Annotated[int, Bounds(minimum=0)] = 0,
        limit: Annotated[int, Bounds(1, 1000)] = 1000,
        timeout_s: float = 0.0,
    ) -> dict[str, Any]:
        """A thread's events after sequence number `after_seq`, oldest first (thread.started,
        turn.started, item.started, item.delta, item.completed, item.failed, turn.completed,
        turn.interrupted …), each with the record as it is after it. A client that saw
        `after_seq` gets exactly what it missed, in order; `last_seq` is the newest there is
        (ask again from the last one received while it is higher). With `timeout_s` (at most
        25 s) and nothing new yet, waits for the next events and returns them as soon as they
        are written (none at the timeout): a thread followed live."""
        events, last = await chat.events(thread_id, after_seq, limit, clamp_timeout(timeout_s))
        return {"thread_id": thread_id, "events": [e.to_json() for e in events], "last_seq": last}

    @reg.command("turn.start", access="control")
    async def turn_start(
        thread_id: ThreadId,
        input: Annotated[str, Bounds(max_length=INPUT_MAX_CHARS)],
        wait: bool = False,
    ) -> dict[str, Any]:
        """Start a turn in a thread with the user's `input` (at most 16,000 characters). With
        no model engine set up, each line that is a command runs in the thread's workspace:
        /ls [PATH], /read PATH, /search TEXT [PATH], /run COMMAND, /patch (the diff on the
        lines after it), /diff, /revert ITEM; /run, /patch and /revert wait for an approval
        (approval.answer). Returns at once, or with `wait` once the
        turn ended (at most 25 s; then turn.wait). Refused while the thread has a running
        turn (one turn at a time), and on an archived thread."""
        turn = await chat.start_turn(thread_id, input)
        if wait:
            return _turn(*await chat.wait(turn.id, LONG_POLL_MAX_S))
        return _turn(*await chat.get_turn(turn.id))

    @reg.command("turn.wait")
    async def turn_wait(turn_id: TurnId, timeout_s: float = 20.0) -> dict[str, Any]:
        """Wait (at most 25 s per call) until a turn ended; returns it with its items."""
        return _turn(*await chat.wait(turn_id, clamp_timeout(timeout_s)))

    @reg.command("turn.interrupt", access="control")
    async def turn_interrupt(turn_id: TurnId) -> dict[str, Any]:
        """Interrupt a running turn: its work stops, and it and its unfinished items end
        `interrupted`, keeping what they had so far. A turn that has ended is left as it is."""
        return _turn(*await chat.interrupt(turn_id))

    @reg.command("approval.answer", access="control")
    async def approval_answer(
        item_id: ItemId, decision: Literal["approve", "approve_thread", "deny", "deny_thread"]
    ) -> dict[str, Any]:
        """Answer the approval an item waits for: approve (this once), approve_thread (and
        any later command starting with these exact words, in this thread), deny, or
        deny_thread (and refuse such commands in this thread without asking). A thread grant
        takes one simple command (no ;, &&, |). Refused when the approval was answered
        already or has expired; spending is approval.answer_spend's (the owner's). Returns
        the item."""
        return (await chat.answer(item_id, Decision(decision), owner=False)).to_json()

    @reg.command("approval.answer_spend", access="owner")
    async def approval_answer_spend(
        item_id: ItemId, decision: Literal["approve", "deny"]
    ) -> dict[str, Any]:
        """Answer an approval to spend (a /buy of a chat thread): only the owner may, since it
        pays from the wallet. approve (this request, within its budget) or deny. Returns the
        item."""
        return (await chat.answer(item_id, Decision(decision), owner=True)).to_json()

    @reg.command("item.revert", access="control")
    async def item_revert(item_id: ItemId) -> dict[str, Any]:
        """Undo a file change (an item of kind file_change that completed): the file gets back
        exactly the bytes it had before (or is deleted again if the change created it). Refused,
        writing nothing, when the file has changed since, or it was reverted already. Returns the
        item's thread and the file's path."""
        change = await chat.revert(item_id, by="item.revert")
        return {
            "item_id": item_id,
            "thread_id": change.thread_id,
            "path": change.path,
            "restored_sha256": change.before_sha256,
        }

    @reg.command("engine.status")
    async def engine_status() -> dict[str, Any]:
        """Show the engine that runs chat turns: whether it is installed and ready, the model
        it runs (none for the command lane), and in words what it can do."""
        return asdict(chat.engine_status())


def _turn(turn: Turn, items: list[Item]) -> dict[str, Any]:
    return turn.to_json(items)
