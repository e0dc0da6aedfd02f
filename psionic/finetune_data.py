"""Fine-tuning data: OpenAI chat fine-tuning JSONL checked and tokenised for training.

Each line is ``{"messages": [{"role", "content"}, ...]}``; an assistant message may carry
``"weight": 0`` to be context only (1, the default, trains on it). A holdout line may add a
top-level ``"pass_if_contains": str`` for the evaluation's pass rate.

The loss covers the assistant replies only, found through the model's own chat template:
the conversation is rendered once whole, and each trained assistant reply's span is the text
between the render of the conversation before it (with the generation prompt, i.e. exactly
what the model sees at inference before it answers) and the render including it. Every token
of the whole render starting inside such a span is trained on, so the reply and its
end-of-turn token are learned, the role headers are not. Rendering and tokenising the whole
text once keeps the tokens identical to what inference sees.

Data errors never raise: a bad line is rejected with its line number and a reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import jinja2

from psionic.tokenizer import ChatTokenizer

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Example:
    """One accepted conversation: token ids, which of them carry loss, and for evaluation
    the prompt before the last assistant reply."""

    line: int
    tokens: list[int]
    mask: list[bool]
    prompt: list[int]
    pass_if_contains: str | None = None

    @property
    def assistant_tokens(self) -> int:
        return sum(self.mask)


@dataclass
class Receipt:
    """What validation found: counts, one reason per rejected line, the accepted examples."""

    lines: int = 0
    accepted: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0
    assistant_tokens: int = 0
    examples: list[Example] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The receipt as JSON; each example as its line number and token counts."""
        return {
            "lines": self.lines,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "tokens": self.tokens,
            "assistant_tokens": self.assistant_tokens,
            "examples": [
                {"line": e.line, "tokens": len(e.tokens), "assistant_tokens": e.assistant_tokens}
                for e in self.examples
            ],
        }


class _Reject(Exception):
    """A reason to reject one line (internal: validate_jsonl turns it into a receipt entry)."""


def _messages(record: Any) -> list[dict[str, Any]]:
    if not isinstance(record, dict):
        raise _Reject("a line must be a JSON object")
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Reject('no "messages" list')
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _Reject(f"message {i} is not an object")
        role = message.get("role")
        if role not in ROLES:
            raise _Reject(f"message {i}: role {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise _Reject(f"message {i}: content must be a string")
        if "weight" in message:
            if role != "assistant":
                raise _Reject(f"message {i}: weight is only allowed on assistant messages")
            if message["weight"] not in (0, 1) or isinstance(message["weight"], bool):
                raise _Reject(f"message {i}: weight must be 0 or 1")
    if not any(m["role"] == "assistant" for m in messages):
        raise _Reject("no assistant message")
    if "pass_if_contains" in record and not isinstance(record["pass_if_contains"], str):
        raise _Reject("pass_if_contains must be a string")
    return messages


def tokenize_conversation(
    messages: list[dict[str, Any]], tokenizer: ChatTokenizer
) -> tuple[list[int], list[bool], list[int]]:
    """(tokens, loss mask, prompt before the last assistant reply) of a valid conversation."""
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    whole = tokenizer.render_chat(plain, add_generation_prompt=False)
    spans: list[tuple[int, int]] = []
    last_prompt = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.render_chat(plain[:i], add_generation_prompt=True)
        upto = tokenizer.render_chat(plain[: i + 1], add_generation_prompt=False)
        if not (upto.startswith(before) and whole.startswith(upto)):
            raise _Reject("the model's chat template does not render this conversation in order")
        last_prompt = before
        if message.get("weight", 1) == 1:
            spans.append((len(before), len(upto)))
    if not spans:
        raise _Reject("no assistant message with weight 1")
    if all(not tokenizer.tokenizer.encode(m["content"]).ids for m in _trained(messages)):
        raise _Reject("the assistant replies tokenize to nothing")
    encoding = tokenizer.tokenizer.encode(whole, add_special_tokens=False)
    tokens: list[int] = list(encoding.ids)
    mask = [any(a <= start < b for a, b in spans) for start, _ in encoding.offsets]
    if tokenizer.add_bos and tokenizer.bos_id is not None:
        tokens, mask = [tokenizer.bos_id, *tokens], [False, *mask]
    return tokens, mask, tokenizer.encode(last_prompt)


def _trained(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["role"] == "assistant" and m.get("weight", 1) == 1]


def validate_jsonl(text: str, tokenizer: ChatTokenizer, max_seq_len: int) -> Receipt:
    """Check and tokenise every line of ``text``; blank lines are skipped, not counted."""
    receipt = Receipt()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        receipt.lines += 1
        try:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _Reject(f"invalid JSON: {exc.msg} at column {exc.colno}") from exc
            messages = _messages(record)
            try:
                tokens, mask, prompt = tokenize_conversation(messages, tokenizer)
            except jinja2.TemplateError as exc:
                raise _Reject(f"the model's chat template refused it: {exc}") from exc
            if len(tokens) > max_seq_len:
                raise _Reject(
                    f"example is {len(tokens)} tokens, longer than max_seq_len {max_seq_len}"
                )
            if not any(mask[1:]):
                raise _Reject("the assistant replies tokenize to nothing")
        except _Reject as reason:
            receipt.rejected.append({"line": number, "reason": str(reason)})
            continue
        example = Example(number, tokens, mask, prompt, record.get("pass_if_contains"))
        receipt.examples.append(example)
        receipt.accepted += 1
        receipt.tokens += len(tokens)
        receipt.assistant_tokens += example.assistant_tokens
    return receipt
