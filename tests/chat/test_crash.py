"""A long /run stopped in the middle, with the real bubblewrap sandbox: by turn.interrupt, and
by a crash of the daemon (kill -9). Either way the turn and its command end `interrupted`,
keeping what they had, no process of the command is left, and the thread takes its next
turn."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import DaemonFactory, DaemonProcess, left_running
from support.bwrap import needs_bwrap
from support.chat import all_events, asking, chat_daemon, replay, run_turn

pytestmark = needs_bwrap


def long_command(marker: str) -> str:
    """A command that runs five minutes, `marker` on its command line (and its shell's)."""
    return f"python3 -c 'import time; time.sleep(300)' {marker}; echo done"


@pytest.fixture
def marker() -> Iterator[str]:
    """A mark unique to the test for the command line of its command; whatever still has it
    when the test ends (a test that failed) is killed, so nothing sleeps on."""
    mark = f"chat-crash-marker-{os.getpid()}-{time.monotonic_ns()}"
    yield mark
    for pid in left_running(mark):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while not (met := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return met


async def test_an_interrupt_stops_a_running_command_and_leaves_no_process(
    daemon_factory: DaemonFactory, user_workspace: Path, marker: str
) -> None:
    d = await chat_daemon(daemon_factory, chat_approval_timeout_s=60.0)
    thread = await d.call("thread.start", {"workspace": str(user_workspace)})
    turn = await d.call(
        "turn.start", {"thread_id": thread["id"], "input": f"/run {long_command(marker)}"}
    )
    item = await asking(d, turn["id"])
    await d.call("approval.answer", {"item_id": item["id"], "decision": "approve"})
    deadline = time.monotonic() + 15
    while not left_running(marker):
        assert time.monotonic() < deadline, "the command did not start"
        await asyncio.sleep(0.05)

    stopped = await d.call("turn.interrupt", {"turn_id": turn["id"]})
    assert (stopped["status"], stopped["error"]) == ("interrupted", "interrupted (turn.interrupt)")
    command = stopped["items"][-1]
    assert (command["id"], command["status"]) == (item["id"], "interrupted")
    assert command["body"]["command"] == long_command(marker)  # what it had is kept
    assert command["body"]["approval"]["status"] == "approved"
    assert "outcome" not in command["body"]  # it never finished
    deadline = time.monotonic() + 5
    while left_running(marker):
        assert time.monotonic() < deadline, "the interrupted command's process outlived it"
        await asyncio.sleep(0.05)

    events = await all_events(d, thread["id"])
    assert [e["type"] for e in events[-2:]] == ["item.interrupted", "turn.interrupted"]
    view = await d.call("thread.read", {"thread_id": thread["id"]})
    assert replay(events) == {i["id"]: i for t in view["turns"] for i in t["items"]}
    nxt = await run_turn(d, thread["id"], "/ls")
    assert nxt["status"] == "completed"


def test_a_crash_during_a_long_command_interrupts_it_and_leaves_no_process(
    daemon_process: Callable[..., DaemonProcess], tmp_path: Path, user_workspace: Path, marker: str
) -> None:
    d = daemon_process(tmp_path / "h")

    def ctl(*args: str) -> dict[str, Any]:
        out = d.ctl("--json", *args)
        assert out.returncode == 0, out.stderr
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def turn_now(turn_id: str) -> dict[str, Any]:
        return ctl("turn.wait", "--turn-id", turn_id, "--timeout-s", "0")

    def pending(turn_id: str) -> dict[str, Any] | None:
        """The turn's item that waits for an approval, if one does now."""
        turn = turn_now(turn_id)
        assert turn["status"] == "running", f"the turn ended without asking: {turn}"
        asks = (i for i in turn["items"] if i["body"].get("approval", {}).get("status"))
        return next((i for i in asks if i["body"]["approval"]["status"] == "pending"), None)

    wait_for(lambda: ctl("status")["chat"]["state"] == "ready", "the chat did not get ready")
    thread = ctl("thread.start", "--workspace", str(user_workspace))
    command = long_command(marker)
    turn = ctl("turn.start", "--thread-id", thread["id"], "--input", f"/run {command}")
    item = wait_for(lambda: pending(turn["id"]), "no approval was asked for")
    ctl("approval.answer", "--item-id", item["id"], "--decision", "approve")
    wait_for(lambda: left_running(marker), "the command did not start")
    before = ctl("thread.read", "--thread-id", thread["id"])

    d.proc.send_signal(signal.SIGKILL)  # a crash: nothing gets to clean up
    d.proc.wait(10)
    wait_for(lambda: not left_running(marker), "the command's process outlived the daemon", 10)

    d.paths.manifest_file.unlink()  # the dead daemon's, so the wait below is for the new one
    d = daemon_process(d.home)
    wait_for(lambda: ctl("status")["chat"]["state"] == "ready", "the chat did not get ready")
    after = ctl("thread.read", "--thread-id", thread["id"])
    (ended,) = after["turns"]
    assert ended["id"] == turn["id"]
    assert (ended["status"], ended["error"]) == ("interrupted", "the daemon stopped while it ran")
    message, run = ended["items"]
    assert message == before["turns"][0]["items"][0]
    assert (run["id"], run["kind"], run["status"]) == (
        item["id"],
        "command_execution",
        "interrupted",
    )
    assert run["body"] == before["turns"][0]["items"][1]["body"]  # what it had is kept
    assert run["body"]["command"] == command and run["body"]["approval"]["status"] == "approved"
    assert "outcome" not in run["body"]  # it never finished
    events = ctl("thread.events", "--thread-id", thread["id"])["events"]  # a page holds them
    assert events[-1]["seq"] == after["last_seq"]
    assert [e["type"] for e in events[-2:]] == ["item.interrupted", "turn.interrupted"]
    assert replay(events) == {i["id"]: i for i in ended["items"]}
    assert ctl("status")["chat"]["running_turns"] == 0

    nxt = ctl("turn.start", "--thread-id", thread["id"], "--input", "/run echo again")
    again = wait_for(lambda: pending(nxt["id"]), "no approval was asked for")
    ctl("approval.answer", "--item-id", again["id"], "--decision", "approve")
    done = ctl("turn.wait", "--turn-id", nxt["id"])
    assert (done["n"], done["status"]) == (2, "completed")
    assert done["items"][-1]["body"]["output"] == "again\n"
