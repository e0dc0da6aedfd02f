"""The daemon's own check of an uploaded fine-tuning file (no tokenizer: that is psionic's
check, when a job names its base model).

One chat example per line: `{"messages": [{"role": "system"|"user"|"assistant", "content":
str}, ...]}` with at least one assistant message; a holdout line may add a top-level
`"pass_if_contains": str`. Blank lines are skipped. Every refused line is named with why.
"""

from __future__ import annotations

import json

from autopilotd.ports.finetune import Receipt, Rejection

ROLES = ("system", "user", "assistant")


def check_line(line: str) -> str | None:
    """Why this line is not a chat example, or None when it is one."""
    try:
        example = json.loads(line)
    except ValueError:
        return "not valid JSON"
    if not isinstance(example, dict):
        return "not a JSON object"
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        return 'no "messages" list'
    for n, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            return f"message {n} is not an object"
        if message.get("role") not in ROLES:
            return f"message {n} has role {message.get('role')!r}, not one of {', '.join(ROLES)}"
        if not isinstance(message.get("content"), str):
            return f"message {n} has no text content"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant message"
    check = example.get("pass_if_contains")
    if check is not None and not isinstance(check, str):
        return '"pass_if_contains" is not a string'
    return None


def check_jsonl(text: str) -> Receipt:
    lines = 0
    rejected: list[Rejection] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        lines += 1
        reason = check_line(line)
        if reason is not None:
            rejected.append(Rejection(n, reason))
    return Receipt(lines=lines, accepted=lines - len(rejected), rejected=tuple(rejected))


def summary(receipt: Receipt, most: int = 5) -> str:
    """The refused lines in words (the first `most` of them)."""
    shown = "; ".join(f"line {r.line}: {r.reason}" for r in receipt.rejected[:most])
    more = len(receipt.rejected) - most
    return shown + (f"; and {more} more" if more > 0 else "")
