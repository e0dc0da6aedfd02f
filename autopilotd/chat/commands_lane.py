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

Every read goes through `WorkspaceFiles` (sandbox/workspace.py), rooted at the workspace, in a
worker thread: a path with `..`, an absolute path, a symlink anywhere on the way, anything but
a regular file is refused, and the refusal is the item's `error` (the item `failed`), never an
exception out of the turn. `/ls` and `/search` see the files `scan` lists (symlinks and
special files skipped, at most `SCAN_MAX_FILES`).
"""

from __future__ import annotations

import asyncio
import hashlib
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from autopilotd.chat import approvals, patch
from autopilotd.errors import AutopilotError
from autopilotd.ports.engine import (
    Approval,
    EngineStatus,
    FileEntry,
    TurnContext,
    WorkspaceFiles,
)
from autopilotd.ports.sandbox import Outcome, SandboxUnavailable
from autopilotd.store.chat_records import ItemKind

READ_SHOWN_BYTES = 64 << 10  # what a /read item holds of a file's text
READ_MAX_BYTES = 8 << 20  # a bigger file is refused (its digest means reading all of it)
LS_MAX_ENTRIES = 1000
SCAN_MAX_FILES = 10_000
SEARCH_MAX_MATCHES = 200
SEARCH_MAX_FILE_BYTES = 1 << 20  # bigger files are skipped, and counted
SEARCH_LINE_CHARS = 400  # a matching line is shown up to this many characters
FILE_MAX_BYTES = 8 << 20  # a file /patch changes
USAGE = {
    "ls": "/ls [PATH]",
    "read": "/read PATH",
    "search": "/search TEXT [PATH]",
    "run": "/run COMMAND",
    "patch": "/patch, then the diff on the lines after it",
    "diff": "/diff",
    "revert": "/revert ITEM",
    "buy": "/buy SATS PROMPT",
}
BUY_TIMEOUT_S = 120.0
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


class UsageError(Exception):
    """A command given the wrong arguments (the message is its usage)."""


class CommandLane:
    """The `commands` engine (see the module docstring)."""

    def __init__(self, files: WorkspaceFiles) -> None:
        self._files = files

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
                await self._patch(ctx, "\n".join(raw[number + 1 :]) + "\n")
                break
            if word == "/run":
                await self._run(ctx, rest[0] if rest else "")
            elif word == "/diff":
                await self._diff(ctx)
            elif word == "/revert":
                await self._revert(ctx, rest[0].strip() if rest else "")
            elif word == "/buy":
                await self._buy(ctx, rest[0] if rest else "")
            elif word[1:] in USAGE:
                await self._tool(ctx, word[1:], rest[0] if rest else "")
            else:
                unknown.append(word)
        if unknown or not all(line.startswith("/") for line in lines):
            said = "".join(f"{w} is not a command here. " for w in unknown)
            item_id = await ctx.start_item(ItemKind.AGENT_MESSAGE, {"text": ""})
            await ctx.append(item_id, "text", said + NO_MODEL)
            await ctx.complete(item_id)

    async def _tool(self, ctx: TurnContext, tool: str, rest: str) -> None:
        body: dict[str, Any] = {"tool": tool}
        try:
            args = shlex.split(rest)
            work, arguments = self._prepare(ctx.workspace, tool, args)
            body.update(arguments)
        except (ValueError, UsageError) as exc:
            item_id = await ctx.start_item(ItemKind.TOOL_CALL, {**body, "args": rest})
            reason = str(exc) if isinstance(exc, UsageError) else f"cannot split the line: {exc}"
            await ctx.fail(item_id, reason)
            return
        item_id = await ctx.start_item(ItemKind.TOOL_CALL, body)
        try:
            result = await asyncio.to_thread(work)
        except self._files.WorkspaceError as exc:
            await ctx.fail(item_id, str(exc))
        except OSError as exc:  # permissions, an I/O error: said, not raised
            await ctx.fail(item_id, f"cannot read it: {exc.strerror or 'I/O error'}")
        else:
            await ctx.complete(item_id, {**body, **result})

    # -- actions: each asks first --------------------------------------------------------------

    async def _run(self, ctx: TurnContext, command: str) -> None:
        command = command.strip()
        read_only = approvals.read_only(command)
        body: dict[str, Any] = {
            "command": command,
            "cwd": ".",
            "read_only": read_only,
            "output": "",
        }
        item_id = await ctx.start_item(ItemKind.COMMAND_EXECUTION, body)
        if not command:
            await ctx.fail(item_id, f"usage: {USAGE['run']}")
            return
        if not read_only:
            approval = await ctx.request_approval(item_id, "command", command)
            if not approval.approved:
                await ctx.fail(item_id, _not_done("not run", approval))
                return
        try:
            run = await ctx.run_command(item_id, command, read_only=read_only)
        except SandboxUnavailable as exc:
            await ctx.fail(item_id, f"not run: {exc}")
            return
        result = run.result
        done = {
            **body,
            "outcome": result.outcome.value,
            "exit_code": result.exit_code,
            "duration_s": result.wall_s,
            "output": run.output,
            "truncated": run.truncated,
        }
        if result.outcome is Outcome.SUCCEEDED:
            await ctx.complete(item_id, done)
        elif result.outcome is Outcome.TIMED_OUT:
            await ctx.fail(item_id, f"timed out after {result.wall_s:g} s: killed", done)
        else:
            await ctx.fail(item_id, f"exited with code {result.exit_code}", done)

    async def _patch(self, ctx: TurnContext, diff: str) -> None:
        try:
            files = patch.parse(diff)
        except patch.PatchError as exc:
            item_id = await ctx.start_item(ItemKind.FILE_CHANGE, {"diff": diff[:READ_SHOWN_BYTES]})
            await ctx.fail(item_id, f"not a patch: {exc}")
            return
        for file in files:
            await self._change(ctx, file)

    async def _change(self, ctx: TurnContext, file: patch.FilePatch) -> None:
        body: dict[str, Any] = {"path": file.path, "diff": file.text}
        try:
            before = await asyncio.to_thread(self._current, ctx.workspace, file.path)
            after = patch.apply(file, before)
        except (self._files.WorkspaceError, patch.PatchError) as exc:
            await ctx.fail(await ctx.start_item(ItemKind.FILE_CHANGE, body), f"not changed: {exc}")
            return
        body["before_sha256"] = _digest(before)
        item_id = await ctx.start_item(ItemKind.FILE_CHANGE, body)
        approval = await ctx.request_approval(item_id, "file_change")
        if not approval.approved:
            await ctx.fail(item_id, _not_done("not changed", approval), body)
            return
        try:
            await ctx.change_file(item_id, file.path, before, after)
        except (self._files.WorkspaceError, AutopilotError, OSError) as exc:
            await ctx.fail(item_id, f"not changed: {exc}", body)
            return
        await ctx.complete(item_id, {**body, "after_sha256": _digest(after)})

    async def _diff(self, ctx: TurnContext) -> None:
        item_id = await ctx.start_item(ItemKind.TOOL_CALL, {"tool": "diff"})
        first: dict[str, bytes | None] = {}
        for change in await ctx.changes():
            first.setdefault(change.path, change.before)
        parts = []
        for path, before in first.items():
            try:
                now = await asyncio.to_thread(self._current, ctx.workspace, path)
            except (self._files.WorkspaceError, OSError) as exc:
                parts.append(f"# {path}: cannot read it now: {exc}\n")
                continue
            parts.append(patch.unified(path, before, now))
        output = "".join(parts)
        await ctx.complete(
            item_id, {"tool": "diff", "files": list(first), "output": output or "(no changes)"}
        )

    async def _revert(self, ctx: TurnContext, target: str) -> None:
        body: dict[str, Any] = {"tool": "revert", "revert_of": target}
        item_id = await ctx.start_item(ItemKind.TOOL_CALL, body)
        if not target or " " in target:
            await ctx.fail(item_id, f"usage: {USAGE['revert']}")
            return
        approval = await ctx.request_approval(item_id, "file_change")
        if not approval.approved:
            await ctx.fail(item_id, _not_done("not reverted", approval))
            return
        try:
            change = await ctx.revert(target, by=item_id)
        except (AutopilotError, self._files.WorkspaceError, OSError) as exc:
            await ctx.fail(item_id, f"not reverted: {exc}")
            return
        await ctx.complete(item_id, {**body, "path": change.path})

    async def _buy(self, ctx: TurnContext, rest: str) -> None:
        amount, _, prompt = rest.strip().partition(" ")
        budget = int(amount) if amount.isdigit() else 0
        body: dict[str, Any] = {"prompt": prompt.strip(), "budget_sats": budget}
        item_id = await ctx.start_item(ItemKind.NETWORK_REQUEST, body)
        if budget <= 0 or not prompt.strip():
            await ctx.fail(item_id, f"usage: {USAGE['buy']} (SATS a whole number above 0)")
            return
        left = await ctx.spend_left()
        if budget > left:
            await ctx.fail(
                item_id,
                f"not bought: {budget} sats is over what this thread may still approve "
                f"({left} sats of its spend ceiling left)",
            )
            return
        approval = await ctx.request_approval(item_id, "spend")
        if not approval.approved:
            await ctx.fail(item_id, _not_done("not bought", approval))
            return
        try:
            request = await ctx.buy(item_id, prompt.strip(), budget, BUY_TIMEOUT_S)
        except AutopilotError as exc:
            await ctx.fail(item_id, f"not bought: {exc.message}")
            return
        done = {
            **body,
            "request_id": request.request_id,
            "status": request.status.value,
            "provider": request.provider,
            "payment_hash": request.payment_hash,
            "result": request.result,
        }
        if request.status.value == "done":
            await ctx.complete(item_id, done)
        else:
            await ctx.fail(item_id, f"not bought: {request.reason or request.status.value}", done)

    def _current(self, root: Path, path: str) -> bytes | None:
        """A file's bytes, or None when there is none (in a worker thread)."""
        self._files.clean_path(path)
        try:
            return self._files.read_file(root, path, FILE_MAX_BYTES)
        except self._files.WorkspaceError as exc:
            if str(exc).startswith("no such file"):
                return None
            raise

    def _prepare(
        self, root: Path, tool: str, args: list[str]
    ) -> tuple[Callable[[], dict[str, Any]], dict[str, Any]]:
        """The work of one command (run in a thread) and its arguments as the item shows them;
        UsageError for a wrong number of arguments."""
        if tool == "ls" and len(args) <= 1:
            path = args[0] if args and args[0] not in (".", "./") else None
            return (lambda: self._ls(root, path)), {"path": path}
        if tool == "read" and len(args) == 1:
            return (lambda: self._read(root, args[0])), {"path": args[0]}
        if tool == "search" and len(args) in (1, 2) and args[0]:
            text, path = args[0], args[1] if len(args) == 2 else None
            return (lambda: self._search(root, text, path)), {"text": text, "path": path}
        raise UsageError(f"usage: {USAGE[tool]} (quote an argument that has spaces)")

    # -- in a worker thread --------------------------------------------------------------------

    def _read(self, root: Path, path: str) -> dict[str, Any]:
        data = self._files.read_file(root, path, READ_MAX_BYTES)
        shown = data[:READ_SHOWN_BYTES]
        return {
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "output": shown.decode("utf-8", errors="replace"),
            "truncated": len(data) > len(shown),
        }

    def _ls(self, root: Path, path: str | None) -> dict[str, Any]:
        files, capped = self._below(root, path)
        if path is not None and not files:
            raise self._files.WorkspaceError(f"no regular file at or below {path}")
        return {
            "entries": [{"path": f.path, "size": f.size} for f in files[:LS_MAX_ENTRIES]],
            "truncated": capped or len(files) > LS_MAX_ENTRIES,
        }

    def _search(self, root: Path, text: str, path: str | None) -> dict[str, Any]:
        files, capped = self._below(root, path)
        matches: list[dict[str, Any]] = []
        searched = skipped = 0
        for entry in files:
            data = self._readable(root, entry)
            if data is None:
                skipped += 1
                continue
            searched += 1
            for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines()):
                if text not in line:
                    continue
                if len(matches) == SEARCH_MAX_MATCHES:  # a match past the cap: say so, stop
                    capped = True
                    break
                matches.append(
                    {"path": entry.path, "line": number + 1, "text": line[:SEARCH_LINE_CHARS]}
                )
            if capped:
                break
        return {
            "matches": matches,
            "truncated": capped,
            "files_searched": searched,
            "files_skipped": skipped,  # over 1 MiB, binary, or unreadable
        }

    def _readable(self, root: Path, entry: FileEntry) -> bytes | None:
        """A file's bytes to search, or None: over the size cap, binary (a NUL byte early
        on), or refused or gone since it was listed."""
        if entry.size > SEARCH_MAX_FILE_BYTES:
            return None
        try:
            data = self._files.read_file(root, entry.path, SEARCH_MAX_FILE_BYTES)
        except (self._files.WorkspaceError, OSError):
            return None
        return None if b"\0" in data[:8192] else data

    def _below(self, root: Path, path: str | None) -> tuple[Sequence[FileEntry], bool]:
        """The workspace's regular files at or below `path` (all of them for None), and
        whether the listing reached its cap (so some may be missing)."""
        files = self._files.scan(root, SCAN_MAX_FILES)
        capped = len(files) >= SCAN_MAX_FILES
        if path is None:
            return files, capped
        prefix = "/".join(self._files.clean_path(path.rstrip("/") or path))  # "src/" is "src"
        return [f for f in files if f.path == prefix or f.path.startswith(prefix + "/")], capped


def _not_done(what: str, approval: Approval) -> str:
    return f"{what}: the approval was {approval.status}" + (
        f" ({approval.reason})" if approval.reason else ""
    )


def _digest(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()
