"""Tool calling on the OpenAI wire: `tools`, `tool_choice`, and `tool_calls` out.

The tools are rendered into the system message (their names, descriptions and JSON
schemas) with one way to call them: answer `<tool_call>` then `{"name": ..., "arguments":
{...}}`. When a call may be made, decoding is constrained by a grammar built from the schemas
(psionic/grammar.py): with `tool_choice` "required" or a named function the answer is a call;
with "auto" it is a call or plain text (text cannot start with `<`); with "none" the tools are
not shown and nothing is constrained. So a call always parses and its arguments always
validate against the schema; what they say is the model's.

Earlier calls and their results go back into the prompt in the same form: an assistant
message's `tool_calls` as `<tool_call>` lines, a `tool` message as a user turn in
`<tool_response>`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psionic.errors import invalid, unsupported
from psionic.grammar import TOOL_CALL_TAG, GrammarError, check, tool_grammar

MAX_TOOLS = 64


@dataclass(frozen=True)
class ToolRequest:
    """The tools of one request, checked: `grammar` is None when nothing is constrained."""

    tools: tuple[dict[str, Any], ...]  # {"name", "description", "parameters"}
    choice: str  # auto | none | required | function
    grammar: str | None

    @property
    def shown(self) -> tuple[dict[str, Any], ...]:
        return () if self.choice == "none" else self.tools


def parse_tools(body: dict[str, Any], *, constrained: bool = True) -> ToolRequest | None:
    """The request's `tools` and `tool_choice`, or None without tools; an OpenAI-style 400
    for a malformed tool, an unknown tool_choice, or a schema the grammar cannot take."""
    raw = body.get("tools")
    if raw is None:
        if body.get("tool_choice") not in (None, "none", "auto"):
            raise invalid("tool_choice", "'tool_choice' needs 'tools'.")
        return None
    if not isinstance(raw, list) or not raw or len(raw) > MAX_TOOLS:
        raise invalid("tools", f"'tools' must be an array of 1..{MAX_TOOLS} tools.")
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(raw):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise unsupported(f"tools[{i}].type", "Only function tools are supported.")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise invalid(f"tools[{i}].function", "A tool needs a function with a name.")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise invalid(f"tools[{i}].function.parameters", "Parameters must be a schema.")
        tools.append(
            {
                "name": function["name"],
                "description": str(function.get("description", "")),
                "parameters": parameters,
            }
        )
    names = [t["name"] for t in tools]
    if len(set(names)) != len(names):
        raise invalid("tools", "Tool names must be unique.")
    choice, chosen = _choice(body.get("tool_choice", "auto"), names)
    grammar = None
    if choice != "none" and constrained:
        allowed = [t for t in tools if chosen is None or t["name"] == chosen]
        grammar = tool_grammar(allowed, required=choice != "auto")
        try:
            check(grammar)
        except GrammarError as exc:
            raise invalid(
                "tools", f"A tool's parameters cannot be used as a grammar: {exc}"
            ) from exc
    return ToolRequest(tuple(tools), choice, grammar)


def _choice(value: Any, names: list[str]) -> tuple[str, str | None]:
    if value in ("auto", "none", "required"):
        return str(value), None
    function = value.get("function") if isinstance(value, dict) else None
    if not isinstance(value, dict) or value.get("type") != "function" or not function:
        raise invalid(
            "tool_choice",
            "'tool_choice' must be 'auto', 'none', 'required' or "
            '{"type": "function", "function": {"name": ...}}.',
        )
    name = function.get("name") if isinstance(function, dict) else None
    if name not in names:
        raise invalid("tool_choice", f"'tool_choice' names {name!r}, which is not in 'tools'.")
    return "function", str(name)


def message(i: int, raw: dict[str, Any]) -> dict[str, str] | None:
    """A tool-related message as the chat template takes it, or None for another message:
    an assistant message with `tool_calls`, or a `tool` message."""
    role = raw.get("role")
    if role == "assistant" and raw.get("tool_calls"):
        calls = raw["tool_calls"]
        if not isinstance(calls, list):
            raise invalid(f"messages[{i}].tool_calls", "'tool_calls' must be an array.")
        lines = [str(raw.get("content") or "")] if raw.get("content") else []
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict):
                raise invalid(f"messages[{i}].tool_calls", "Each call needs a function.")
            try:
                arguments = json.loads(function.get("arguments") or "{}")
            except (TypeError, json.JSONDecodeError):
                arguments = function.get("arguments")
            call_json = json.dumps({"name": function.get("name"), "arguments": arguments})
            lines.append(f"{TOOL_CALL_TAG}{call_json}</tool_call>")
        return {"role": "assistant", "content": "\n".join(lines)}
    if role == "tool":
        content = raw.get("content")
        if not isinstance(content, str):
            raise invalid(f"messages[{i}].content", "A tool message's content must be text.")
        return {"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"}
    return None


def render_tools(messages: list[dict[str, str]], tools: Sequence[dict[str, Any]]) -> None:
    """Put the tools and how to call them into the system message (made when missing)."""
    if not tools:
        return
    listed = "\n".join(json.dumps(tool) for tool in tools)
    text = (
        "You can call these tools (JSON schemas of their arguments):\n"
        f"<tools>\n{listed}\n</tools>\n"
        f'To call one, answer only {TOOL_CALL_TAG}{{"name": "TOOL", "arguments": {{...}}}}. '
        "A tool's result comes back in <tool_response>. Otherwise answer in words."
    )
    if messages and messages[0]["role"] == "system":
        messages[0] = {"role": "system", "content": messages[0]["content"] + "\n\n" + text}
    else:
        messages.insert(0, {"role": "system", "content": text})


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object, as text

    def wire(self, index: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }
        return out if index is None else {"index": index, **out}


def parse_call(text: str) -> ToolCall | None:
    """The call in a completion's text (`<tool_call>{...}`), or None when it holds none that
    parses as an object with a string name and object arguments."""
    body = text.strip()
    if not body.startswith(TOOL_CALL_TAG):
        return None
    body = body[len(TOOL_CALL_TAG) :].removesuffix("</tool_call>").strip()
    try:
        data, _ = json.JSONDecoder().raw_decode(body)
    except json.JSONDecodeError:
        return None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("name"), str)
        or not isinstance(data.get("arguments", {}), dict)
    ):
        return None
    arguments = json.dumps(data.get("arguments", {}))
    return ToolCall(f"call_{uuid.uuid4().hex[:24]}", data["name"], arguments)


class Splitter:
    """Streams a completion that may be a tool call: text goes out as soon as it cannot be
    the start of a call; a call is held until the end."""

    def __init__(self) -> None:
        self.text = ""
        self._sent = 0
        self._text_mode = False

    def push(self, delta: str) -> str:
        """What of the text so far can be streamed as content now."""
        self.text += delta
        if not self._text_mode:
            head = self.text.lstrip()
            if not head or TOOL_CALL_TAG.startswith(head[: len(TOOL_CALL_TAG)]):
                return ""
            self._text_mode = True
        out = self.text[self._sent :]
        self._sent = len(self.text)
        return out

    def finish(self) -> tuple[str, ToolCall | None]:
        """The content still to send, and the call when the completion is one."""
        call = None if self._text_mode else parse_call(self.text)
        if call is not None:
            return "", call
        out = self.text[self._sent :]
        self._sent = len(self.text)
        return out, None
