"""Autopilot Chat turn overhead: turn.start (with wait) → the turn ended, through the JSON-RPC
control plane, against the engine's own time in the turn.

    .venv/bin/python bench/chat_turns.py [--turns 300] [--deltas 3] [--warmup 10]

A daemon process (this script with `--serve HOME`, see bench/chat_daemon.py) runs as
`autopilotd run` does, but for its chat engine: the command lane as the daemon has it, with
each turn's `run_turn` timed in the daemon (the engine's time, its own item writes included),
and input that is no command turned into a scripted turn: one agent message streamed in
`--deltas` deltas (each `item.delta` committed in its own transaction, as a model's tokens
would be) and completed, with no model. Three kinds of turns, each on a thread of its own,
interleaved so that all see the same machine, `--turns` of each after `--warmup` untimed:

- scripted: the agent message above;
- `/ls` on a workspace of 20 small files (the command lane, no sandbox);
- `/run true` in the bubblewrap sandbox, as the workspace's owner, allowed for the thread
  (approve_thread on a first, untimed one), so it never asks: the sandbox's start is in its
  engine time, and the item's `duration_s` is the sandboxed run alone.

Per turn, in this process: the round trip of `turn.start` with wait (from sending it to its
answer, the turn ended); the engine's time; and their difference, the **overhead**: what the
daemon adds to a turn (the request, recording the turn and the user's message, starting its
task, ending the turn, the status snapshot, waking the waiting request, the answer). The floor
of any call is shown too: the round trip of `engine.status`. Client and daemon share the
machine's CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from chat_daemon import daemon_process, serve
from figures import TABLE_HEADER, table_row

from autopilotd.adapters.bwrap_sandbox import BwrapSandbox
from autopilotd.chat.commands_lane import CommandLane
from autopilotd.client import RpcClient
from autopilotd.ports.engine import EngineStatus, TurnContext
from autopilotd.sandbox import workspace
from autopilotd.store.chat_records import ItemKind

ENGINE_TIMES = "engine_s.json"  # in the daemon's home, written when it stops: turn id → s
OWNER = 4242  # as root, /run runs as the workspace's owner, never as root: a user id for it


# -- the daemon --------------------------------------------------------------------------------


class TimedLane:
    """The command lane, with a scripted turn for input that is no command ("N": an agent
    message of N deltas), each turn's run_turn timed."""

    name = "bench"

    def __init__(self) -> None:
        self._lane = CommandLane(workspace)
        self.took: dict[str, float] = {}

    def status(self) -> EngineStatus:
        return EngineStatus(self.name, True, True, None, "the turn bench's timed command lane")

    async def run_turn(self, ctx: TurnContext, text: str) -> None:
        t0 = time.perf_counter()
        if text.startswith("/"):
            await self._lane.run_turn(ctx, text)
        else:
            item = await ctx.start_item(ItemKind.AGENT_MESSAGE, {"text": ""})
            for i in range(int(text)):
                await ctx.append(item, "text", f"token{i} ")
            await ctx.complete(item)
        self.took[ctx.turn_id] = time.perf_counter() - t0


async def serve_timed(home: Path) -> None:
    engine = TimedLane()
    try:
        await serve(home, engine)
    finally:
        (home / ENGINE_TIMES).write_text(json.dumps(engine.took))


# -- the client --------------------------------------------------------------------------------


def make_workspace(ws: Path) -> None:
    """20 small files in two folders, the workspace's owner a user's (as root: OWNER)."""
    for i in range(20):
        path = ws / ("src" if i % 2 else "docs") / f"file{i:02d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"line {i}\n" * 10)
    if os.geteuid() == 0:
        for parent, _dirs, files in os.walk(ws):
            os.chown(parent, OWNER, OWNER)
            for name in files:
                os.chown(Path(parent) / name, OWNER, OWNER)


async def allow_true(rpc: RpcClient, thread_id: str) -> None:
    """A first `/run true`, answered approve_thread: the next ones run without asking."""
    turn = await rpc.call("turn.start", {"thread_id": thread_id, "input": "/run true"})
    deadline = time.monotonic() + 20
    while True:
        turn = await rpc.call("turn.wait", {"turn_id": turn["id"], "timeout_s": 0})
        asked = turn["items"][-1]["body"].get("approval", {})
        if asked.get("status") == "pending":
            break
        assert turn["status"] == "running", f"the turn ended without asking: {turn}"
        assert time.monotonic() < deadline, "no approval was asked for"
        await asyncio.sleep(0.02)
    item_id = turn["items"][-1]["id"]
    await rpc.call("approval.answer", {"item_id": item_id, "decision": "approve_thread"})
    while turn["status"] == "running":
        turn = await rpc.call("turn.wait", {"turn_id": turn["id"]})
    assert turn["status"] == "completed", turn


async def one_turn(rpc: RpcClient, thread_id: str, text: str) -> tuple[dict[str, Any], float]:
    """A turn started with wait: the turn as answered, ended, and the round trip."""
    t0 = time.perf_counter()
    turn: dict[str, Any] = await rpc.call(
        "turn.start", {"thread_id": thread_id, "input": text, "wait": True}
    )
    took = time.perf_counter() - t0
    assert turn["status"] == "completed", turn
    assert all(i["status"] == "completed" for i in turn["items"]), turn
    return turn, took


async def measure(rpc: RpcClient, ws: Path, args: Any, kinds: dict[str, str]) -> dict[str, Any]:
    threads = {}
    for name in kinds:
        thread = await rpc.call("thread.start", {"workspace": str(ws), "title": name})
        threads[name] = thread["id"]
    if "/run true" in kinds:
        await allow_true(rpc, threads["/run true"])
    for _ in range(args.warmup):
        for name, text in kinds.items():
            await one_turn(rpc, threads[name], text)
    trips: dict[str, list[tuple[str, float]]] = {name: [] for name in kinds}
    runs: list[float] = []
    for _ in range(args.turns):
        for name, text in kinds.items():
            turn, took = await one_turn(rpc, threads[name], text)
            trips[name].append((turn["id"], took))
            if name == "/run true":
                body = turn["items"][-1]["body"]
                assert body["approval"]["decision"] == "grant", body
                runs.append(body["duration_s"])
    floor = []
    for _ in range(args.turns):
        t0 = time.perf_counter()
        await rpc.call("engine.status")
        floor.append(time.perf_counter() - t0)
    return {"trips": trips, "runs": runs, "floor": floor}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--turns", type=int, default=300, help="timed turns of each kind")
    ap.add_argument("--deltas", type=int, default=3, help="in a scripted turn's message")
    ap.add_argument("--warmup", type=int, default=10, help="untimed turns of each kind first")
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        await serve_timed(args.serve)
        return
    kinds = {"scripted": str(args.deltas), "/ls": "/ls", "/run true": "/run true"}
    no_sandbox = BwrapSandbox().unavailable()
    if no_sandbox is not None:
        print(f"no /run line: {no_sandbox}")
        del kinds["/run true"]
    with tempfile.TemporaryDirectory(prefix="autopilotd-bench-turns-") as tmp:
        root = Path(tmp)
        root.chmod(0o711)  # the workspace's owner reaches it (as root)
        home, ws = root / "home", root / "ws"
        ws.mkdir()
        make_workspace(ws)
        t0 = time.monotonic()
        async with daemon_process(__file__, home) as rpc:
            got = await measure(rpc, ws, args, kinds)
        wall = time.monotonic() - t0
        engine = json.loads((home / ENGINE_TIMES).read_text())
    print(
        f"{args.turns} timed turns of each kind, interleaved, after {args.warmup} untimed "
        f"({wall:.0f} s in all); scripted = one agent message of {args.deltas} deltas"
    )
    print(TABLE_HEADER)
    for name, trips in got["trips"].items():
        print(table_row(f"{name}: turn.start → ended", [took for _, took in trips]))
        print(table_row(f"{name}: engine", [engine[turn_id] for turn_id, _ in trips]))
        print(table_row(f"{name}: overhead", [took - engine[t] for t, took in trips]))
    if got["runs"]:
        print(table_row("/run true: sandboxed run", got["runs"]))
    print(table_row("engine.status round trip", got["floor"]))


if __name__ == "__main__":
    asyncio.run(main())
