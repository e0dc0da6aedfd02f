"""The local engine on a real psionic with the packaged model (SmolLM2-135M), on CPU: a turn
whose first step must call a tool makes a tool item through the chat's actions (answering an
approval when the action asks one), stops at the step bound and says so; slash commands still
go to the command lane; engine.status is honest about the small model. Kept to tens of tokens
so that it runs in a minute or two on CPU. One fast test on the fake runtime checks the wiring."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from support import DaemonFactory, InProcessDaemon
from support.bwrap import needs_bwrap
from support.chat import chat_daemon, run_turn

from autopilotd.adapters.fake_inference import FakeInference
from autopilotd.app import Adapters

registry = pytest.importorskip("psionic.registry")

ACTION_KINDS = {"tool_call", "command_execution", "file_change", "network_request"}


async def test_the_engine_follows_the_settings_and_streams_the_answer(
    daemon_factory: DaemonFactory, user_workspace: Path
) -> None:
    """Fast, on the fake runtime: chat_engine "auto" is the local engine while the runtime is
    on; it is not ready before psionic is, and says so; the answer streams into an agent
    message; "commands" keeps the command lane."""
    d = await chat_daemon(
        daemon_factory,
        adapters=Adapters(inference=FakeInference),
        runtime_mode="url",
        runtime_url="http://fake-psionic",
    )
    assert (await d.call("wait.until", {"condition": "runtime-ready", "timeout_s": 10}))["met"]
    status = await d.call("engine.status")
    assert (status["name"], status["ready"], status["model"]) == ("local", True, "fake-chat")
    assert "asks you first" in status["reason"] and "small" not in status["reason"]
    thread = await d.call("thread.start", {"workspace": str(user_workspace)})
    turn = await run_turn(d, thread["id"], "Hello")
    assert [(i["kind"], i["body"].get("text")) for i in turn["items"]] == [
        ("user_message", "Hello"),
        ("agent_message", "fake answer"),
    ]
    lane = await chat_daemon(
        daemon_factory,
        adapters=Adapters(inference=FakeInference),
        runtime_mode="url",
        runtime_url="http://fake-psionic",
        chat_engine="commands",
    )
    assert (await lane.call("engine.status"))["name"] == "commands"


async def _local_daemon(factory: DaemonFactory) -> InProcessDaemon:
    """A daemon with psionic spawned on the packaged chat model alone, given by its file
    (as a user gives a bigger one: chat_model), and the local engine."""
    d = await chat_daemon(
        factory,
        runtime_mode="spawn",
        runtime_args="--no-default-models --threads 2",
        chat_model=str(registry.smollm2_gguf()),
        chat_engine="local",
        chat_tool_choice="required",
        chat_max_steps=1,
        chat_max_tokens=96,
        chat_approval_timeout_s=120.0,
    )
    deadline = time.monotonic() + 300  # a first start converts the GGUF (cached afterwards)
    while not (status := await d.call("engine.status"))["ready"]:
        assert time.monotonic() < deadline, f"the local engine did not get ready: {status}"
        await asyncio.sleep(0.5)
    return d


async def _turn_answering(d: InProcessDaemon, thread_id: str, text: str) -> dict[str, Any]:
    """Run a turn to its end, approving once any action that asks."""
    turn = await d.call("turn.start", {"thread_id": thread_id, "input": text})
    while True:
        turn = await d.call("turn.wait", {"turn_id": turn["id"], "timeout_s": 5})
        for item in turn["items"]:
            if item["body"].get("approval", {}).get("status") == "pending":
                await d.call("approval.answer", {"item_id": item["id"], "decision": "approve"})
        if turn["status"] != "running":
            return dict(turn)


async def test_a_local_engine_turn_calls_a_tool_and_stops_at_the_bound(
    daemon_factory: DaemonFactory, user_workspace: Path
) -> None:
    d = await _local_daemon(daemon_factory)
    status = await d.call("engine.status")
    assert status["name"] == "local" and status["installed"] and status["ready"]
    assert "smollm2-135m" in status["model"]
    assert "small local model" in status["reason"] and "asks you first" in status["reason"]

    thread = await d.call("thread.start", {"workspace": str(user_workspace)})
    assert thread["engine"] == "local"
    turn = await _turn_answering(d, thread["id"], "List the files here")
    assert turn["status"] == "completed", turn
    shown = [(i["kind"], i["status"], i["body"]) for i in turn["items"]]
    actions = [i for i in turn["items"] if i["kind"] in ACTION_KINDS]
    print("\nfirst turn:", shown)
    assert len(actions) == 1, shown  # tool_choice "required": the first step calls a tool
    (action,) = actions
    if action["body"].get("tool") == "?":  # the budget cut the call: said, nothing run
        assert action["status"] == "failed" and "cut at chat_max_tokens" in action["body"]["error"]
    else:
        assert action["status"] in ("completed", "failed"), shown
        if action["kind"] != "tool_call" and not action["body"].get("read_only"):
            assert action["body"]["approval"]["status"] == "approved", shown
        last = turn["items"][-1]  # one step (chat_max_steps = 1): the bound is said
        assert last["kind"] == "agent_message", shown
        assert "I stopped after 1 step," in last["body"]["text"]

    # A slash command is the command lane's in a local thread too; and a second turn
    # replays the first (its call and result) to the model.
    listing = await _turn_answering(d, thread["id"], "/ls")
    assert [i["kind"] for i in listing["items"]] == ["user_message", "tool_call"]
    assert {e["path"] for e in listing["items"][1]["body"]["entries"]} >= {"notes.txt"}
    again = await _turn_answering(d, thread["id"], "And the other files?")
    assert again["status"] == "completed"
    assert sum(i["kind"] in ACTION_KINDS for i in again["items"]) == 1


@needs_bwrap
async def test_a_tool_call_to_run_asks_and_runs_after_approval(
    daemon_factory: DaemonFactory, user_workspace: Path
) -> None:
    d = await _local_daemon(daemon_factory)
    thread = await d.call("thread.start", {"workspace": str(user_workspace)})
    turn = await _turn_answering(d, thread["id"], "Run the shell command: touch made.txt")
    runs = [i for i in turn["items"] if i["kind"] == "command_execution"]
    if not runs:
        pytest.skip(f"the model called another tool: {[i['kind'] for i in turn['items']]}")
    run = runs[0]
    print("\nrun turn:", [(i["kind"], i["status"], i["body"]) for i in turn["items"]])
    if not run["body"]["read_only"]:
        assert run["body"]["approval"]["status"] == "approved"
    assert run["status"] in ("completed", "failed") and "outcome" in run["body"], run
    if run["body"]["command"] == "touch made.txt" and run["status"] == "completed":
        assert (user_workspace / "made.txt").exists()
