"""Which commands may run without asking (docs/chat.md, "Approvals").

A shell command is checked segment by segment: it is split into simple commands at `;`, `&&`,
`||`, `|`, `&` and newlines, each a list of words as the shell would split them. A command
whose segments cannot be known before it runs (command substitution, backticks, subshells,
process substitution, here-documents) is never matched by anything: it always asks.

A grant is an exact command prefix, as words: `["pytest", "-q"]` matches `pytest -q`,
`pytest -q tests/x.py`, never `pytest` alone or `pytest -x`. Answering "allow for this thread"
grants each segment of the approved command; "deny for this thread" denies them. A command
runs without asking only when every segment matches an allow grant (or is a read-only git
command) and none matches a deny grant: deny wins.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence

OPERATORS = frozenset({";", "&&", "||", "|", "&", "\n", ";;", "|&"})
UNKNOWABLE = ("$(", "`", "<(", ">(", "<<")
READ_ONLY = (  # run without asking, with the workspace read-only
    ("git", "status"),
    ("git", "diff"),
    ("git", "log"),
    ("git", "show"),
)

Words = tuple[str, ...]


def segments(command: str) -> list[Words] | None:
    """The command's simple commands as words, or None when they cannot be known before it
    runs (see the module docstring), or it does not parse (an open quote)."""
    if any(mark in command for mark in UNKNOWABLE):
        return None
    lexer = shlex.shlex(command.replace("\n", " ; "), posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        tokens = list(lexer)
    except ValueError:
        return None
    found: list[Words] = []
    current: list[str] = []
    for token in tokens:
        if token in ("(", ")") or token.startswith(("(", ")")):
            return None  # a subshell
        if token in OPERATORS or set(token) <= set(";&|"):
            if current:
                found.append(tuple(current))
            current = []
            continue
        current.append(token)
    if current:
        found.append(tuple(current))
    return found


def matches(words: Words, prefix: Words) -> bool:
    return len(prefix) > 0 and words[: len(prefix)] == prefix


def decide(command: str, grants: Sequence[tuple[str, str]]) -> str | None:
    """ "allow", "deny", or None (ask), for `command` under the thread's grants (effect,
    prefix as JSON words)."""
    parts = segments(command)
    if not parts:
        return None
    allow = [tuple(json.loads(p)) for e, p in grants if e == "allow"]
    deny = [tuple(json.loads(p)) for e, p in grants if e == "deny"]
    if any(matches(s, d) for s in parts for d in deny):
        return "deny"
    if all(any(matches(s, a) for a in allow) for s in parts):
        return "allow"
    return None


def read_only(command: str) -> bool:
    """Every segment is a read-only git command, with no redirection."""
    parts = segments(command)
    return bool(parts) and all(
        any(matches(s, r) for r in READ_ONLY) and not {">", ">>", "<", ">&"} & set(s)
        for s in parts or ()
    )


def prefixes(command: str) -> list[str]:
    """The grants "for this thread" records for `command`: each segment, as JSON words.
    Empty for a command that cannot be split (it cannot be granted)."""
    return [json.dumps(list(s)) for s in segments(command) or ()]
