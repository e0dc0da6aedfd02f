"""Autopilot Chat's vocabularies and records (store/chat.py writes them, chat/service.py and
the engine port use them).

    thread  active → archived
    turn    running → completed | failed | interrupted      (one running turn per thread)
    item    started → completed | failed | interrupted

A thread is a conversation about one workspace (a directory of this machine); a turn is one
input from the user and what the engine did with it; an item is one thing that happened in a
turn (the user's message, the agent's message, a tool call, an error), numbered in order; an
event is one change to any of them, with the record as it is after it.

The statuses are exactly what the tables' CHECK constraints admit (tests/chat holds them
together); kinds, event types, sandbox modes and approval policies are open vocabularies that
later slices extend.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass
from typing import Any

from autopilotd.store.db import Row


class ThreadStatus(enum.StrEnum):
    ACTIVE = "active"
    ARCHIVED = "archived"


class TurnStatus(enum.StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"  # the engine broke down (the turn's error says so)
    INTERRUPTED = "interrupted"  # turn.interrupt, or the daemon stopped while it ran


class ItemStatus(enum.StrEnum):
    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"  # e.g. a refused path: the body's `error` says why
    INTERRUPTED = "interrupted"  # its turn was interrupted; what it had so far is kept


class ItemKind(enum.StrEnum):
    """What an item is. Later engines add kinds (reasoning, command execution, file change,
    network request): the column is not CHECKed, so they need no table rebuild."""

    USER_MESSAGE = "user_message"  # body: {text}
    AGENT_MESSAGE = "agent_message"  # body: {text}, streamed by item.delta
    REASONING = "reasoning"  # body: {text}: a model's summary of its reasoning, streamed
    TOOL_CALL = "tool_call"  # body: {tool, …its arguments and result}, or {…, error}
    COMMAND_EXECUTION = "command_execution"  # {command, cwd, exit_code, duration_s, output…}
    FILE_CHANGE = "file_change"  # {path, diff, before_sha256, after_sha256, reverted_at…}
    NETWORK_REQUEST = "network_request"  # {prompt, budget_sats, request_id, provider, …}
    ERROR = "error"  # body: {message}


class ApprovalStatus(enum.StrEnum):
    """An approval, kept in its item's body as `approval` (docs/chat.md)."""

    PENDING = "pending"
    APPROVED = "approved"
    DECLINED = "declined"
    EXPIRED = "expired"  # its deadline passed, its turn ended, or the daemon restarted


class Decision(enum.StrEnum):
    """How an approval was answered."""

    ONCE = "approve"  # this action only
    THREAD = "approve_thread"  # and any command with this prefix, for the rest of the thread
    DENY = "deny"
    DENY_THREAD = "deny_thread"  # and any command with this prefix, for the rest of the thread
    GRANT = "grant"  # answered by a grant of the thread, without asking


class SandboxMode(enum.StrEnum):
    READ_ONLY = "read-only"  # the engine may read the workspace, change nothing
    WORKSPACE_WRITE = "workspace-write"  # commands run writable there, after an approval


class ApprovalPolicy(enum.StrEnum):
    ASK = "ask"  # anything beyond reading asks the user first


class EventType(enum.StrEnum):
    THREAD_STARTED = "thread.started"
    THREAD_ARCHIVED = "thread.archived"
    TURN_STARTED = "turn.started"
    TURN_COMPLETED = "turn.completed"
    TURN_FAILED = "turn.failed"
    TURN_INTERRUPTED = "turn.interrupted"
    ITEM_STARTED = "item.started"
    ITEM_DELTA = "item.delta"
    ITEM_COMPLETED = "item.completed"
    ITEM_FAILED = "item.failed"
    ITEM_INTERRUPTED = "item.interrupted"
    APPROVAL_REQUESTED = "approval.requested"  # the item, its body's approval pending
    APPROVAL_ANSWERED = "approval.answered"  # the item, its approval approved/declined/expired
    ITEM_REVERTED = "item.reverted"  # a file change's item, its body's reverted_at set
    ITEM_UPDATED = "item.updated"  # a started item's body replaced (e.g. a request's id)


TURN_ENDED = {
    TurnStatus.COMPLETED: EventType.TURN_COMPLETED,
    TurnStatus.FAILED: EventType.TURN_FAILED,
    TurnStatus.INTERRUPTED: EventType.TURN_INTERRUPTED,
}
ITEM_ENDED = {
    ItemStatus.COMPLETED: EventType.ITEM_COMPLETED,
    ItemStatus.FAILED: EventType.ITEM_FAILED,
    ItemStatus.INTERRUPTED: EventType.ITEM_INTERRUPTED,
}


def _json(record: Any) -> dict[str, Any]:
    """A record's fields as JSON shows them (statuses as their values)."""
    return {k: v.value if isinstance(v, enum.Enum) else v for k, v in asdict(record).items()}


@dataclass(frozen=True)
class Thread:
    id: str
    title: str
    engine: str
    workspace: str  # an absolute directory of this machine, resolved when the thread started
    sandbox_mode: str
    approval_policy: str
    status: ThreadStatus
    created_at: float
    updated_at: float  # the thread's or one of its turns' last change
    last_turn: TurnStatus | None = None  # its newest turn's status

    @classmethod
    def from_row(cls, row: Row) -> Thread:
        v = list(row)
        v[6], v[9] = ThreadStatus(v[6]), None if v[9] is None else TurnStatus(v[9])
        return cls(*v)

    def to_json(self) -> dict[str, Any]:
        return _json(self)


@dataclass(frozen=True)
class Turn:
    id: str
    thread_id: str
    n: int  # 1, 2, … within its thread
    status: TurnStatus
    input: str
    error: str | None
    started_at: float
    ended_at: float | None

    @property
    def ended(self) -> bool:
        return self.status is not TurnStatus.RUNNING

    @classmethod
    def from_row(cls, row: Row) -> Turn:
        v = list(row)
        v[3] = TurnStatus(v[3])
        return cls(*v)

    def to_json(self, items: list[Item] | None = None) -> dict[str, Any]:
        shown = _json(self)
        if items is not None:
            shown["items"] = [i.to_json() for i in items]
        return shown


@dataclass(frozen=True)
class Item:
    id: str
    thread_id: str
    turn_id: str
    n: int  # 1, 2, … within its turn (1 is the user's message)
    kind: str  # an ItemKind value
    status: ItemStatus
    body: dict[str, Any]
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: Row) -> Item:
        v = list(row)
        v[5], v[6] = ItemStatus(v[5]), json.loads(v[6])
        return cls(*v)

    def to_json(self) -> dict[str, Any]:
        return _json(self)


@dataclass(frozen=True)
class ChatEvent:
    seq: int
    thread_id: str
    turn_id: str | None
    item_id: str | None
    type: str  # an EventType value
    body: dict[str, Any]
    at: float

    @classmethod
    def from_row(cls, row: Row) -> ChatEvent:
        v = list(row)
        v[5] = json.loads(v[5])
        return cls(*v)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ThreadView:
    """A thread, its turns and their items in order, and its newest event's seq: one state."""

    thread: Thread
    turns: list[Turn]
    items: list[Item]
    last_seq: int

    def to_json(self) -> dict[str, Any]:
        by_turn: dict[str, list[Item]] = {t.id: [] for t in self.turns}
        for item in self.items:
            by_turn[item.turn_id].append(item)
        return {
            "thread": self.thread.to_json(),
            "turns": [t.to_json(by_turn[t.id]) for t in self.turns],
            "last_seq": self.last_seq,
        }


@dataclass(frozen=True)
class FileChange:
    """What a file change replaced: the bytes before it (None: the file did not exist), and
    the digest the file had after it (None: deleted)."""

    item_id: str
    thread_id: str
    path: str
    before: bytes | None
    before_sha256: str | None
    after_sha256: str | None
    applied_at: float
    reverted_at: float | None
    reverted_by: str | None


@dataclass(frozen=True)
class Ended:
    """A turn that ended, with the items that ended with it (still started until then)."""

    turn: Turn
    items: list[Item]
