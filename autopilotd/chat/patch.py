"""Unified diffs: parsed strictly and applied exactly, or not at all (docs/chat.md).

A patch is one or more file sections (`--- a/PATH`, `+++ b/PATH`, then hunks `@@ -l,n +l,n @@`)
as `git diff` and `diff -u` write them; `/dev/null` on the old side creates the file, on the
new side deletes it. Applying a hunk needs every context and removed line to match the file
exactly at the line the hunk names: no fuzz, no offset. A patch that does not match changes
nothing, and says which hunk and line did not match.

Paths are only parsed here (a leading `a/` or `b/` dropped); confining them to the workspace
is the workspace module's work, where the file is read and written.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
NO_NEWLINE = "\\ No newline at end of file"


class PatchError(Exception):
    """The patch is malformed or does not match the file (the message says where)."""


@dataclass(frozen=True)
class Hunk:
    old_start: int
    old_count: int
    new_start: int
    new_count: int
    lines: tuple[str, ...]  # each with its prefix: " " context, "-" removed, "+" added
    old_eof_newline: bool = True  # False: the old side's last line had no newline
    new_eof_newline: bool = True


@dataclass(frozen=True)
class FilePatch:
    old_path: str | None  # None: the file is created
    new_path: str | None  # None: the file is deleted
    hunks: tuple[Hunk, ...]
    text: str  # this file's section of the patch, as given

    @property
    def path(self) -> str:
        path = self.new_path or self.old_path
        assert path is not None
        return path


def parse(text: str) -> list[FilePatch]:
    """The file sections of a unified diff; PatchError when it is not one."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    files: list[FilePatch] = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith("--- "):
            i += 1  # "diff --git", "index …" and other header lines
            continue
        start = i
        if i + 1 >= len(lines) or not lines[i + 1].startswith("+++ "):
            raise PatchError(f"line {i + 1}: '---' is not followed by a '+++' line")
        old, new = _path(lines[i][4:]), _path(lines[i + 1][4:])
        if old is None and new is None:
            raise PatchError(f"line {i + 1}: both sides are /dev/null")
        if old is not None and new is not None and old != new:
            raise PatchError(f"line {i + 1}: {old} and {new} differ (renames are not patched)")
        i += 2
        hunks: list[Hunk] = []
        while i < len(lines) and lines[i].startswith("@@"):
            hunk, i = _hunk(lines, i)
            hunks.append(hunk)
        if not hunks:
            raise PatchError(f"line {start + 1}: {old or new} has no hunk ('@@ -l,n +l,n @@')")
        files.append(FilePatch(old, new, tuple(hunks), "\n".join(lines[start:i]) + "\n"))
    if not files:
        raise PatchError("no file in the patch: it needs '--- a/PATH', '+++ b/PATH' and hunks")
    return files


def apply(patch: FilePatch, before: bytes | None) -> bytes | None:
    """The file's bytes after the patch (None: deleted), from its bytes before (None: it does
    not exist). PatchError, and nothing changed, when it does not match."""
    if patch.old_path is None and before is not None:
        raise PatchError(f"{patch.path} already exists: the patch creates it")
    if patch.old_path is not None and before is None:
        raise PatchError(f"no such file: {patch.old_path}")
    try:
        text = (before or b"").decode("utf-8")
    except UnicodeDecodeError:
        raise PatchError(f"{patch.path} is not UTF-8 text: it cannot be patched") from None
    old = text.split("\n")
    eof_newline = had_newline = text.endswith("\n") or text == ""
    if text.endswith("\n"):
        old.pop()
    elif text == "":
        old = []
    out: list[str] = []
    at = 0  # lines of `old` consumed
    for number, hunk in enumerate(patch.hunks, 1):
        start = hunk.old_start - 1 if hunk.old_count else hunk.old_start
        if start < at:
            raise PatchError(f"{patch.path}: hunk {number} overlaps the hunk before it")
        out += old[at:start]
        at = start
        for line in hunk.lines:
            sign, body = line[0], line[1:]
            if sign == "+":
                out.append(body)
                continue
            if at >= len(old) or old[at] != body:
                found = "the end of the file" if at >= len(old) else repr(old[at][:80])
                raise PatchError(
                    f"{patch.path}: hunk {number} does not match at line {at + 1}: "
                    f"expected {body[:80]!r}, found {found}"
                )
            if sign == " ":
                out.append(body)
            at += 1
        if not hunk.old_eof_newline and (at != len(old) or had_newline):
            raise PatchError(f"{patch.path}: hunk {number} expects no newline at the end")
        if at == len(old):
            if hunk.old_eof_newline and not had_newline:
                raise PatchError(f"{patch.path}: hunk {number} expects a newline at the end")
            eof_newline = hunk.new_eof_newline
    out += old[at:]
    if patch.new_path is None:
        if out:
            raise PatchError(f"{patch.path}: the patch deletes it but leaves lines in it")
        return None
    if not out:
        return b""
    return ("\n".join(out) + ("\n" if eof_newline else "")).encode()


def _path(header: str) -> str | None:
    name = header.split("\t", 1)[0].strip()
    if name == "/dev/null":
        return None
    if name.startswith(("a/", "b/")):
        name = name[2:]
    if not name:
        raise PatchError("a file header names no path")
    return name


def _hunk(lines: list[str], i: int) -> tuple[Hunk, int]:
    match = HUNK_RE.match(lines[i])
    if match is None:
        raise PatchError(f"line {i + 1}: not a hunk header: {lines[i][:80]!r}")
    old_start, new_start = int(match[1]), int(match[3])
    old_count = 1 if match[2] is None else int(match[2])
    new_count = 1 if match[4] is None else int(match[4])
    body: list[str] = []
    old_seen = new_seen = 0
    old_eof = new_eof = True
    i += 1
    while i < len(lines) and (old_seen < old_count or new_seen < new_count):
        line = lines[i]
        if line == "":
            line = " "  # an empty context line whose space was stripped
        if line[0] not in " +-":
            raise PatchError(f"line {i + 1}: not a context, '-' or '+' line: {line[:80]!r}")
        body.append(line)
        old_seen += line[0] != "+"
        new_seen += line[0] != "-"
        i += 1
        if i < len(lines) and lines[i] == NO_NEWLINE:
            old_eof = old_eof and line[0] == "+"
            new_eof = new_eof and line[0] == "-"
            i += 1
    if (old_seen, new_seen) != (old_count, new_count):
        raise PatchError(
            f"line {i}: the hunk says -{old_count} +{new_count} lines but has "
            f"-{old_seen} +{new_seen}"
        )
    return Hunk(old_start, old_count, new_start, new_count, tuple(body), old_eof, new_eof), i


def unified(path: str, before: bytes | None, after: bytes | None) -> str:
    """A unified diff of one file from `before` to `after` (None: absent), for showing a
    change and for reverting it."""

    def lines(data: bytes | None) -> list[str]:
        return [] if data is None else data.decode("utf-8", errors="replace").splitlines(True)

    old, new = lines(before), lines(after)
    diff = difflib.unified_diff(
        old,
        new,
        "/dev/null" if before is None else f"a/{path}",
        "/dev/null" if after is None else f"b/{path}",
    )
    out: list[str] = []
    for line in diff:
        if line.endswith("\n"):
            out.append(line)
        else:
            out.append(line + "\n" + NO_NEWLINE + "\n")
    return "".join(out)
