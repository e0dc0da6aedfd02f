"""The Codex engine with the real `codex app-server` (installed by `make codex`) and a scripted
model server on loopback: a command Codex wants to run asks our approval, and runs (or not) by
the answer, Codex being told; a tool call of ours (buying) round trip; a missing program said
plainly; an app-server killed mid-turn fails that turn, and the next resumes the thread."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import DaemonFactory, InProcessDaemon
from support.chat import asking as waits_for_approval
from support.chat import chat_daemon, ended
from support.model_server import HOLD, ModelServer, function_call, message, model_server

from autopilotd.adapters.codex_engine import CodexEngine, CodexSettings, find_codex
from autopilotd.chat.actions import Actions
from autopilotd.sandbox import workspace as workspace_files

CACHE = Path(os.environ.get("AUTOPILOTD_BUILD_CACHE") or Path.home() / ".cache" / "autopilotd")
CODEX = find_codex("", CACHE)
needs_codex = pytest.mark.skipif(
    CODEX is None, reason="Codex is not installed here (`make codex` installs it from npm)"
)


@pytest.fixture
def daemon_home() -> Iterator[Path]:
    """The daemon's home, outside /tmp: Codex refuses to make its helper programs (its
    sandbox's among them) under a temporary directory, and its home is under the daemon's."""
    parent = CACHE / "test-homes"
    parent.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="codex-", dir=parent))
    yield home
    shutil.rmtree(home, ignore_errors=True)


async def codex_daemon(factory: DaemonFactory, server: ModelServer, home: Path) -> InProcessDaemon:
    return await chat_daemon(
        factory,
        home=home,
        chat_engine="codex",
        codex_base_url=server.url,
        codex_model="mock-model",
        chat_approval_timeout_s=60.0,
    )


async def asking(d: InProcessDaemon, turn_id: str) -> dict[str, Any]:
    return await waits_for_approval(d, turn_id, within_s=60)  # Codex starts its process first


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A project folder owned by the daemon's user, who Codex's commands run as: Codex's own
    sandbox (bubblewrap) cannot set up in a folder of another user (docs/chat.md)."""
    ws = tmp_path / "project"
    (ws / "src").mkdir(parents=True)
    (ws / "notes.txt").write_text("first line\n")
    (ws / "src" / "main.py").write_text("print('hello')\n")
    return ws


def of_kind(turn: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [i for i in turn["items"] if i["kind"] == kind]


ECHO = function_call("call-1", "exec_command", {"cmd": "echo hi > made.txt; echo hi"})


@needs_codex
@pytest.mark.parametrize("decision", ["approve", "deny"])
async def test_a_command_codex_runs_asks_our_approval_first(
    daemon_factory: DaemonFactory, workspace: Path, daemon_home: Path, decision: str
) -> None:
    async with model_server([[ECHO], [message("all done")]]) as server:
        d = await codex_daemon(daemon_factory, server, daemon_home)
        status = await d.call("engine.status")
        assert status["name"] == "codex" and status["installed"] and status["ready"], status
        thread = await d.call("thread.start", {"workspace": str(workspace)})
        turn = await d.call("turn.start", {"thread_id": thread["id"], "input": "make a file"})
        item = await asking(d, turn["id"])
        assert item["kind"] == "command_execution"
        assert item["body"]["command"] == "echo hi > made.txt; echo hi"
        assert item["body"]["approval"]["action"] == "command"
        assert not (workspace / "made.txt").exists()  # nothing ran before the answer
        await d.call("approval.answer", {"item_id": item["id"], "decision": decision})
        done = await ended(d, turn["id"])

    assert done["status"] == "completed", done
    (command,) = of_kind(done, "command_execution")
    (said,) = of_kind(done, "agent_message")
    assert said["body"]["text"] == "all done" and said["status"] == "completed"
    assert len(server.requests) == 2  # Codex went back to the model with the command's result
    # Only function tools reach a model server of one's own (psionic refuses the other kinds).
    assert {t.get("type") for r in server.requests for t in r.get("tools", [])} <= {"function"}
    told = " ".join(server.tool_outputs(1))
    if decision == "approve":
        assert command["status"] == "completed", command["body"].get("output")
        # Codex runs `bash -lc`: a login shell's profile may print first (this machine's does)
        assert command["body"]["output"].endswith("hi\n") and command["body"]["exit_code"] == 0
        assert (workspace / "made.txt").read_text() == "hi\n"
        assert "hi" in told
    else:
        assert command["status"] == "failed", command
        assert command["body"]["error"].startswith("not run: the approval was declined")
        assert not (workspace / "made.txt").exists()
        assert "hi\n" not in told and told  # Codex was told it did not run


PATCH = (
    "apply_patch <<'EOF'\n*** Begin Patch\n*** Add File: hello.txt\n+hello\n*** End Patch\nEOF\n"
)


@needs_codex
@pytest.mark.parametrize("decision", ["approve", "deny"])
async def test_a_file_change_codex_makes_asks_our_approval_first(
    daemon_factory: DaemonFactory, workspace: Path, daemon_home: Path, decision: str
) -> None:
    """Codex turns an `apply_patch` command into a file change of its own, and asks first."""
    change = function_call("call-p", "exec_command", {"cmd": PATCH})
    async with model_server([[change], [message("patched")]]) as server:
        d = await codex_daemon(daemon_factory, server, daemon_home)
        thread = await d.call("thread.start", {"workspace": str(workspace)})
        turn = await d.call("turn.start", {"thread_id": thread["id"], "input": "add hello"})
        item = await asking(d, turn["id"])
        assert item["kind"] == "file_change" and item["body"]["path"] == "hello.txt"
        assert item["body"]["approval"]["action"] == "file_change"
        assert not (workspace / "hello.txt").exists()
        await d.call("approval.answer", {"item_id": item["id"], "decision": decision})
        done = await ended(d, turn["id"])

    assert done["status"] == "completed", done
    (changed,) = of_kind(done, "file_change")
    assert changed["body"]["changes"] == [{"path": "hello.txt", "kind": "add", "diff": "hello\n"}]
    assert of_kind(done, "agent_message")[-1]["body"]["text"] == "patched"
    if decision == "approve":
        assert changed["status"] == "completed", changed["body"]
        assert (workspace / "hello.txt").read_text() == "hello\n"
    else:
        assert changed["status"] == "failed"
        assert changed["body"]["error"].startswith("not changed: the approval was declined")
        assert not (workspace / "hello.txt").exists()


@needs_codex
async def test_an_interrupted_turn_stops_its_app_server(
    daemon_factory: DaemonFactory, workspace: Path, daemon_home: Path
) -> None:
    async with model_server([HOLD]) as server:
        d = await codex_daemon(daemon_factory, server, daemon_home)
        thread = await d.call("thread.start", {"workspace": str(workspace)})
        turn = await d.call("turn.start", {"thread_id": thread["id"], "input": "think long"})
        await asyncio.wait_for(server.got_request.wait(), 60)
        assert len(app_servers()) == 1
        await d.call("turn.interrupt", {"turn_id": turn["id"]})
        done = await ended(d, turn["id"])
    assert done["status"] == "interrupted"
    assert app_servers() == []


@needs_codex
async def test_a_read_only_thread_declines_what_codex_asks_to_run_without_asking(
    daemon_factory: DaemonFactory, workspace: Path, daemon_home: Path
) -> None:
    """An approved command may leave Codex's sandbox (when Codex asked to), so a read-only
    thread never approves one."""
    async with model_server([[ECHO], [message("could not")]]) as server:
        d = await codex_daemon(daemon_factory, server, daemon_home)
        thread = await d.call(
            "thread.start", {"workspace": str(workspace), "sandbox_mode": "read-only"}
        )
        turn = await d.call(
            "turn.start", {"thread_id": thread["id"], "input": "make a file", "wait": True}
        )
        done = await ended(d, turn["id"])

    assert done["status"] == "completed", done
    (command,) = of_kind(done, "command_execution")
    assert command["status"] == "failed"
    assert command["body"]["error"] == "not run: this thread's sandbox mode is read-only"
    assert "approval" not in command["body"]  # nobody was asked
    assert not (workspace / "made.txt").exists()
    assert server.tool_outputs(1)  # Codex was told


@needs_codex
async def test_codex_calls_our_buy_tool_and_hears_the_answer(
    daemon_factory: DaemonFactory, workspace: Path, daemon_home: Path
) -> None:
    """The `autopilot_buy` tool round trip: the spend is asked of the owner, declined here,
    and Codex hears that nothing was bought (paying through the network is /buy's test)."""
    buy = function_call("call-b", "autopilot_buy", {"prompt": "a haiku", "budget_sats": 50})
    async with model_server([[buy], [message("no haiku then")]]) as server:
        d = await codex_daemon(daemon_factory, server, daemon_home)
        thread = await d.call("thread.start", {"workspace": str(workspace)})
        turn = await d.call("turn.start", {"thread_id": thread["id"], "input": "buy a haiku"})
        item = await asking(d, turn["id"])
        assert item["kind"] == "network_request"
        assert item["body"]["prompt"] == "a haiku" and item["body"]["budget_sats"] == 50
        assert item["body"]["approval"]["action"] == "spend"
        await d.call("approval.answer_spend", {"item_id": item["id"], "decision": "deny"})
        done = await ended(d, turn["id"])

    tools = [t.get("name") for t in server.requests[0]["tools"]]
    assert "autopilot_buy" in tools
    assert done["status"] == "completed", done
    (request,) = of_kind(done, "network_request")
    assert request["status"] == "failed"
    assert request["body"]["error"].startswith("not bought: the approval was declined")
    (told,) = server.tool_outputs(1)
    assert "not bought: the approval was declined" in told
    assert of_kind(done, "agent_message")[-1]["body"]["text"] == "no haiku then"


async def test_without_codex_the_engine_says_so_and_commands_still_run(
    daemon_factory: DaemonFactory, workspace: Path, tmp_path: Path
) -> None:
    d = await chat_daemon(
        daemon_factory, chat_engine="codex", codex_bin=str(tmp_path / "no" / "codex")
    )
    status = await d.call("engine.status")
    assert status["name"] == "codex"
    assert not status["installed"] and not status["ready"]
    assert "make codex" in status["reason"]
    thread = await d.call("thread.start", {"workspace": str(workspace)})
    turn = await d.call("turn.start", {"thread_id": thread["id"], "input": "hello", "wait": True})
    turn = await ended(d, turn["id"])
    assert turn["status"] == "failed"
    assert turn["error"].startswith("the codex engine: Codex is not installed")
    (error,) = of_kind(turn, "error")
    assert "make codex" in error["body"]["message"]
    turn = await ended(
        d, (await d.call("turn.start", {"thread_id": thread["id"], "input": "/ls"}))["id"]
    )
    assert turn["status"] == "completed"  # / lines go to the command lane
    (listing,) = of_kind(turn, "tool_call")
    assert {e["path"] for e in listing["body"]["entries"]} == {"notes.txt", "src/main.py"}


def test_codex_installed_but_not_signed_in_says_how(tmp_path: Path) -> None:
    settings = CodexSettings(binary=Path("/bin/true"), home=tmp_path / "codex")
    engine = CodexEngine(settings, Actions(workspace_files))
    status = engine.status()
    assert status.installed and not status.ready
    assert f"CODEX_HOME={tmp_path / 'codex'} codex login" in status.reason
    (tmp_path / "codex").mkdir()
    (tmp_path / "codex" / "auth.json").write_text("{}")
    assert engine.status().ready


def app_servers() -> list[int]:
    """The `codex app-server` processes this test process started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and b"app-server" in cmdline:
            found.append(int(entry.name))
    return found


@needs_codex
async def test_a_killed_app_server_fails_its_turn_and_the_next_resumes_the_thread(
    daemon_factory: DaemonFactory, workspace: Path, daemon_home: Path
) -> None:
    async with model_server([HOLD, [message("back again")]]) as server:
        d = await codex_daemon(daemon_factory, server, daemon_home)
        thread = await d.call("thread.start", {"workspace": str(workspace)})
        first = await d.call("turn.start", {"thread_id": thread["id"], "input": "first words"})
        await asyncio.wait_for(server.got_request.wait(), 60)
        (pid,) = app_servers()
        os.kill(pid, signal.SIGKILL)
        first = await ended(d, first["id"])
        assert first["status"] == "failed"
        assert "the Codex app-server exited (signal 9) during the turn" in first["error"]
        assert "resumes the thread" in first["error"]

        second = await d.call("turn.start", {"thread_id": thread["id"], "input": "second"})
        second = await ended(d, second["id"])

    assert second["status"] == "completed", second
    assert of_kind(second, "agent_message")[-1]["body"]["text"] == "back again"
    said = str(server.requests[-1]["input"])
    assert "first words" in said and "second" in said  # the same Codex thread, resumed
    assert "autopilot_buy" in [t.get("name") for t in server.requests[-1]["tools"]]
    assert app_servers() == []  # no app-server outlives its turn
