"""Constrained decoding: the one module that uses the grammar library (llguidance).

A grammar is compiled from the tools' JSON schemas (`tool_grammar`) and checked before any
work is queued (`check`); a `Constraint` then masks the logits of each decode step to the
tokens the grammar allows and consumes the token picked, so what comes out always parses.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import llguidance
import numpy as np
import torch
from torch import Tensor

from psionic.tokenizer import ChatTokenizer

TOOL_CALL_TAG = "<tool_call>"


class GrammarError(ValueError):
    """A grammar the library refuses (e.g. a JSON schema feature it does not implement)."""


# A bound for integers a schema leaves unbounded (JavaScript's safe range): without one, a
# small model that starts a number may add digits until its token budget runs out.
INTEGER_BOUND = 2**53 - 1
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")


def bounded(schema: Any) -> Any:
    """`schema` with every integer it allows given at most INTEGER_BOUND in magnitude, where it
    sets no bound of its own; a copy, the rest unchanged."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    types = out.get("type")
    if types == "integer" or (isinstance(types, list) and "integer" in types):
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = INTEGER_BOUND
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -INTEGER_BOUND
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [bounded(s) for s in out[key]]
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: bounded(s) for name, s in out[key].items()}
    for key in ("items", "additionalProperties", "not", "if", "then", "else"):
        if isinstance(out.get(key), dict):
            out[key] = bounded(out[key])
    return out


def call_schema(tools: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The JSON schema of one call of any of `tools` (OpenAI function tools, already checked):
    `{"name": NAME, "arguments": {...valid per the tool's parameters...}}`, compact, with
    integers bounded (`bounded`)."""
    default: dict[str, Any] = {"type": "object", "properties": {}}
    choices = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool["name"]},
                "arguments": bounded(tool.get("parameters") or default),
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    schema: dict[str, Any] = choices[0] if len(choices) == 1 else {"anyOf": choices}
    # No free whitespace: a small model would otherwise pad a call until its budget ran out.
    return {**schema, "x-guidance": {"whitespace_flexible": False}}


def tool_grammar(tools: Sequence[dict[str, Any]], *, required: bool) -> str:
    """A Lark grammar: the tool-call tag then one call; unless `required`, plain text (not
    starting with `<`) instead."""
    call = f'"{TOOL_CALL_TAG}" call\ncall: %json {json.dumps(call_schema(tools))}'
    if required:
        return f"start: {call}\n"
    return f"start: TEXT | {call}\nTEXT: /[^<](.|\\n)*/\n"


def check(grammar: str) -> None:
    """GrammarError with the library's message when `grammar` cannot be compiled."""
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise GrammarError(messages[0].splitlines()[0] if messages else "not a valid grammar")


class GrammarTokenizer:
    """The library's view of a model's tokenizer (built once per model: about a second)."""

    def __init__(self, tokenizer: ChatTokenizer, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self._tokenizer = llguidance.LLTokenizer(
            tokenizer.tokenizer.to_str(),
            n_vocab=vocab_size,
            eos_token=sorted(tokenizer.stop_ids, reverse=True),  # <|im_end|> before eos
        )

    def constraint(self, grammar: str) -> Constraint:
        return Constraint(llguidance.LLMatcher(self._tokenizer, grammar), self.vocab_size)


class Constraint:
    """One generation under a grammar; not thread-safe (the worker thread owns it)."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        if matcher.is_error():
            raise GrammarError(matcher.get_error())
        self._matcher = matcher
        self._vocab_size = vocab_size

    def wrap(self, pick: Callable[[Tensor], int]) -> Callable[[Tensor], int]:
        """A token picker that only picks what the grammar allows, and tells it the pick."""

        def constrained(logits: Tensor) -> int:
            bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
            allowed = np.unpackbits(bits, bitorder="little")[: self._vocab_size].astype(bool)
            mask = torch.zeros(logits.shape[-1], dtype=torch.bool)
            mask[: allowed.shape[0]] = torch.from_numpy(allowed)
            token = pick(logits.masked_fill(~mask.to(logits.device), float("-inf")))
            if not self._matcher.consume_token(token):
                raise RuntimeError(
                    f"the grammar refused token {token}: {self._matcher.get_error()}"
                )
            return token

        return constrained
