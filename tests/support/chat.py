"""Autopilot Chat helpers for tests: a daemon whose chat service is ready, a turn run to its
end through the control plane, the item of a turn that asks for an approval, a thread's whole
event log and the items it replays to, an engine that streams what the test hands it, and a
user's project folder that a sandboxed command can reach."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autopilotd.ports.engine import EngineStatus, TurnContext
from autopilotd.store.chat_records import ItemKind
from support import DaemonFactory, InProcessDaemon


async def chat_daemon(factory: DaemonFactory, **kwargs: Any) -> InProcessDaemon:
    """A daemon whose chat service is ready (every running turn a stop left ended)."""
    d = await factory(**kwargs)
    status = await d.call("status")
    deadline = time.monotonic() + 20
    while status["chat"]["state"] != "ready":
        assert time.monotonic() < deadline, "the chat service did not get ready"
        status = await d.call("status.wait", {"after_seq": status["seq"], "timeout_s": 5})
    return d


async def run_turn(d: InProcessDaemon, thread_id: str, text: str) -> dict[str, Any]:
    """Start a turn with `text` and wait for it to end; the turn with its items."""
    turn: dict[str, Any] = await d.call(
        "turn.start", {"thread_id": thread_id, "input": text, "wait": True}
    )
    while turn["status"] == "running":
        turn = await d.call("turn.wait", {"turn_id": turn["id"]})
    return turn


async def asking(d: InProcessDaemon, turn_id: str, within_s: float = 20) -> dict[str, Any]:
    """The turn's item that waits for an approval, once there is one (a model engine's may
    take a while: `within_s`)."""
    deadline = time.monotonic() + within_s
    while True:
        turn = await d.call("turn.wait", {"turn_id": turn_id, "timeout_s": 0})
        for item in turn["items"]:
            if item["body"].get("approval", {}).get("status") == "pending":
                return dict(item)
        assert turn["status"] == "running", f"the turn ended without asking: {turn}"
        assert time.monotonic() < deadline, "no approval was asked for"
        await asyncio.sleep(0.02)


async def ended(d: InProcessDaemon, turn_id: str) -> dict[str, Any]:
    """The turn once it ended, with its items."""
    turn: dict[str, Any] = await d.call("turn.wait", {"turn_id": turn_id})
    while turn["status"] == "running":
        turn = await d.call("turn.wait", {"turn_id": turn_id})
    return turn


async def all_events(d: InProcessDaemon, thread_id: str, after: int = 0) -> list[dict[str, Any]]:
    """The thread's events after `after`, every page of them."""
    events: list[dict[str, Any]] = []
    while True:
        page = await d.call("thread.events", {"thread_id": thread_id, "after_seq": after})
        events += page["events"]
        if not page["events"] or page["events"][-1]["seq"] >= page["last_seq"]:
            return events
        after = page["events"][-1]["seq"]


def replay(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Items as the event log alone makes them: started, each delta applied, then ended."""
    items: dict[str, dict[str, Any]] = {}
    for event in events:
        if event["type"] == "item.delta":
            body = items[event["item_id"]]["body"]
            field = event["body"]["field"]
            body[field] = body.get(field, "") + event["body"]["delta"]
        elif event["type"].startswith("item."):
            items[event["item_id"]] = json.loads(json.dumps(event["body"]))
    return items


class ScriptedEngine:
    """An engine whose turn streams into one agent message the pieces of text the test hands
    it, one `item.delta` each, and completes the message when handed None."""

    name = "scripted"

    def __init__(self) -> None:
        self.pieces: asyncio.Queue[str | None] = asyncio.Queue()

    def status(self) -> EngineStatus:
        return EngineStatus(self.name, True, True, None, "a test engine")

    async def run_turn(self, ctx: TurnContext, text: str) -> None:
        item = await ctx.start_item(ItemKind.AGENT_MESSAGE, {"text": ""})
        while (piece := await self.pieces.get()) is not None:
            await ctx.append(item, "text", piece)
        await ctx.complete(item)


NOTES = b"first line\nsecond line\nthird line\n"  # notes.txt in a test's workspace
# A /patch turn that changes notes.txt's second line.
PATCH_NOTES = """/patch
--- a/notes.txt
+++ b/notes.txt
@@ -1,3 +1,3 @@
 first line
-second line
+second line, changed
 third line
"""

OWNER = 4242  # as root, a chat's commands run as the workspace's owner, never as root


def own(path: Path) -> None:
    """Give `path` and all below it to the workspace's owner (as root; otherwise it is ours)."""
    if os.geteuid() != 0:
        return
    os.chown(path, OWNER, OWNER, follow_symlinks=False)
    for parent, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(Path(parent) / name, OWNER, OWNER, follow_symlinks=False)


@pytest.fixture
def user_workspace() -> Iterator[Path]:
    """A user's project folder with two files, which a sandboxed run as its owner can reach
    (pytest's own temporary folders are root's alone); `outside` next to it holds a secret."""
    base = Path(tempfile.mkdtemp(prefix="autopilotd-chat-test-"))
    base.chmod(0o711)
    ws = base / "project"
    (ws / "src").mkdir(parents=True)
    (ws / "notes.txt").write_bytes(b"first line\nsecond line\nthird line\n")
    (ws / "src" / "main.py").write_bytes(b"print('hello')\n")
    (base / "outside").mkdir()
    (base / "outside" / "secret.txt").write_text("SECRET")
    own(ws)
    yield ws
    shutil.rmtree(base, ignore_errors=True)
