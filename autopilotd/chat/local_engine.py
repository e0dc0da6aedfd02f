"""The local engine: a model on psionic that answers and calls the chat's actions as tools
(docs/chat.md).

A turn is a bounded loop: the conversation so far (the thread's earlier items, replayed as
messages) and the user's text go to the model with the tools below; its text streams into an
agent message; each tool call it makes runs through the same code as the command lane's
slash command (chat/actions.py), so it makes the same item and asks the same approval; the
result goes back to the model as a `tool` message, and the model goes on, for at most
`max_steps` steps, after which the turn says that it stopped there. psionic constrains a call
to the tools' schemas, so a call always parses; whether its arguments make sense is the
model's doing, which is why every action that changes something asks first.

A turn starting with `/` never reaches it: the router (chat/router.py) gives it to the command
lane, whose actions (`Actions`) this engine is handed too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from autopilotd.chat.actions import Actions
from autopilotd.ports.engine import Done, EngineStatus, PastItem, TurnContext
from autopilotd.ports.inference import InferenceError, ToolCall, ToolChat
from autopilotd.store.chat_records import ItemKind

logger = logging.getLogger(__name__)

CALL_TAG = "<tool_call>"  # how psionic's model writes a call (a cut one comes back as text)
RESULT_CHARS = 1500  # what of an action's result goes back to the model
HISTORY_RESULT_CHARS = 400  # the same, for the actions of earlier turns
SMALL_MODELS = ("smollm2-135m",)  # ids of models too small to be trusted with arguments
SYSTEM = (
    "You are Autopilot, an assistant working in the user's project folder. Use the tools to "
    "look at files and to act; the user approves every change and command first. Answer "
    "briefly."
)


def _function(name: str, description: str, required: Sequence[str], **props: Any) -> Any:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": props,
                "required": list(required),
                "additionalProperties": False,
            },
        },
    }


PATH = {"type": "string", "maxLength": 200, "description": "relative to the project folder"}
TOOLS = [
    _function("ls", "List the files (below a folder)", [], path=PATH),
    _function("read", "Show a file's text", ["path"], path=PATH),
    _function(
        "search",
        "Find the lines holding a text (below a folder)",
        ["text"],
        text={"type": "string", "maxLength": 200},
        path=PATH,
    ),
    _function(
        "run", "Run a shell command", ["command"], command={"type": "string", "maxLength": 1000}
    ),
    _function(
        "patch",
        "Change files with a unified diff",
        ["diff"],
        diff={"type": "string", "maxLength": 20000},
    ),
    _function("diff", "Show the changes made in this chat", []),
    _function(
        "revert",
        "Undo a file change",
        ["item"],
        item={"type": "string", "maxLength": 64, "description": "the change's item id"},
    ),
    _function(
        "buy",
        "Buy a text-generation job from the network",
        ["budget_sats", "prompt"],
        budget_sats={"type": "integer", "minimum": 1, "maximum": 100000},
        prompt={"type": "string", "maxLength": 2000},
    ),
]
_PAST_TOOL = {
    ItemKind.COMMAND_EXECUTION: "run",
    ItemKind.FILE_CHANGE: "patch",
    ItemKind.NETWORK_REQUEST: "buy",
}
_RESULTS = ("output", "entries", "matches", "error", "exit_code", "path", "result", "status")


class LocalEngine:
    """The `local` engine (see the module docstring)."""

    def __init__(
        self,
        chat: ToolChat,
        actions: Actions,
        *,
        max_steps: int = 8,
        max_tokens: int = 400,
        first_tool_choice: str = "auto",
        temperature: float = 0.0,
    ) -> None:
        self._chat = chat
        self._actions = actions
        self._max_steps = max_steps
        self._max_tokens = max_tokens
        self._first_choice = first_tool_choice
        self._temperature = temperature

    @property
    def name(self) -> str:
        return "local"

    def status(self) -> EngineStatus:
        state = self._chat.chat_model()
        model = state.model
        if not state.ready:
            reason = f"{state.reason}; slash commands (/ls, /read, …) work meanwhile"
        elif model is not None and any(small in model for small in SMALL_MODELS):
            reason = (
                f"a small local model ({model} on psionic): its answers and tool arguments may "
                "be poor; every action that changes something asks you first. Set chat_model "
                "to a bigger local model file for better ones"
            )
        else:
            reason = (
                f"{model} on psionic, with the workspace tools; every action that changes "
                "something asks you first"
            )
        return EngineStatus(self.name, True, state.ready, model, reason)

    async def run_turn(self, ctx: TurnContext, text: str) -> None:
        model = self._chat.chat_model()
        if not model.ready:
            item_id = await ctx.start_item(ItemKind.AGENT_MESSAGE, {"text": ""})
            await ctx.fail(item_id, f"the local model cannot answer now: {model.reason}")
            return
        messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
        messages += _replay(await ctx.history())
        messages.append({"role": "user", "content": text})
        for step in range(self._max_steps):
            choice = self._first_choice if step == 0 else "auto"
            calls = await self._step(ctx, messages, model.model, choice)
            if calls is None:
                return
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments},
                        }
                        for c in calls
                    ],
                }
            )
            for call in calls:
                result = await self._call(ctx, call)
                messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        item_id = await ctx.start_item(ItemKind.AGENT_MESSAGE, {"text": ""})
        await ctx.append(
            item_id,
            "text",
            f"I stopped after {self._max_steps} step{'s' if self._max_steps > 1 else ''}, "
            "the most one turn may take "
            "(chat_max_steps). Say how to go on, and I will take it from here.",
        )
        await ctx.complete(item_id)

    async def _step(
        self, ctx: TurnContext, messages: list[dict[str, Any]], model: str | None, choice: str
    ) -> list[ToolCall] | None:
        """One completion: its text streamed into an agent message; the calls it made, or
        None when it made none (the turn's answer is complete) or failed."""
        item_id: str | None = None
        calls: list[ToolCall] = []
        finish = "stop"
        cut: str | None = None
        try:
            async for chunk in self._chat.stream_chat(
                messages,
                model=model,
                tools=TOOLS,
                tool_choice=choice,
                max_tokens=self._max_tokens,
                temperature=self._temperature,
            ):
                if chunk.text.startswith(CALL_TAG) and item_id is None:
                    cut = chunk.text  # a call cut short: psionic sends it back as text
                elif chunk.text:
                    if item_id is None:
                        item_id = await ctx.start_item(ItemKind.AGENT_MESSAGE, {"text": ""})
                    await ctx.append(item_id, "text", chunk.text)
                calls += chunk.tool_calls
                finish = chunk.finish_reason or finish
        except InferenceError as exc:
            if item_id is None:
                item_id = await ctx.start_item(ItemKind.AGENT_MESSAGE, {"text": ""})
            await ctx.fail(item_id, f"the local model could not answer: {exc.reason}")
            return None
        if cut is not None:
            await self._cut(ctx, cut)
            return None
        if item_id is not None:
            if finish == "length":
                await ctx.append(item_id, "text", " […] (cut at chat_max_tokens)")
            await ctx.complete(item_id)
        if not calls:
            if item_id is None:  # nothing at all: say so rather than leave the turn empty
                item_id = await ctx.start_item(ItemKind.AGENT_MESSAGE, {"text": ""})
                await ctx.append(item_id, "text", "(the model gave no answer)")
                await ctx.complete(item_id)
            return None
        return calls

    async def _cut(self, ctx: TurnContext, text: str) -> None:
        """A call the token budget cut before it was complete: a failed `tool_call` item (it
        was never run), and the turn ends there."""
        body = {"tool": "?", "args": text[len(CALL_TAG) : len(CALL_TAG) + RESULT_CHARS]}
        item_id = await ctx.start_item(ItemKind.TOOL_CALL, body)
        await ctx.fail(
            item_id,
            f"the model's call was cut at chat_max_tokens ({self._max_tokens} tokens) before it "
            "was complete, so nothing was run",
        )

    async def _call(self, ctx: TurnContext, call: ToolCall) -> str:
        """Run one call as the action of the same name; its result as the model reads it."""
        try:
            args = json.loads(call.arguments or "{}")
        except json.JSONDecodeError:
            args = None
        if not isinstance(args, dict):
            return await self._refuse(ctx, call, "the arguments are not a JSON object")
        a = self._actions

        def text(name: str) -> str:
            return str(args.get(name) or "")

        done: Done | list[Done]
        if call.name in ("ls", "read", "search"):
            words = [text("text")] if call.name == "search" else []
            words += [text("path")] if args.get("path") else []
            done = await a.tool(ctx, call.name, words)
        elif call.name == "run":
            done = await a.run(ctx, text("command"))
        elif call.name == "patch":
            done = await a.patch(ctx, text("diff"))
        elif call.name == "diff":
            done = await a.diff(ctx)
        elif call.name == "revert":
            done = await a.revert(ctx, text("item"))
        elif call.name == "buy":
            done = await a.buy(ctx, f"{args.get('budget_sats')} {text('prompt')}")
        else:
            return await self._refuse(ctx, call, f"there is no tool {call.name!r}")
        return _result(done if isinstance(done, list) else [done], RESULT_CHARS)

    async def _refuse(self, ctx: TurnContext, call: ToolCall, reason: str) -> str:
        body = {"tool": call.name, "args": call.arguments[:RESULT_CHARS]}
        item_id = await ctx.start_item(ItemKind.TOOL_CALL, body)
        await ctx.fail(item_id, reason)
        return json.dumps({"error": reason})


def _result(done: Sequence[Done], limit: int) -> str:
    """Actions' results as JSON for the model: whether each worked and what it gave."""
    out = [{"ok": d.ok, **_shown(d.body, limit)} for d in done]
    return json.dumps(out[0] if len(out) == 1 else out)[: limit * 2]


def _shown(body: Mapping[str, Any], limit: int) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for key in _RESULTS:
        if key in body and body[key] is not None:
            value = body[key]
            text = value if isinstance(value, str) else json.dumps(value)
            shown[key] = text[:limit] + ("…" if len(text) > limit else "")
    return shown


def _replay(items: Sequence[PastItem]) -> list[dict[str, Any]]:
    """The thread's earlier items as chat messages: the user's and the agent's words as they
    were, each action as a call of its tool and a short result."""
    messages: list[dict[str, Any]] = []
    for n, item in enumerate(items):
        body = item.body
        if item.kind == ItemKind.USER_MESSAGE:
            messages.append({"role": "user", "content": str(body.get("text", ""))})
        elif item.kind == ItemKind.AGENT_MESSAGE:
            if body.get("text"):
                messages.append({"role": "assistant", "content": str(body["text"])})
        elif item.kind in (ItemKind.TOOL_CALL, *_PAST_TOOL):
            tool = str(body.get("tool") or _PAST_TOOL.get(ItemKind(item.kind), item.kind))
            keys = ("path", "text", "command", "prompt", "budget_sats", "revert_of")
            arguments = {k: body[k] for k in keys if body.get(k) is not None}
            call_id = f"call_past_{n}"
            call = {"name": tool, "arguments": json.dumps(arguments)}
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": call_id, "type": "function", "function": call}],
                }
            )
            ok = item.status == "completed"
            result = json.dumps({"ok": ok, **_shown(body, HISTORY_RESULT_CHARS)})
            messages.append({"role": "tool", "tool_call_id": call_id, "content": result})
    return messages
