"""Autopilot Chat through the control plane: threads, turns and items on the command lane;
the event log replayed from any sequence number with no gap and no duplicate; one turn at a
time, interrupts, and a restart that ends a running turn `interrupted`; paths that leave the
workspace; and bad input, each refused with a clear message."""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from support import DaemonFactory, InProcessDaemon
from support.chat import all_events, chat_daemon, replay, run_turn

from autopilotd.app import Adapters
from autopilotd.client import RpcError
from autopilotd.errors import Conflict, InvalidParams, NotFound, UserError
from autopilotd.ports.engine import EngineStatus, TurnContext
from autopilotd.store import Store
from autopilotd.store.chat_records import ItemKind, ItemStatus, ThreadStatus, TurnStatus

SECRET = "SECRET-OUTSIDE-THE-WORKSPACE"


class GatedEngine:
    """An engine whose turns stream "partial " into an agent message, then wait for `gate`."""

    name = "gated"

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.gate = asyncio.Event()

    def status(self) -> EngineStatus:
        return EngineStatus(self.name, True, True, None, "a test engine")

    async def run_turn(self, ctx: TurnContext, text: str) -> None:
        item = await ctx.start_item(ItemKind.AGENT_MESSAGE, {"text": ""})
        await ctx.append(item, "text", "partial ")
        self.started.set()
        await self.gate.wait()
        await ctx.append(item, "text", f"and the rest, for {text!r}")
        await ctx.complete(item)


class BrokenEngine(GatedEngine):
    """An engine that breaks down in the middle of a turn, an item left started."""

    name = "broken"

    async def run_turn(self, ctx: TurnContext, text: str) -> None:
        await ctx.start_item(ItemKind.TOOL_CALL, {"tool": "read", "path": "x"})
        raise RuntimeError("the engine's own secret detail")


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A workspace with text files, a nested one, and symlinks planted to what lies outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET + "\n")
    ws = tmp_path / "ws"
    (ws / "src").mkdir(parents=True)
    (ws / "notes.txt").write_text("hello world\nthe needle is here\n")
    (ws / "src" / "main.py").write_text("print('needle')\n")
    (ws / "leak").symlink_to(outside / "secret.txt")
    (ws / "linked").symlink_to(outside)
    return ws


async def refused(d: InProcessDaemon, method: str, params: dict[str, Any]) -> RpcError:
    with pytest.raises(RpcError) as caught:
        await d.call(method, params)
    return caught.value


def tools(turn: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for i in turn["items"] if i["kind"] == "tool_call"]


async def test_a_thread_reads_the_same_after_a_restart(
    daemon_factory: DaemonFactory, workspace: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    d = await chat_daemon(daemon_factory, home=home)
    thread = await d.call("thread.start", {"workspace": str(workspace), "title": "notes"})
    assert re.fullmatch(r"thr-[0-9a-f]{16}", thread["id"])
    assert (thread["status"], thread["engine"], thread["workspace"]) == (
        "active",
        "commands",
        str(workspace.resolve()),
    )
    assert (thread["sandbox_mode"], thread["approval_policy"]) == ("workspace-write", "ask")

    first = await run_turn(d, thread["id"], "/ls\n/read notes.txt")
    assert (first["status"], first["n"]) == ("completed", 1)
    user, ls, read = first["items"]
    assert (user["kind"], user["status"], user["body"]) == (
        "user_message",
        "completed",
        {"text": "/ls\n/read notes.txt"},
    )
    assert ls["status"] == "completed" and ls["body"]["tool"] == "ls"
    notes = (workspace / "notes.txt").read_bytes()
    assert ls["body"]["entries"] == [
        {"path": "notes.txt", "size": len(notes)},
        {"path": "src/main.py", "size": len(b"print('needle')\n")},
    ]  # the symlinks are not listed
    assert read["status"] == "completed"
    assert read["body"]["output"] == notes.decode() and read["body"]["truncated"] is False
    assert read["body"]["sha256"] == hashlib.sha256(notes).hexdigest()

    second = await run_turn(d, thread["id"], "/search needle\n/ls src\nWhat is in here?")
    assert (second["status"], second["n"]) == ("completed", 2)
    search, ls_src = tools(second)
    assert search["body"]["matches"] == [
        {"path": "notes.txt", "line": 2, "text": "the needle is here"},
        {"path": "src/main.py", "line": 1, "text": "print('needle')"},
    ]
    assert [e["path"] for e in ls_src["body"]["entries"]] == ["src/main.py"]
    reply = second["items"][-1]
    assert reply["kind"] == "agent_message" and reply["status"] == "completed"
    assert "No model engine is set up yet" in reply["body"]["text"]
    assert "/read PATH" in reply["body"]["text"]

    before = await d.call("thread.read", {"thread_id": thread["id"]})
    assert [t["id"] for t in before["turns"]] == [first["id"], second["id"]]
    assert before["turns"][1]["items"] == second["items"]
    assert before["thread"]["last_turn"] == "completed"
    section = (await d.call("status"))["chat"]
    assert section["threads"] == {"active": 1} and section["running_turns"] == 0
    assert [(t["id"], t["last_turn"]) for t in section["recent"]] == [(thread["id"], "completed")]
    feed = await d.call("events.wait", {"after": 0, "timeout_s": 0, "limit": 1000})
    names = [e["name"] for e in feed["events"]]
    assert {"chat.thread_started", "chat.turn_started", "chat.item_completed"} <= set(names)
    assert names.count("chat.turn_completed") == 2
    assert SECRET not in json.dumps(feed) and "needle is here" not in json.dumps(feed)
    await d.stop()

    again = await chat_daemon(daemon_factory, home=home)
    after = await again.call("thread.read", {"thread_id": thread["id"]})
    assert json.dumps(after) == json.dumps(before)
    listed = await again.call("thread.list", {})
    assert [t["id"] for t in listed["threads"]] == [thread["id"]]


async def test_events_after_any_seq_are_exactly_the_ones_missed(
    daemon_factory: DaemonFactory, workspace: Path
) -> None:
    d = await chat_daemon(daemon_factory)
    a = await d.call("thread.start", {"workspace": str(workspace)})
    b = await d.call("thread.start", {"workspace": str(workspace / "src")})
    assert a["title"] == "ws" and b["title"] == "src"
    for text in ("/ls", "hello", "/read notes.txt\n/read ../nope"):  # interleaved threads
        await run_turn(d, a["id"], text)
        await run_turn(d, b["id"], "/search print")

    full = await all_events(d, a["id"])
    seqs = [e["seq"] for e in full]
    assert seqs == sorted(set(seqs)) and len(seqs) > 20  # strictly increasing, no duplicate
    assert all(e["thread_id"] == a["id"] for e in full)
    view = await d.call("thread.read", {"thread_id": a["id"]})
    assert seqs[-1] == view["last_seq"]
    assert full[0]["type"] == "thread.started" and full[0]["body"]["id"] == a["id"]
    assert [e["type"] for e in full[1:5]] == [
        "turn.started",
        "item.started",  # the user's message
        "item.completed",
        "item.started",  # /ls
    ]
    for i, seen in enumerate([0, *seqs]):
        page = await d.call("thread.events", {"thread_id": a["id"], "after_seq": seen})
        assert page["events"] == full[i:] and page["last_seq"] == seqs[-1]
    paged: list[dict[str, Any]] = []
    after = 0
    while True:
        page = await d.call("thread.events", {"thread_id": a["id"], "after_seq": after, "limit": 4})
        if not page["events"]:
            break
        paged += page["events"]
        after = page["events"][-1]["seq"]
    assert paged == full

    # The log agrees with the tables: replayed, it gives every item as thread.read has it.
    items = [i for t in view["turns"] for i in t["items"]]
    assert replay(full) == {i["id"]: i for i in items}
    deltas = [e for e in full if e["type"] == "item.delta"]
    assert deltas and all(e["body"]["field"] == "text" for e in deltas)
    for item in items:
        streamed = "".join(e["body"]["delta"] for e in deltas if e["item_id"] == item["id"])
        assert streamed == (item["body"]["text"] if item["kind"] == "agent_message" else "")
    ends = {e["body"]["id"]: e["body"]["status"] for e in full if e["type"] == "turn.completed"}
    assert ends == {t["id"]: "completed" for t in view["turns"]}
    failed = [e for e in full if e["type"] == "item.failed"]
    assert [e["body"]["body"]["path"] for e in failed] == ["../nope"]


async def test_one_turn_at_a_time_and_an_interrupt_ends_it(
    daemon_factory: DaemonFactory, workspace: Path
) -> None:
    engine = GatedEngine()
    d = await chat_daemon(daemon_factory, adapters=Adapters(engine=engine))
    assert await d.call("engine.status") == {
        "name": "gated",
        "installed": True,
        "ready": True,
        "model": None,
        "reason": "a test engine",
    }
    thread = await d.call("thread.start", {"workspace": str(workspace)})
    turn = await d.call("turn.start", {"thread_id": thread["id"], "input": "take your time"})
    assert turn["status"] == "running" and re.fullmatch(r"turn-[0-9a-f]{16}", turn["id"])
    await asyncio.wait_for(engine.started.wait(), 10)

    busy = await refused(d, "turn.start", {"thread_id": thread["id"], "input": "and this?"})
    assert busy.rpc_code == Conflict.code and "has a turn running" in busy.message
    assert turn["id"] in busy.message and "turn.interrupt" in busy.message
    busy = await refused(d, "thread.archive", {"thread_id": thread["id"]})
    assert busy.rpc_code == Conflict.code and "interrupt it" in busy.message
    still = await d.call("turn.wait", {"turn_id": turn["id"], "timeout_s": 0})
    assert still["status"] == "running" and still["items"][1]["body"] == {"text": "partial "}
    assert (await d.call("status"))["chat"]["running_turns"] == 1

    stopped = await d.call("turn.interrupt", {"turn_id": turn["id"]})
    assert (stopped["status"], stopped["error"]) == ("interrupted", "interrupted (turn.interrupt)")
    user, said = stopped["items"]
    assert user["status"] == "completed"
    assert (said["status"], said["body"]) == ("interrupted", {"text": "partial "})  # kept
    assert await d.call("turn.interrupt", {"turn_id": turn["id"]}) == stopped  # ended: as is
    events = await all_events(d, thread["id"])
    assert [e["type"] for e in events[-2:]] == ["item.interrupted", "turn.interrupted"]
    assert (await d.call("status"))["chat"]["running_turns"] == 0

    engine.gate.set()  # the next turn runs to its end
    done = await run_turn(d, thread["id"], "now finish")
    assert (done["n"], done["status"]) == (2, "completed")
    assert done["items"][1]["body"] == {"text": "partial and the rest, for 'now finish'"}
    feed = await d.call("events.wait", {"after": 0, "timeout_s": 0, "limit": 1000})
    names = [e["name"] for e in feed["events"]]
    assert "chat.turn_interrupted" in names and "chat.item_interrupted" in names


async def test_a_turn_running_when_the_daemon_stops_is_interrupted_after_restart(
    daemon_factory: DaemonFactory, workspace: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    engine = GatedEngine()
    d = await chat_daemon(daemon_factory, home=home, adapters=Adapters(engine=engine))
    thread = await d.call("thread.start", {"workspace": str(workspace)})
    turn = await d.call("turn.start", {"thread_id": thread["id"], "input": "long work"})
    await asyncio.wait_for(engine.started.wait(), 10)
    await d.stop()

    again = await chat_daemon(daemon_factory, home=home)  # the command lane, this time
    view = await again.call("thread.read", {"thread_id": thread["id"]})
    (ended,) = view["turns"]
    assert ended["id"] == turn["id"]
    assert (ended["status"], ended["error"]) == ("interrupted", "the daemon stopped while it ran")
    assert [(i["kind"], i["status"]) for i in ended["items"]] == [
        ("user_message", "completed"),
        ("agent_message", "interrupted"),
    ]
    assert ended["items"][1]["body"] == {"text": "partial "}
    events = await all_events(again, thread["id"])
    assert [e["type"] for e in events[-2:]] == ["item.interrupted", "turn.interrupted"]
    assert replay(events) == {i["id"]: i for i in ended["items"]}
    assert (await again.call("status"))["chat"]["running_turns"] == 0
    nxt = await run_turn(again, thread["id"], "/ls")
    assert (nxt["n"], nxt["status"]) == (2, "completed")


async def test_an_engine_that_breaks_fails_its_turn_and_says_no_more(
    daemon_factory: DaemonFactory, workspace: Path
) -> None:
    d = await chat_daemon(daemon_factory, adapters=Adapters(engine=BrokenEngine()))
    thread = await d.call("thread.start", {"workspace": str(workspace)})
    turn = await run_turn(d, thread["id"], "go")
    assert turn["status"] == "failed"
    assert re.fullmatch(
        r"the broken engine failed \(error id [0-9a-f]{12}; see the log\)", turn["error"]
    )
    _, call, error = turn["items"]
    assert (call["status"], call["body"]["error"]) == ("failed", turn["error"])
    assert (error["kind"], error["status"], error["body"]) == (
        "error",
        "completed",
        {"message": turn["error"]},
    )
    assert "secret detail" not in json.dumps(
        await d.call("thread.read", {"thread_id": thread["id"]})
    )
    again = await run_turn(d, thread["id"], "again")  # the thread goes on
    assert (again["n"], again["status"]) == (2, "failed")


async def test_paths_that_leave_the_workspace_are_refused_in_the_item(
    daemon_factory: DaemonFactory, workspace: Path
) -> None:
    d = await chat_daemon(daemon_factory)
    thread = await d.call("thread.start", {"workspace": str(workspace)})
    lines = [
        "/read ../outside/secret.txt",
        "/read /etc/passwd",
        "/read leak",
        "/read linked/secret.txt",
        "/read src/../../outside/secret.txt",
        "/ls ../outside",
        "/ls linked",
        "/search SECRET ..",
        "/read src",
        "/read missing.txt",
    ]
    turn = await run_turn(d, thread["id"], "\n".join(lines))
    assert turn["status"] == "completed"  # the turn ran; each refused read is a failed item
    calls = tools(turn)
    assert [c["status"] for c in calls] == ["failed"] * len(lines)
    reasons = [c["body"]["error"] for c in calls]
    assert reasons == [
        "'..' in path",
        "absolute path",
        "not a regular file: leak",
        "not a directory: linked",
        "'..' in path",
        "'..' in path",
        "no regular file at or below linked",
        "'..' in path",
        "not a regular file: src",
        "no such file: missing.txt",
    ]
    assert [c["body"].get("path") for c in calls[:4]] == [
        "../outside/secret.txt",
        "/etc/passwd",
        "leak",
        "linked/secret.txt",
    ]
    found = await run_turn(d, thread["id"], "/search SECRET")
    assert tools(found)[0]["body"]["matches"] == []  # the links are never followed
    everything = json.dumps(await d.call("thread.read", {"thread_id": thread["id"]}))
    assert SECRET not in everything.replace("/search SECRET", "")
    assert "root:" not in everything


async def test_the_command_lane_caps_what_it_shows(
    daemon_factory: DaemonFactory, workspace: Path
) -> None:
    big = "".join(f"line {n} of the big file\n" for n in range(5000))  # about 120 KB
    (workspace / "big.txt").write_text(big)
    (workspace / "huge.txt").write_text("needle\n" * 200_000)  # 1.4 MB: skipped by /search
    (workspace / "blob.bin").write_bytes(b"\0needle")
    d = await chat_daemon(daemon_factory)
    thread = await d.call("thread.start", {"workspace": str(workspace)})
    turn = await run_turn(d, thread["id"], '/read big.txt\n/search "of the"\n/search needle')
    read, many, needle = tools(turn)
    assert read["body"]["truncated"] is True and read["body"]["size"] == len(big)
    assert read["body"]["output"] == big[: 64 << 10]
    assert read["body"]["sha256"] == hashlib.sha256(big.encode()).hexdigest()
    assert len(many["body"]["matches"]) == 200 and many["body"]["truncated"] is True
    assert many["body"]["matches"][0] == {
        "path": "big.txt",
        "line": 1,
        "text": "line 0 of the big file",
    }
    assert [m["path"] for m in needle["body"]["matches"]] == ["notes.txt", "src/main.py"]
    assert needle["body"]["files_skipped"] == 2 and needle["body"]["truncated"] is False

    usage = await run_turn(d, thread["id"], '/read\n/read a b\n/search\n/read "unclosed\n/nope x')
    failed = tools(usage)
    assert [c["body"]["error"] for c in failed] == [
        "usage: /read PATH (quote an argument that has spaces)",
        "usage: /read PATH (quote an argument that has spaces)",
        "usage: /search TEXT [PATH] (quote an argument that has spaces)",
        "cannot split the line: No closing quotation",
    ]
    reply = usage["items"][-1]["body"]["text"]
    assert reply.startswith("/nope is not a command here. No model engine is set up yet")


async def test_bad_input_is_refused_with_a_clear_message(
    daemon_factory: DaemonFactory, workspace: Path, tmp_path: Path
) -> None:
    d = await chat_daemon(daemon_factory)
    unknown: list[tuple[str, dict[str, Any], str]] = [
        ("thread.read", {"thread_id": "thr-nope"}, "no chat thread 'thr-nope'"),
        ("thread.events", {"thread_id": "thr-nope"}, "no chat thread 'thr-nope'"),
        ("thread.archive", {"thread_id": "thr-nope"}, "no chat thread 'thr-nope'"),
        ("turn.start", {"thread_id": "thr-nope", "input": "hi"}, "no chat thread 'thr-nope'"),
        ("turn.wait", {"turn_id": "turn-nope", "timeout_s": 0}, "no chat turn 'turn-nope'"),
        ("turn.interrupt", {"turn_id": "turn-nope"}, "no chat turn 'turn-nope'"),
    ]
    for method, params, words in unknown:
        error = await refused(d, method, params)
        assert error.rpc_code == NotFound.code and words in error.message, (method, error.message)

    (tmp_path / "file.txt").write_text("x")
    for path, words in [
        (str(tmp_path / "missing"), "does not exist"),
        ("relative/dir", "is not an absolute path"),
        (str(tmp_path / "file.txt"), "is not a directory"),
        ("/", "cannot be the whole filesystem"),
        (str(d.paths.home), "this daemon's own directory"),
        (str(d.paths.data_dir / "sub"), "does not exist"),
        (str(d.paths.data_dir), "this daemon's own directory"),
    ]:
        error = await refused(d, "thread.start", {"workspace": path})
        assert error.rpc_code == UserError.code and words in error.message, (path, error.message)

    thread = await d.call("thread.start", {"workspace": str(workspace)})
    error = await refused(d, "turn.start", {"thread_id": thread["id"], "input": "x" * 16_001})
    assert error.rpc_code == InvalidParams.code
    assert error.message == "parameter 'input' must be at most 16000 characters"
    error = await refused(d, "turn.start", {"thread_id": thread["id"], "input": " \n "})
    assert "the input is empty" in error.message
    error = await refused(d, "thread.events", {"thread_id": thread["id"], "limit": 1001})
    assert error.message == "parameter 'limit' must be between 1 and 1000"
    assert (await run_turn(d, thread["id"], "x" * 16_000))["status"] == "completed"

    archived = await d.call("thread.archive", {"thread_id": thread["id"]})
    assert archived["status"] == "archived"
    assert await d.call("thread.archive", {"thread_id": thread["id"]}) == archived
    error = await refused(d, "turn.start", {"thread_id": thread["id"], "input": "/ls"})
    assert error.rpc_code == Conflict.code and "is archived" in error.message
    assert (await d.call("thread.list", {}))["threads"] == []
    listed = await d.call("thread.list", {"include_archived": True})
    assert [t["status"] for t in listed["threads"]] == ["archived"]
    assert (await d.call("status"))["chat"]["threads"] == {"archived": 1}
    assert (await d.call("thread.read", {"thread_id": thread["id"]}))["thread"] == archived


@pytest.mark.parametrize(
    ("table", "vocabulary"),
    [("chat_threads", ThreadStatus), ("chat_turns", TurnStatus), ("chat_items", ItemStatus)],
)
async def test_statuses_are_what_the_tables_admit(
    tmp_path: Path, table: str, vocabulary: type[enum.StrEnum]
) -> None:
    store = await Store.open(tmp_path / "db.sqlite3")
    try:
        row = await store.fetchone("SELECT sql FROM sqlite_master WHERE name = ?", (table,))
    finally:
        await store.close()
    assert row is not None
    match = re.search(r"CHECK \(status IN\s*\(([^)]*)\)\)", row[0])
    assert match, f"no CHECK constraint on {table}.status"
    assert set(re.findall(r"'([^']*)'", match.group(1))) == {v.value for v in vocabulary}
