"""Autopilot Chat's tables (chat/service.py): threads, their turns, each turn's items, and the
append-only event log; the records and their states are in chat_records.py.

Every change to a thread, turn or item writes its event row (`chat_events`, one global,
append-only sequence `seq`) in the same transaction, so the log and the tables never
disagree. An event's body is the record as it is after the change (`item.delta`: the text
appended to one field), so a client that saw seq N and asks for what came after gets exactly
what it missed, and replaying a thread's events gives its items as they are.

Reads that must be one committed state (a thread with its `last_seq`, a page of events) take
the write lock (`_consistent`): the store has one connection, on which another task's
transaction, not committed yet (and perhaps about to roll back), would otherwise show.

Every write goes through `_write()`, never `self._sql.write()` itself: when its transaction
has ended, `_write()` wakes whoever waits in `wait_events` (a thread followed live, the long
poll of `thread.events`, the web UI's stream), who then read what the commit wrote. A new
writing method uses `_write()` too, or its events reach followers only with the next write.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from typing import Any

from autopilotd.errors import Conflict, NotFound
from autopilotd.store.chat_records import (
    ITEM_ENDED,
    TURN_ENDED,
    ApprovalPolicy,
    ApprovalStatus,
    ChatEvent,
    Decision,
    Ended,
    EventType,
    FileChange,
    Item,
    ItemKind,
    ItemStatus,
    SandboxMode,
    Thread,
    ThreadStatus,
    ThreadView,
    Turn,
    TurnStatus,
)
from autopilotd.store.db import Sql, Tx

THREAD_COLUMNS = (
    "t.id, t.title, t.engine, t.workspace, t.sandbox_mode, t.approval_policy, t.status, "
    "t.created_at, t.updated_at, "
    "(SELECT u.status FROM chat_turns u WHERE u.thread_id = t.id ORDER BY u.n DESC LIMIT 1)"
)
TURN_COLUMNS = "id, thread_id, n, status, input, error, started_at, ended_at"
ITEM_COLUMNS = "id, thread_id, turn_id, n, kind, status, body, created_at, updated_at"
EVENT_COLUMNS = "seq, thread_id, turn_id, item_id, type, body, at"
CHANGE_COLUMNS = (
    "item_id, thread_id, path, before, before_sha256, after_sha256, applied_at, reverted_at, "
    "reverted_by"
)


class ChatThreads:
    def __init__(self, sql: Sql) -> None:
        self._sql = sql
        self._changed = asyncio.Event()  # replaced and set when a write transaction ends

    # -- threads -----------------------------------------------------------------------------

    async def create_thread(
        self,
        thread_id: str,
        title: str,
        engine: str,
        workspace: str,
        sandbox_mode: SandboxMode,
        approval_policy: ApprovalPolicy,
    ) -> Thread:
        now = time.time()
        thread = Thread(
            thread_id,
            title,
            engine,
            workspace,
            sandbox_mode.value,
            approval_policy.value,
            ThreadStatus.ACTIVE,
            now,
            now,
        )
        async with self._write() as tx:
            await tx.execute(
                "INSERT INTO chat_threads (id, title, engine, workspace, sandbox_mode, "
                "approval_policy, status, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, 'active', ?, ?)",
                (thread_id, title, engine, workspace, sandbox_mode, approval_policy, now, now),
            )
            await _event(tx, EventType.THREAD_STARTED, thread.to_json(), thread_id, at=now)
        return thread

    async def thread(self, thread_id: str) -> Thread | None:
        return await _thread(self._sql, thread_id)

    async def threads(self, limit: int, *, include_archived: bool = False) -> list[Thread]:
        """Threads, the most recently changed first."""
        where = "" if include_archived else "WHERE t.status = 'active'"
        rows = await self._sql.fetchall(
            f"SELECT {THREAD_COLUMNS} FROM chat_threads t {where} "
            "ORDER BY t.updated_at DESC, t.id LIMIT ?",
            (limit,),
        )
        return [Thread.from_row(r) for r in rows]

    async def counts(self) -> tuple[dict[str, int], int]:
        """Threads by status, and how many turns run now."""
        rows = await self._sql.fetchall("SELECT status, COUNT(*) FROM chat_threads GROUP BY status")
        running = await self._sql.fetchone(
            "SELECT COUNT(*) FROM chat_turns WHERE status = 'running'"
        )
        return {str(s): int(n) for s, n in rows}, int(running[0]) if running else 0

    async def archive(self, thread_id: str) -> Thread:
        """Archive a thread (once; archiving it again changes nothing). One with a running
        turn is refused."""
        async with self._write() as tx:
            thread = await _existing_thread(tx, thread_id)
            if thread.status is ThreadStatus.ARCHIVED:
                return thread
            running = await _running_turn(tx, thread_id)
            if running is not None:
                raise Conflict(
                    f"thread {thread_id} has a turn running ({running}): interrupt it "
                    "(turn.interrupt) before archiving the thread"
                )
            now = time.time()
            await tx.execute(
                "UPDATE chat_threads SET status = 'archived', updated_at = ? WHERE id = ?",
                (now, thread_id),
            )
            thread = await _existing_thread(tx, thread_id)
            await _event(tx, EventType.THREAD_ARCHIVED, thread.to_json(), thread_id, at=now)
        return thread

    async def view(self, thread_id: str) -> ThreadView | None:
        """The thread with its turns and items in order, and its last event's seq."""
        async with self._consistent() as tx:
            thread = await _thread(tx, thread_id)
            if thread is None:
                return None
            turns = await tx.fetchall(
                f"SELECT {TURN_COLUMNS} FROM chat_turns WHERE thread_id = ? ORDER BY n",
                (thread_id,),
            )
            items = await tx.fetchall(
                f"SELECT {', '.join('i.' + c for c in ITEM_COLUMNS.split(', '))} "
                "FROM chat_items i JOIN chat_turns u ON u.id = i.turn_id "
                "WHERE i.thread_id = ? ORDER BY u.n, i.n",
                (thread_id,),
            )
            return ThreadView(
                thread,
                [Turn.from_row(r) for r in turns],
                [Item.from_row(r) for r in items],
                await _last_seq(tx, thread_id),
            )

    async def events(
        self, thread_id: str, after_seq: int, limit: int
    ) -> tuple[list[ChatEvent], int]:
        """The thread's events after `after_seq`, oldest first (at most `limit`), and the seq
        of its newest event."""
        async with self._consistent() as tx:
            rows = await tx.fetchall(
                f"SELECT {EVENT_COLUMNS} FROM chat_events WHERE thread_id = ? AND seq > ? "
                "ORDER BY seq LIMIT ?",
                (thread_id, after_seq, limit),
            )
            return [ChatEvent.from_row(r) for r in rows], await _last_seq(tx, thread_id)

    async def wait_events(
        self, thread_id: str, after_seq: int, limit: int, timeout_s: float
    ) -> tuple[list[ChatEvent], int]:
        """Like `events`, but with nothing after `after_seq` wait up to `timeout_s` for a
        write to commit some; what there is then (perhaps still nothing)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            changed = self._changed  # taken before looking: a commit after the look sets it
            events, last = await self.events(thread_id, after_seq, limit)
            if events:
                return events, last
            try:
                async with asyncio.timeout_at(deadline):
                    await changed.wait()
            except TimeoutError:
                return events, last

    # -- turns -------------------------------------------------------------------------------

    async def start_turn(self, thread_id: str, turn_id: str, item_id: str, text: str) -> Turn:
        """Start a turn of the thread with the user's message as its first item; refused
        while the thread has a running turn or is archived."""
        async with self._write() as tx:
            thread = await _existing_thread(tx, thread_id)
            if thread.status is ThreadStatus.ARCHIVED:
                raise Conflict(f"thread {thread_id} is archived: start a new thread for more")
            running = await _running_turn(tx, thread_id)
            if running is not None:
                raise Conflict(
                    f"thread {thread_id} has a turn running ({running}): wait for it to end "
                    "(turn.wait) or interrupt it (turn.interrupt), then start the next"
                )
            row = await tx.fetchone(
                "SELECT COALESCE(MAX(n), 0) + 1 FROM chat_turns WHERE thread_id = ?",
                (thread_id,),
            )
            assert row is not None
            now = time.time()
            turn = Turn(turn_id, thread_id, int(row[0]), TurnStatus.RUNNING, text, None, now, None)
            await tx.execute(
                "INSERT INTO chat_turns (id, thread_id, n, status, input, started_at) "
                "VALUES (?, ?, ?, 'running', ?, ?)",
                (turn_id, thread_id, turn.n, text, now),
            )
            await _touch(tx, thread_id, now)
            await _event(tx, EventType.TURN_STARTED, turn.to_json(), thread_id, turn_id, at=now)
            said = await _insert_item(tx, turn, item_id, ItemKind.USER_MESSAGE, {"text": text})
            await _end_item(tx, said, ItemStatus.COMPLETED, said.body)
        return turn

    async def item(self, item_id: str) -> Item | None:
        row = await self._sql.fetchone(
            f"SELECT {ITEM_COLUMNS} FROM chat_items WHERE id = ?", (item_id,)
        )
        return None if row is None else Item.from_row(row)

    async def turn_with_items(self, turn_id: str) -> tuple[Turn, list[Item]] | None:
        async with self._consistent() as tx:
            row = await tx.fetchone(
                f"SELECT {TURN_COLUMNS} FROM chat_turns WHERE id = ?", (turn_id,)
            )
            if row is None:
                return None
            items = await tx.fetchall(
                f"SELECT {ITEM_COLUMNS} FROM chat_items WHERE turn_id = ? ORDER BY n", (turn_id,)
            )
            return Turn.from_row(row), [Item.from_row(r) for r in items]

    async def end_turn(
        self,
        turn_id: str,
        status: TurnStatus,
        error: str | None,
        *,
        leftover: ItemStatus,
        leftover_error: str | None = None,
    ) -> Ended | None:
        """End a running turn; its items still started end `leftover` (with `leftover_error`
        in their body when given; an interrupted one keeps what it had). None if the turn had
        ended already."""
        async with self._write() as tx:
            row = await tx.fetchone(
                f"SELECT {TURN_COLUMNS} FROM chat_turns WHERE id = ?", (turn_id,)
            )
            if row is None or Turn.from_row(row).ended:
                return None
            return await _end_turn(tx, Turn.from_row(row), status, error, leftover, leftover_error)

    async def interrupt_running(self, reason: str, expired: str) -> list[Ended]:
        """After a restart: every running turn, and every item still started, ends
        `interrupted` (the task that ran them died with the daemon that started them); an
        approval still pending ends `expired` for `expired`."""
        ended: list[Ended] = []
        async with self._write() as tx:
            rows = await tx.fetchall(
                f"SELECT {TURN_COLUMNS} FROM chat_turns WHERE status = 'running' ORDER BY id"
            )
            for row in rows:
                turn = Turn.from_row(row)
                ended.append(
                    await _end_turn(
                        tx,
                        turn,
                        TurnStatus.INTERRUPTED,
                        reason,
                        ItemStatus.INTERRUPTED,
                        None,
                        expired,
                    )
                )
            for row in await tx.fetchall(
                f"SELECT {ITEM_COLUMNS} FROM chat_items WHERE status = 'started' ORDER BY id"
            ):  # none, unless a turn ended without them: they end too, never stay started
                item = Item.from_row(row)
                body = _expire_approval(item.body, expired)
                await _end_item(tx, item, ItemStatus.INTERRUPTED, body)
        return ended

    # -- items -------------------------------------------------------------------------------

    async def start_item(
        self, turn_id: str, item_id: str, kind: ItemKind, body: dict[str, Any]
    ) -> Item:
        """A new item of a running turn, `started`; refused once the turn has ended."""
        async with self._write() as tx:
            turn = await _running(tx, turn_id)
            return await _insert_item(tx, turn, item_id, kind, body)

    async def append(self, turn_id: str, item_id: str, field: str, text: str) -> Item:
        """Append `text` to the text field `field` of a started item's body (item.delta)."""
        async with self._write() as tx:
            item = await _started_item(tx, turn_id, item_id)
            before = item.body.get(field, "")
            if not isinstance(before, str):
                raise Conflict(f"item {item_id}: {field!r} is not a text field")
            body = {**item.body, field: before + text}
            now = time.time()
            await tx.execute(
                "UPDATE chat_items SET body = ?, updated_at = ? WHERE id = ?",
                (json.dumps(body), now, item_id),
            )
            await _event(
                tx,
                EventType.ITEM_DELTA,
                {"field": field, "delta": text},
                item.thread_id,
                item.turn_id,
                item_id,
                at=now,
            )
        return replace(item, body=body, updated_at=now)

    async def end_item(
        self,
        turn_id: str,
        item_id: str,
        status: ItemStatus,
        body: dict[str, Any] | None = None,
        *,
        error: str | None = None,
    ) -> Item:
        """End a started item with its final body (its body as it is when `body` is None),
        with `error` added as the body's `error` when given; its approval, if it asked for
        one, is kept as it is."""
        async with self._write() as tx:
            item = await _started_item(tx, turn_id, item_id)
            final = item.body if body is None else body
            if "approval" in item.body:  # the service's record, kept whatever the engine says
                final = {**final, "approval": item.body["approval"]}
            if error is not None:
                final = {**final, "error": error}
            return await _end_item(tx, item, status, final)

    # -- approvals and grants ------------------------------------------------------------------

    async def ask(self, turn_id: str, item_id: str, approval: dict[str, Any]) -> Item:
        """A started item of a running turn now waits for `approval` (status pending)."""
        async with self._write() as tx:
            item = await _started_item(tx, turn_id, item_id)
            return await _set_body(
                tx, item, {**item.body, "approval": approval}, EventType.APPROVAL_REQUESTED
            )

    async def answer(
        self,
        item_id: str,
        status: ApprovalStatus,
        decision: Decision | None,
        reason: str | None,
        *,
        grant: tuple[str, str] | None = None,
    ) -> Item:
        """Answer the pending approval of a started item, and record the thread's new grant
        (`(effect, prefix)`) with it. Conflict when it is not pending any more."""
        async with self._write() as tx:
            row = await tx.fetchone(
                f"SELECT {ITEM_COLUMNS} FROM chat_items WHERE id = ?", (item_id,)
            )
            if row is None:
                raise NotFound(f"no chat item {item_id!r}; thread.read shows a thread's items")
            item = Item.from_row(row)
            approval = item.body.get("approval")
            if not isinstance(approval, dict):
                raise Conflict(f"item {item_id} asks for no approval")
            if approval.get("status") != ApprovalStatus.PENDING:
                said = approval.get("status")
                why = f": {approval['reason']}" if approval.get("reason") else ""
                raise Conflict(f"the approval of item {item_id} is {said} already{why}")
            if item.status is not ItemStatus.STARTED:  # never: ending an item expires it
                raise Conflict(f"item {item_id} is {item.status}: its approval has expired")
            now = time.time()
            answered = {
                **approval,
                "status": status.value,
                "decision": None if decision is None else decision.value,
                "reason": reason,
                "answered_at": now,
            }
            if grant is not None:
                await tx.execute(
                    "INSERT OR IGNORE INTO chat_grants (thread_id, effect, prefix, item_id, "
                    "created_at) VALUES (?, ?, ?, ?, ?)",
                    (item.thread_id, grant[0], grant[1], item_id, now),
                )
            body = {**item.body, "approval": answered}
            return await _set_body(tx, item, body, EventType.APPROVAL_ANSWERED)

    async def update(self, turn_id: str, item_id: str, body: dict[str, Any]) -> Item:
        """Replace a started item's body, keeping its approval."""
        async with self._write() as tx:
            item = await _started_item(tx, turn_id, item_id)
            if "approval" in item.body:
                body = {**body, "approval": item.body["approval"]}
            return await _set_body(tx, item, body, EventType.ITEM_UPDATED)

    async def spent(self, thread_id: str) -> int:
        """The budgets, in sats, of the thread's network requests whose spending was approved."""
        row = await self._sql.fetchone(
            "SELECT COALESCE(SUM(json_extract(body, '$.budget_sats')), 0) FROM chat_items "
            "WHERE thread_id = ? AND kind = 'network_request' "
            "AND json_extract(body, '$.approval.status') = 'approved'",
            (thread_id,),
        )
        return int(row[0]) if row else 0

    async def grants(self, thread_id: str) -> list[tuple[str, str]]:
        """The thread's grants as (effect, prefix), oldest first."""
        rows = await self._sql.fetchall(
            "SELECT effect, prefix FROM chat_grants WHERE thread_id = ? ORDER BY created_at",
            (thread_id,),
        )
        return [(str(e), str(p)) for e, p in rows]

    # -- file changes ------------------------------------------------------------------------

    async def record_change(
        self, turn_id: str, item_id: str, path: str, before: bytes | None, after_sha256: str | None
    ) -> None:
        """Keep what a file change replaces before the file is written: written first, a crash
        between the two leaves a record whose after-digest the file does not have, which a
        revert then refuses rather than guessing."""
        async with self._write() as tx:
            item = await _started_item(tx, turn_id, item_id)
            await tx.execute(
                "INSERT INTO chat_file_changes (item_id, thread_id, path, before, "
                "before_sha256, after_sha256, applied_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    item_id,
                    item.thread_id,
                    path,
                    before,
                    None if before is None else hashlib.sha256(before).hexdigest(),
                    after_sha256,
                    time.time(),
                ),
            )

    async def change(self, item_id: str) -> FileChange | None:
        row = await self._sql.fetchone(
            f"SELECT {CHANGE_COLUMNS} FROM chat_file_changes WHERE item_id = ?", (item_id,)
        )
        return None if row is None else FileChange(*row)

    async def changes(self, thread_id: str) -> list[FileChange]:
        """The thread's file changes that took effect and were not reverted, oldest first."""
        rows = await self._sql.fetchall(
            f"SELECT {', '.join('c.' + c for c in CHANGE_COLUMNS.split(', '))} "
            "FROM chat_file_changes c JOIN chat_items i ON i.id = c.item_id "
            "WHERE c.thread_id = ? AND c.reverted_at IS NULL AND i.status = 'completed' "
            "ORDER BY c.applied_at",
            (thread_id,),
        )
        return [FileChange(*r) for r in rows]

    async def mark_reverted(self, item_id: str, by: str) -> Item:
        """The file change of a completed item was undone (by the item or command `by`)."""
        async with self._write() as tx:
            row = await tx.fetchone(
                f"SELECT {ITEM_COLUMNS} FROM chat_items WHERE id = ?", (item_id,)
            )
            if row is None:
                raise NotFound(f"no chat item {item_id!r}")
            item = Item.from_row(row)
            now = time.time()
            changed = await tx.execute(
                "UPDATE chat_file_changes SET reverted_at = ?, reverted_by = ? "
                "WHERE item_id = ? AND reverted_at IS NULL",
                (now, by, item_id),
            )
            if changed != 1:
                raise Conflict(f"item {item_id} was reverted already")
            body = {**item.body, "reverted_at": now, "reverted_by": by}
            return await _set_body(tx, item, body, EventType.ITEM_REVERTED)

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[Tx]:
        """The transaction every write of this store runs in (see the module docstring);
        the waiters wake once it has ended.

        They wake after a rollback too, for nothing (they look, find nothing new and wait
        again), so that a caller cancelled during its COMMIT, which is shielded and goes on,
        still wakes them for what it wrote.
        """
        try:
            async with self._sql.write() as tx:
                yield tx
        finally:
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    def _consistent(self) -> AbstractAsyncContextManager[Tx]:
        """A transaction to read one committed state in (see the module docstring)."""
        return self._sql.write()


# -- inside one transaction -------------------------------------------------------------------


async def _event(
    tx: Tx,
    type: EventType,
    body: dict[str, Any],
    thread_id: str,
    turn_id: str | None = None,
    item_id: str | None = None,
    *,
    at: float,
) -> None:
    await tx.execute(
        "INSERT INTO chat_events (thread_id, turn_id, item_id, type, body, at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (thread_id, turn_id, item_id, type.value, json.dumps(body), at),
    )


async def _thread(sql: Sql, thread_id: str) -> Thread | None:
    row = await sql.fetchone(
        f"SELECT {THREAD_COLUMNS} FROM chat_threads t WHERE t.id = ?", (thread_id,)
    )
    return None if row is None else Thread.from_row(row)


async def _existing_thread(tx: Tx, thread_id: str) -> Thread:
    thread = await _thread(tx, thread_id)
    if thread is None:
        raise NotFound(f"no chat thread {thread_id!r}; thread.list shows them")
    return thread


async def _running_turn(tx: Tx, thread_id: str) -> str | None:
    row = await tx.fetchone(
        "SELECT id FROM chat_turns WHERE thread_id = ? AND status = 'running'", (thread_id,)
    )
    return None if row is None else str(row[0])


async def _running(tx: Tx, turn_id: str) -> Turn:
    row = await tx.fetchone(f"SELECT {TURN_COLUMNS} FROM chat_turns WHERE id = ?", (turn_id,))
    if row is None:
        raise NotFound(f"no chat turn {turn_id!r}")
    turn = Turn.from_row(row)
    if turn.ended:
        raise Conflict(f"turn {turn_id} is {turn.status}: it takes no more items")
    return turn


async def _started_item(tx: Tx, turn_id: str, item_id: str) -> Item:
    """A started item of the turn (an engine changes only its own turn's items)."""
    row = await tx.fetchone(
        f"SELECT {ITEM_COLUMNS} FROM chat_items WHERE id = ? AND turn_id = ?", (item_id, turn_id)
    )
    if row is None:
        raise NotFound(f"no chat item {item_id!r} in turn {turn_id}")
    item = Item.from_row(row)
    if item.status is not ItemStatus.STARTED:
        raise Conflict(f"item {item_id} is {item.status}: it cannot change any more")
    return item


async def _last_seq(tx: Tx, thread_id: str) -> int:
    row = await tx.fetchone(
        "SELECT COALESCE(MAX(seq), 0) FROM chat_events WHERE thread_id = ?", (thread_id,)
    )
    return int(row[0]) if row else 0


async def _touch(tx: Tx, thread_id: str, now: float) -> None:
    await tx.execute("UPDATE chat_threads SET updated_at = ? WHERE id = ?", (now, thread_id))


async def _insert_item(
    tx: Tx, turn: Turn, item_id: str, kind: ItemKind, body: dict[str, Any]
) -> Item:
    row = await tx.fetchone(
        "SELECT COALESCE(MAX(n), 0) + 1 FROM chat_items WHERE turn_id = ?", (turn.id,)
    )
    assert row is not None
    now = time.time()
    n = int(row[0])
    item = Item(item_id, turn.thread_id, turn.id, n, kind.value, ItemStatus.STARTED, body, now, now)
    await tx.execute(
        f"INSERT INTO chat_items ({ITEM_COLUMNS}) VALUES (?, ?, ?, ?, ?, 'started', ?, ?, ?)",
        (item_id, turn.thread_id, turn.id, n, kind.value, json.dumps(body), now, now),
    )
    await _event(
        tx, EventType.ITEM_STARTED, item.to_json(), turn.thread_id, turn.id, item_id, at=now
    )
    return item


async def _set_body(tx: Tx, item: Item, body: dict[str, Any], event: EventType) -> Item:
    now = time.time()
    changed = replace(item, body=body, updated_at=now)
    await tx.execute(
        "UPDATE chat_items SET body = ?, updated_at = ? WHERE id = ?",
        (json.dumps(body), now, item.id),
    )
    await _event(tx, event, changed.to_json(), item.thread_id, item.turn_id, item.id, at=now)
    return changed


def _expire_approval(body: dict[str, Any], reason: str) -> dict[str, Any]:
    """An item's body with its pending approval, if any, expired for `reason`."""
    approval = body.get("approval")
    if not isinstance(approval, dict) or approval.get("status") != ApprovalStatus.PENDING:
        return body
    expired = {
        **approval,
        "status": ApprovalStatus.EXPIRED.value,
        "reason": reason,
        "answered_at": time.time(),
    }
    return {**body, "approval": expired}


async def _end_item(tx: Tx, item: Item, status: ItemStatus, body: dict[str, Any]) -> Item:
    now = time.time()
    ended = replace(item, status=status, body=body, updated_at=now)
    await tx.execute(
        "UPDATE chat_items SET status = ?, body = ?, updated_at = ? WHERE id = ?",
        (status.value, json.dumps(body), now, item.id),
    )
    await _event(
        tx, ITEM_ENDED[status], ended.to_json(), item.thread_id, item.turn_id, item.id, at=now
    )
    return ended


async def _end_turn(
    tx: Tx,
    turn: Turn,
    status: TurnStatus,
    error: str | None,
    leftover: ItemStatus,
    leftover_error: str | None,
    expired: str | None = None,
) -> Ended:
    items: list[Item] = []
    for row in await tx.fetchall(
        f"SELECT {ITEM_COLUMNS} FROM chat_items WHERE turn_id = ? AND status = 'started' "
        "ORDER BY n",
        (turn.id,),
    ):
        item = Item.from_row(row)
        body = _expire_approval(item.body, expired or error or "its turn ended")
        if leftover_error is not None:
            body = {**body, "error": leftover_error}
        items.append(await _end_item(tx, item, leftover, body))
    now = time.time()
    ended = replace(turn, status=status, error=error, ended_at=now)
    await tx.execute(
        "UPDATE chat_turns SET status = ?, error = ?, ended_at = ? WHERE id = ?",
        (status.value, error, now, turn.id),
    )
    await _touch(tx, turn.thread_id, now)
    await _event(tx, TURN_ENDED[status], ended.to_json(), turn.thread_id, turn.id, at=now)
    return Ended(ended, items)
