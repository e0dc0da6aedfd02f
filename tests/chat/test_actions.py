"""Autopilot Chat's actions on the command lane, with the real bubblewrap sandbox: /run behind
an approval (approve, deny, expire, grants for the thread, deny winning), a command that tries
to leave the workspace, /patch applied and reverted byte for byte, a patch that does not match
changing nothing, and approvals that cannot be answered twice or after a restart."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest
from support import DaemonFactory, InProcessDaemon
from support.bwrap import needs_bwrap
from support.chat import NOTES, OWNER, PATCH_NOTES, asking, ended, own
from support.chat import chat_daemon as ready_daemon

from autopilotd.client import RpcError
from autopilotd.errors import Conflict, NotFound

pytestmark = needs_bwrap

PATCH = (
    PATCH_NOTES
    + """--- /dev/null
+++ b/src/new.txt
@@ -0,0 +1 @@
+a new file
"""
)


async def chat_daemon(factory: DaemonFactory, **settings: Any) -> InProcessDaemon:
    """A chat daemon whose approvals expire in 60 s unless a test says otherwise: a test that
    fails to answer fails then, rather than hanging."""
    return await ready_daemon(factory, **{"chat_approval_timeout_s": 60.0, **settings})


async def start(d: InProcessDaemon, thread_id: str, text: str) -> dict[str, Any]:
    turn: dict[str, Any] = await d.call("turn.start", {"thread_id": thread_id, "input": text})
    return turn


async def answer(d: InProcessDaemon, item_id: str, decision: str) -> dict[str, Any]:
    item: dict[str, Any] = await d.call(
        "approval.answer", {"item_id": item_id, "decision": decision}
    )
    return item


async def refused(d: InProcessDaemon, method: str, params: dict[str, Any]) -> RpcError:
    with pytest.raises(RpcError) as caught:
        await d.call(method, params)
    return caught.value


def last(turn: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = turn["items"][-1]
    return item


async def test_a_command_runs_once_approved_and_a_denied_one_never_runs(
    daemon_factory: DaemonFactory, user_workspace: Path
) -> None:
    d = await chat_daemon(daemon_factory)
    thread = await d.call("thread.start", {"workspace": str(user_workspace)})
    turn = await start(d, thread["id"], "/run echo hello > made.txt; cat notes.txt; id -u")
    item = await asking(d, turn["id"])
    assert item["kind"] == "command_execution" and item["status"] == "started"
    assert item["body"]["approval"]["action"] == "command"
    assert not (user_workspace / "made.txt").exists()  # nothing runs before the answer
    await answer(d, item["id"], "approve")
    done = last(await ended(d, turn["id"]))
    assert done["status"] == "completed", done
    body = done["body"]
    assert body["exit_code"] == 0 and body["outcome"] == "succeeded"
    assert body["output"] == NOTES.decode() + "65534\n"  # the owner, seen as nobody inside
    assert body["approval"]["status"] == "approved" and body["approval"]["decision"] == "approve"
    made = user_workspace / "made.txt"
    assert made.read_bytes() == b"hello\n"
    if os.geteuid() == 0:
        assert made.stat().st_uid == OWNER  # written as the folder's owner, never as root

    turn = await start(d, thread["id"], "/run rm notes.txt")
    item = await asking(d, turn["id"])
    await answer(d, item["id"], "deny")
    done = last(await ended(d, turn["id"]))
    assert done["status"] == "failed"
    assert done["body"]["error"] == "not run: the approval was declined (declined by the user)"
    assert (user_workspace / "notes.txt").read_bytes() == NOTES

    again = await refused(d, "approval.answer", {"item_id": item["id"], "decision": "approve"})
    assert again.rpc_code == Conflict.code and "declined already" in again.message
    nobody = await refused(d, "approval.answer", {"item_id": "item-nope", "decision": "deny"})
    assert nobody.rpc_code == NotFound.code

    turn = await start(d, thread["id"], "/run exit 3")
    await answer(d, (await asking(d, turn["id"]))["id"], "approve")
    done = last(await ended(d, turn["id"]))
    assert (done["status"], done["body"]["exit_code"]) == ("failed", 3)
    assert done["body"]["error"] == "exited with code 3"


async def test_grants_for_the_thread_skip_the_question_and_deny_wins(
    daemon_factory: DaemonFactory, user_workspace: Path
) -> None:
    d = await chat_daemon(daemon_factory)
    thread = await d.call("thread.start", {"workspace": str(user_workspace)})
    turn = await start(d, thread["id"], "/run echo one")
    await answer(d, (await asking(d, turn["id"]))["id"], "approve_thread")
    assert last(await ended(d, turn["id"]))["body"]["output"] == "one\n"

    turn = await d.call(  # the prefix "echo one" is granted: no question
        "turn.start", {"thread_id": thread["id"], "input": "/run echo one two", "wait": True}
    )
    done = last(await ended(d, turn["id"]))
    assert done["body"]["output"] == "one two\n"
    assert done["body"]["approval"]["decision"] == "grant"

    turn = await start(d, thread["id"], "/run echo one && touch x")  # a segment not granted
    item = await asking(d, turn["id"])
    bad = await refused(d, "approval.answer", {"item_id": item["id"], "decision": "approve_thread"})
    assert "only a simple command" in bad.message
    await answer(d, item["id"], "deny")
    await ended(d, turn["id"])
    assert not (user_workspace / "x").exists()

    turn = await start(d, thread["id"], "/run rm -f notes.txt")
    await answer(d, (await asking(d, turn["id"]))["id"], "deny_thread")
    await ended(d, turn["id"])
    turn = await d.call(  # "echo one" is allowed, "rm -f notes.txt" denied: deny wins, unasked
        "turn.start",
        {"thread_id": thread["id"], "input": "/run echo one; rm -f notes.txt", "wait": True},
    )
    done = last(await ended(d, turn["id"]))
    assert done["status"] == "failed" and "denied for this thread" in done["body"]["error"]
    assert done["body"]["approval"]["decision"] == "grant"
    assert (user_workspace / "notes.txt").read_bytes() == NOTES

    turn = await start(d, thread["id"], "/run echo one $(touch y)")  # unknowable: asks
    item = await asking(d, turn["id"])
    await answer(d, item["id"], "deny")
    await ended(d, turn["id"])
    assert not (user_workspace / "y").exists()


async def test_an_unanswered_approval_expires_as_a_decline(
    daemon_factory: DaemonFactory, user_workspace: Path
) -> None:
    d = await chat_daemon(daemon_factory, chat_approval_timeout_s=0.3)
    thread = await d.call("thread.start", {"workspace": str(user_workspace)})
    turn = await start(d, thread["id"], "/run touch late.txt")
    item = await asking(d, turn["id"])
    done = last(await ended(d, turn["id"]))
    assert done["status"] == "failed" and done["body"]["approval"]["status"] == "expired"
    assert done["body"]["error"] == "not run: the approval was expired (no answer within 0.3 s)"
    late = await refused(d, "approval.answer", {"item_id": item["id"], "decision": "approve"})
    assert late.rpc_code == Conflict.code and "expired already" in late.message
    assert not (user_workspace / "late.txt").exists()


async def test_a_command_that_tries_to_leave_the_workspace_is_contained(
    daemon_factory: DaemonFactory, user_workspace: Path, tmp_path: Path
) -> None:
    d = await chat_daemon(daemon_factory)
    thread = await d.call("thread.start", {"workspace": str(user_workspace)})
    outside = user_workspace.parent / "outside"
    (user_workspace / "link").symlink_to(outside)
    escape = (
        "cat ../outside/secret.txt link/secret.txt "
        f"{outside}/secret.txt 2>&1; "
        "echo x > ../outside/x 2>&1; echo y > link/y 2>&1; touch /tmp/z /usr/z /z 2>&1; "
        f"ls {tmp_path} 2>&1; ls /root 2>&1; echo done"
    )
    turn = await start(d, thread["id"], f"/run {escape}")
    await answer(d, (await asking(d, turn["id"]))["id"], "approve")
    done = last(await ended(d, turn["id"]))
    output = done["body"]["output"]
    assert "SECRET" not in output and "done\n" in output, output
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert not Path("/usr/z").exists() and not Path("/z").exists()


async def test_a_patch_applies_after_approval_and_reverts_byte_for_byte(
    daemon_factory: DaemonFactory, user_workspace: Path
) -> None:
    notes = user_workspace / "notes.txt"
    notes.chmod(0o640)
    d = await chat_daemon(daemon_factory)
    thread = await d.call("thread.start", {"workspace": str(user_workspace)})
    turn = await start(d, thread["id"], PATCH)
    first = await asking(d, turn["id"])
    assert first["kind"] == "file_change" and first["body"]["path"] == "notes.txt"
    assert first["body"]["before_sha256"] == hashlib.sha256(NOTES).hexdigest()
    assert notes.read_bytes() == NOTES  # nothing written before the answer
    await answer(d, first["id"], "approve")
    second = await asking(d, turn["id"])
    assert second["body"]["path"] == "src/new.txt" and second["body"]["before_sha256"] is None
    await answer(d, second["id"], "approve")
    turn = await ended(d, turn["id"])
    assert [i["status"] for i in turn["items"]] == ["completed"] * 3
    changed = NOTES.replace(b"second line", b"second line, changed")
    assert notes.read_bytes() == changed and notes.stat().st_mode & 0o777 == 0o640
    if os.geteuid() == 0:
        assert notes.stat().st_uid == OWNER
    assert (user_workspace / "src" / "new.txt").read_bytes() == b"a new file\n"

    diff = last(await ended(d, (await start(d, thread["id"], "/diff"))["id"]))
    assert "+second line, changed" in diff["body"]["output"]
    assert diff["body"]["files"] == ["notes.txt", "src/new.txt"]

    reverted = await d.call("item.revert", {"item_id": first["id"]})
    assert reverted["path"] == "notes.txt"
    assert notes.read_bytes() == NOTES and notes.stat().st_mode & 0o777 == 0o640
    twice = await refused(d, "item.revert", {"item_id": first["id"]})
    assert twice.rpc_code == Conflict.code and "reverted already" in twice.message

    (user_workspace / "src" / "new.txt").write_bytes(b"edited by the user\n")
    own(user_workspace)
    moved = await refused(d, "item.revert", {"item_id": second["id"]})
    assert "has changed since" in moved.message  # the user's edit is never overwritten
    assert (user_workspace / "src" / "new.txt").read_bytes() == b"edited by the user\n"
    (user_workspace / "src" / "new.txt").write_bytes(b"a new file\n")
    turn = await start(d, thread["id"], f"/revert {second['id']}")
    await answer(d, (await asking(d, turn["id"]))["id"], "approve")
    assert last(await ended(d, turn["id"]))["status"] == "completed"
    assert not (user_workspace / "src" / "new.txt").exists()  # the change created it
    view = await d.call("thread.read", {"thread_id": thread["id"]})
    items = {i["id"]: i for t in view["turns"] for i in t["items"]}
    assert items[first["id"]]["body"]["reverted_by"] == "item.revert"
    assert items[second["id"]]["body"]["reverted_by"] != "item.revert"


@pytest.mark.parametrize(
    ("diff", "why"),
    [
        (PATCH.replace(" third line", " 3rd line"), "does not match at line 3"),
        (PATCH.replace("notes.txt", "../outside/secret.txt"), "not changed"),
        (PATCH.replace("a/notes.txt", "/etc/passwd"), "renames are not patched"),
        (PATCH.replace("notes.txt", "/etc/passwd"), "not changed"),
        (PATCH.replace("notes.txt", "link/secret.txt"), "not changed"),
        ("/patch\nnothing like a diff\n", "not a patch"),
        (PATCH.replace("@@ -1,3 +1,3 @@", "@@ -1,4 +1,3 @@"), "not a patch"),
    ],
)
async def test_a_patch_that_does_not_fit_changes_nothing(
    daemon_factory: DaemonFactory, user_workspace: Path, diff: str, why: str
) -> None:
    (user_workspace / "link").symlink_to(user_workspace.parent / "outside")
    d = await chat_daemon(daemon_factory)
    thread = await d.call("thread.start", {"workspace": str(user_workspace)})
    turn = await start(d, thread["id"], diff.split("--- /dev/null")[0])
    done = await ended(d, turn["id"])
    change = done["items"][1]
    assert change["status"] == "failed" and why in change["body"]["error"], change
    assert "approval" not in change["body"]  # refused before anything was asked
    assert (user_workspace / "notes.txt").read_bytes() == NOTES
    assert (user_workspace.parent / "outside" / "secret.txt").read_text() == "SECRET"


async def test_read_only_threads_and_read_only_git_commands(
    daemon_factory: DaemonFactory, user_workspace: Path
) -> None:
    d = await chat_daemon(daemon_factory)
    thread = await d.call(
        "thread.start", {"workspace": str(user_workspace), "sandbox_mode": "read-only"}
    )
    turn = await start(d, thread["id"], "/run touch x")
    await answer(d, (await asking(d, turn["id"]))["id"], "approve")
    done = last(await ended(d, turn["id"]))
    assert done["status"] == "failed" and "Read-only file system" in done["body"]["output"]
    turn = await start(d, thread["id"], PATCH.split("--- /dev/null")[0])
    await answer(d, (await asking(d, turn["id"]))["id"], "approve")
    done = last(await ended(d, turn["id"]))
    assert done["status"] == "failed" and "read-only" in done["body"]["error"]
    assert (user_workspace / "notes.txt").read_bytes() == NOTES

    turn = await d.call(  # git status reads: it runs without asking, the workspace read-only
        "turn.start", {"thread_id": thread["id"], "input": "/run git status", "wait": True}
    )
    done = last(await ended(d, turn["id"]))
    assert done["body"]["read_only"] is True and "approval" not in done["body"]
    assert "not a git repository" in done["body"]["output"]


async def test_a_restart_expires_a_pending_approval(
    daemon_factory: DaemonFactory, user_workspace: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    d = await chat_daemon(daemon_factory, home=home)
    thread = await d.call("thread.start", {"workspace": str(user_workspace)})
    turn = await start(d, thread["id"], "/run touch never.txt")
    item = await asking(d, turn["id"])
    before = await d.call("thread.read", {"thread_id": thread["id"]})
    await d.stop()
    d = await chat_daemon(daemon_factory, home=home)
    after = await d.call("thread.read", {"thread_id": thread["id"]})
    assert after["turns"][0]["status"] == "interrupted"
    waited = after["turns"][0]["items"][-1]
    assert waited["status"] == "interrupted"
    assert waited["body"]["approval"]["status"] == "expired"
    assert waited["body"]["approval"]["reason"] == "expired at restart"
    late = await refused(d, "approval.answer", {"item_id": item["id"], "decision": "approve"})
    assert "expired already" in late.message
    assert not (user_workspace / "never.txt").exists()
    assert before["turns"][0]["items"][0] == after["turns"][0]["items"][0]


async def test_output_that_never_ends_is_capped_and_the_command_killed(
    daemon_factory: DaemonFactory, user_workspace: Path
) -> None:
    d = await chat_daemon(daemon_factory, sandbox_timeout_s=1.0)
    thread = await d.call("thread.start", {"workspace": str(user_workspace)})
    turn = await start(d, thread["id"], "/run yes")
    await answer(d, (await asking(d, turn["id"]))["id"], "approve")
    done = last(await ended(d, turn["id"]))
    assert done["status"] == "failed" and done["body"]["outcome"] == "timed_out"
    assert done["body"]["error"].startswith("timed out after")
    assert done["body"]["truncated"] is True
    assert 0 < len(done["body"]["output"].encode()) <= 64 << 10


async def test_a_running_command_streams_its_output_and_an_interrupt_keeps_it(
    daemon_factory: DaemonFactory, user_workspace: Path
) -> None:
    d = await chat_daemon(daemon_factory)
    thread = await d.call("thread.start", {"workspace": str(user_workspace)})
    turn = await start(d, thread["id"], "/run echo first-part; sleep 60; echo never")
    item = await asking(d, turn["id"])
    await answer(d, item["id"], "approve")
    deadline = time.monotonic() + 20
    while True:  # the first line shows while the command still runs
        now = await d.call("turn.wait", {"turn_id": turn["id"], "timeout_s": 0})
        running = last(now)
        if running["body"]["output"] == "first-part\n":
            break
        assert now["status"] == "running" and time.monotonic() < deadline, now
        await asyncio.sleep(0.05)
    assert running["status"] == "started"
    events = await d.call("thread.events", {"thread_id": thread["id"]})
    deltas = [e for e in events["events"] if e["type"] == "item.delta"]
    assert deltas[-1]["body"] == {"field": "output", "delta": "first-part\n"}
    stopped = await d.call("turn.interrupt", {"turn_id": turn["id"]})
    assert stopped["status"] == "interrupted"
    kept = last(stopped)
    assert kept["status"] == "interrupted" and kept["body"]["output"] == "first-part\n"


async def test_a_revert_never_follows_a_symlink_planted_over_the_file(
    daemon_factory: DaemonFactory, user_workspace: Path
) -> None:
    d = await chat_daemon(daemon_factory)
    thread = await d.call("thread.start", {"workspace": str(user_workspace)})
    turn = await start(d, thread["id"], PATCH.split("--- /dev/null")[0])
    item = await asking(d, turn["id"])
    await answer(d, item["id"], "approve")
    assert last(await ended(d, turn["id"]))["status"] == "completed"
    notes, secret = user_workspace / "notes.txt", user_workspace.parent / "outside" / "secret.txt"
    notes.unlink()
    notes.symlink_to(secret)
    planted = await refused(d, "item.revert", {"item_id": item["id"]})
    assert planted.rpc_code == Conflict.code and "cannot be reverted" in planted.message
    assert secret.read_text() == "SECRET" and notes.is_symlink()
