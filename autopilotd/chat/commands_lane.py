"""The command lane: the engine that needs no model (docs/chat.md).

Each line of a turn's input that starts with `/` is a command, run in order, each one a
`tool_call` item in the thread's workspace:

    /ls [PATH]            the regular files of the workspace (below PATH), with their sizes
    /read PATH            a file's text (its first 64 KiB) and the sha256 of all of it
    /search TEXT [PATH]   the lines holding TEXT (plain, case-sensitive), at most 200
    /run COMMAND          the rest of the line, run by /bin/sh in the sandbox, after approval
    /patch                the rest of the message is a unified diff: each file changed after
                          an approval, keeping what it replaced
    /diff                 the thread's file changes in effect, as one diff
    /revert ITEM          undo the file change of item ITEM, after an approval
    /buy SATS PROMPT      buy a text-generation job from the network for at most SATS,
                          after the owner's approval, within the thread's spend ceiling

Arguments are split like a shell's words, so one with spaces is quoted (`/search "a b" src`);
`/run` takes its line as the shell will read it.
Any other text, and an unknown command, is answered by one agent message saying plainly that
no model engine is set up yet, with the list of commands.

Each command is an action of chat/actions.py, the same code a model engine's tool calls run,
so both make the same items and approvals; what it may read, and how a refusal shows, is
said there.
"""

from __future__ import annotations

from autopilotd.chat.actions import USAGE, Actions
from autopilotd.ports.engine import EngineStatus, TurnContext, WorkspaceFiles
from autopilotd.store.chat_records import ItemKind

HELP = (
    "/ls [PATH]: list the files of the workspace (below PATH) with their sizes\n"
    "/read PATH: show a file (its first 64 KiB) and its sha256\n"
    "/search TEXT [PATH]: find the lines holding TEXT (case-sensitive, at most 200)\n"
    "/run COMMAND: run a shell command in the sandbox, in the workspace (asks first)\n"
    "/patch: apply the unified diff on the lines after it (asks first, file by file)\n"
    "/diff: the changes this thread made that are in effect\n"
    "/revert ITEM: undo the file change of item ITEM (asks first)\n"
    "/buy SATS PROMPT: buy a text-generation job from the network for at most SATS (asks "
    "the owner first)"
)
NO_MODEL = (
    "No model engine is set up yet, so I cannot answer in words. I can run these commands "
    "in this thread's workspace, one per line (quote an argument that has spaces):\n" + HELP
)


class CommandLane:
    """The `commands` engine (see the module docstring)."""

    def __init__(self, files: WorkspaceFiles) -> None:
        self.actions = Actions(files)

    @property
    def name(self) -> str:
        return "commands"

    def status(self) -> EngineStatus:
        return EngineStatus(
            name=self.name,
            installed=True,
            ready=True,
            model=None,
            reason="the command lane needs no model: /ls, /read, /search, /run, /patch, /diff "
            "and /revert in the thread's workspace, each action after your approval; no model "
            "engine is set up yet",
        )

    async def run_turn(self, ctx: TurnContext, text: str) -> None:
        raw = text.splitlines()
        lines: list[str] = []
        unknown: list[str] = []
        for number, whole in enumerate(raw):
            line = whole.strip()
            if not line:
                continue
            lines.append(line)
            if not line.startswith("/"):
                continue
            word, *rest = line.split(None, 1)
            if word == "/patch":
                await self.actions.patch(ctx, "\n".join(raw[number + 1 :]) + "\n")
                break
            if word == "/run":
                await self.actions.run(ctx, rest[0] if rest else "")
            elif word == "/diff":
                await self.actions.diff(ctx)
            elif word == "/revert":
                await self.actions.revert(ctx, rest[0].strip() if rest else "")
            elif word == "/buy":
                await self.actions.buy(ctx, rest[0] if rest else "")
            elif word[1:] in USAGE:
                await self.actions.tool_line(ctx, word[1:], rest[0] if rest else "")
            else:
                unknown.append(word)
        if unknown or not all(line.startswith("/") for line in lines):
            said = "".join(f"{w} is not a command here. " for w in unknown)
            item_id = await ctx.start_item(ItemKind.AGENT_MESSAGE, {"text": ""})
            await ctx.append(item_id, "text", said + NO_MODEL)
            await ctx.complete(item_id)
