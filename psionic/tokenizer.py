"""Tokenisation for the decoder: a ``tokenizers`` BPE built from GGUF metadata or a
tokenizer.json, the model's chat template, and incremental detokenisation for streaming."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jinja2
import jinja2.sandbox
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

# llama.cpp token types that are control or user-defined tokens (never split by BPE).
_SPECIAL_TOKEN_TYPES = {3, 4}


class UnsupportedTokenizer(ValueError):
    """The GGUF declares a tokenizer model or pre-tokenizer this module does not build."""


def tokenizer_from_gguf(meta: dict[str, Any]) -> Tokenizer:
    """Build a byte-level BPE tokenizer from ``tokenizer.ggml.*`` metadata.

    Supports the ``gpt2`` tokenizer model with the ``gpt2``/``default`` and ``smollm``
    pre-tokenizers (``smollm`` splits every digit, then applies the GPT-2 regex).
    """
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise UnsupportedTokenizer(f"tokenizer model {kind!r} is not supported")
    pre = meta.get("tokenizer.ggml.pre", "default")
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    elif pre in ("gpt2", "default"):
        tok.pre_tokenizer = byte_level
    else:
        raise UnsupportedTokenizer(f"pre-tokenizer {pre!r} is not supported")
    tok.decoder = decoders.ByteLevel()
    types: list[int] = list(meta.get("tokenizer.ggml.token_type", []))
    special = [
        AddedToken(tokens[i], special=True, normalized=False)
        for i, t in enumerate(types)
        if t in _SPECIAL_TOKEN_TYPES
    ]
    tok.add_special_tokens(special)
    return tok


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


@dataclass
class ChatTokenizer:
    """A tokenizer plus what chat needs: the template, BOS, and the ids that end a turn."""

    tokenizer: Tokenizer
    chat_template: str
    bos_id: int | None
    stop_ids: frozenset[int]
    add_bos: bool = False
    _template: jinja2.Template | None = field(default=None, init=False, repr=False)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special tokens written in the text are recognised."""
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=False).ids
        if self.add_bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def render_chat(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """Apply the model's chat template, by default ending with the assistant generation
        prompt (training renders whole conversations without it)."""
        if self._template is None:
            env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise_exception
            self._template = env.from_string(self.chat_template)
        bos = self.tokenizer.id_to_token(self.bos_id) if self.bos_id is not None else ""
        return self._template.render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, bos_token=bos
        )


class StreamDecoder:
    """Turns a growing list of token ids into text deltas, never splitting a UTF-8 char.

    Decodes a short window around the newest tokens rather than the whole sequence, and
    holds back text while the newest bytes form an incomplete character.
    """

    def __init__(self, tokenizer: ChatTokenizer) -> None:
        self._tok = tokenizer
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix_text = self._tok.decode(self._ids[self._prefix : self._read])
        new_text = self._tok.decode(self._ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self._prefix = self._read
            self._read = len(self._ids)
            return delta
        return ""
