"""The actions of Autopilot Chat, shared by every engine (docs/chat.md).

The command lane's slash commands and a model's tool calls do the same things through this
one class, so both make the same items, ask the same approvals and write the same events:

    tool       ls, read, search: a `tool_call` item, read in a worker thread
    run        a shell command in the sandbox (`command_execution`), after approval unless
               it is read-only
    patch      a unified diff, file by file (`file_change`), each after an approval
    diff       the thread's file changes in effect, as one diff
    revert     undo a file change, after an approval
    buy        a text-generation job from the network (`network_request`), after the owner's
               approval, within the thread's spend ceiling

Each returns what became of its item(s) as `Done`: whether it worked and the item's final
body (with `error` when not), which a model engine hands back to its model.

Every read goes through `WorkspaceFiles` (sandbox/workspace.py), rooted at the workspace, in a
worker thread: a path with `..`, an absolute path, a symlink anywhere on the way, anything but
a regular file is refused, and the refusal is the item's `error` (the item `failed`), never an
exception out of the turn. `ls` and `search` see the files `scan` lists (symlinks and special
files skipped, at most `SCAN_MAX_FILES`).
"""

from __future__ import annotations

import asyncio
import hashlib
import shlex
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from autopilotd.chat import approvals, patch
from autopilotd.chat.patch import FilePatch
from autopilotd.errors import AutopilotError
from autopilotd.ports.engine import Done, FileEntry, TurnContext, WorkspaceFiles
from autopilotd.ports.sandbox import Outcome, SandboxUnavailable
from autopilotd.store.chat_records import ItemKind
from autopilotd.vocab import BuyStatus

READ_SHOWN_BYTES = 64 << 10  # what a /read item holds of a file's text
READ_MAX_BYTES = 8 << 20  # a bigger file is refused (its digest means reading all of it)
LS_MAX_ENTRIES = 1000
SCAN_MAX_FILES = 10_000
SEARCH_MAX_MATCHES = 200
SEARCH_MAX_FILE_BYTES = 1 << 20  # bigger files are skipped, and counted
SEARCH_LINE_CHARS = 400  # a matching line is shown up to this many characters
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
READ_TOOLS = ("ls", "read", "search")


class UsageError(Exception):
    """An action given the wrong arguments (the message is its usage)."""


class Actions:
    """The actions (see the module docstring), on a workspace's files."""

    def __init__(self, files: WorkspaceFiles) -> None:
        self._files = files

    async def _done(self, ctx: TurnContext, item_id: str, body: Mapping[str, Any]) -> Done:
        await ctx.complete(item_id, body)
        return Done(item_id, True, dict(body))

    async def _fail(
        self,
        ctx: TurnContext,
        item_id: str,
        reason: str,
        body: Mapping[str, Any] | None = None,
    ) -> Done:
        await ctx.fail(item_id, reason, body)
        return Done(item_id, False, {**(body or {}), "error": reason})

    async def tool(self, ctx: TurnContext, tool: str, args: Sequence[str]) -> Done:
        """ls [PATH], read PATH, search TEXT [PATH]: one `tool_call` item."""
        return await self._tool(ctx, tool, list(args), " ".join(map(shlex.quote, args)))

    async def tool_line(self, ctx: TurnContext, tool: str, rest: str) -> Done:
        """A read tool's arguments as a command line: split like a shell's words."""
        try:
            args = shlex.split(rest)
        except ValueError as exc:
            item_id = await ctx.start_item(ItemKind.TOOL_CALL, {"tool": tool, "args": rest})
            return await self._fail(ctx, item_id, f"cannot split the line: {exc}")
        return await self._tool(ctx, tool, args, rest)

    async def _tool(self, ctx: TurnContext, tool: str, args: list[str], rest: str) -> Done:
        body: dict[str, Any] = {"tool": tool}
        try:
            work, arguments = self._prepare(ctx.workspace, tool, args)
            body.update(arguments)
        except UsageError as exc:
            item_id = await ctx.start_item(ItemKind.TOOL_CALL, {**body, "args": rest})
            return await self._fail(ctx, item_id, str(exc))
        item_id = await ctx.start_item(ItemKind.TOOL_CALL, body)
        try:
            result = await asyncio.to_thread(work)
        except self._files.WorkspaceError as exc:
            return await self._fail(ctx, item_id, str(exc))
        except OSError as exc:  # permissions, an I/O error: said, not raised
            return await self._fail(ctx, item_id, f"cannot read it: {exc.strerror or 'I/O error'}")
        else:
            return await self._done(ctx, item_id, {**body, **result})

    # -- actions: each asks first (a read-only command excepted) ----------------------------

    async def run(self, ctx: TurnContext, command: str) -> Done:
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
            return await self._fail(ctx, item_id, f"usage: {USAGE['run']}")
        if not read_only:
            approval = await ctx.request_approval(item_id, "command", command)
            if not approval.approved:
                return await self._fail(ctx, item_id, approval.refusal("not run"))
        try:
            run = await ctx.run_command(item_id, command, read_only=read_only)
        except SandboxUnavailable as exc:
            return await self._fail(ctx, item_id, f"not run: {exc}")
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
            return await self._done(ctx, item_id, done)
        elif result.outcome is Outcome.TIMED_OUT:
            return await self._fail(
                ctx, item_id, f"timed out after {result.wall_s:g} s: killed", done
            )
        else:
            return await self._fail(ctx, item_id, f"exited with code {result.exit_code}", done)

    async def patch(self, ctx: TurnContext, diff: str) -> list[Done]:
        try:
            files = patch.parse(diff)
        except patch.PatchError as exc:
            item_id = await ctx.start_item(ItemKind.FILE_CHANGE, {"diff": diff[:READ_SHOWN_BYTES]})
            return [await self._fail(ctx, item_id, f"not a patch: {exc}")]
        return [await self._change(ctx, file) for file in files]

    async def _change(self, ctx: TurnContext, file: FilePatch) -> Done:
        body: dict[str, Any] = {"path": file.path, "diff": file.text}
        try:
            before = await ctx.current(file.path)
            after = patch.apply(file, before)
        except (self._files.WorkspaceError, patch.PatchError) as exc:
            return await self._fail(
                ctx, await ctx.start_item(ItemKind.FILE_CHANGE, body), f"not changed: {exc}"
            )
        body["before_sha256"] = _digest(before)
        item_id = await ctx.start_item(ItemKind.FILE_CHANGE, body)
        approval = await ctx.request_approval(item_id, "file_change")
        if not approval.approved:
            return await self._fail(ctx, item_id, approval.refusal("not changed"), body)
        try:
            await ctx.change_file(item_id, file.path, before, after)
        except (self._files.WorkspaceError, AutopilotError, OSError) as exc:
            return await self._fail(ctx, item_id, f"not changed: {exc}", body)
        return await self._done(ctx, item_id, {**body, "after_sha256": _digest(after)})

    async def diff(self, ctx: TurnContext) -> Done:
        item_id = await ctx.start_item(ItemKind.TOOL_CALL, {"tool": "diff"})
        first: dict[str, bytes | None] = {}
        for change in await ctx.changes():
            first.setdefault(change.path, change.before)
        parts = []
        for path, before in first.items():
            try:
                now = await ctx.current(path)
            except (self._files.WorkspaceError, OSError) as exc:
                parts.append(f"# {path}: cannot read it now: {exc}\n")
                continue
            parts.append(patch.unified(path, before, now))
        output = "".join(parts)
        return await self._done(
            ctx, item_id, {"tool": "diff", "files": list(first), "output": output or "(no changes)"}
        )

    async def revert(self, ctx: TurnContext, target: str) -> Done:
        body: dict[str, Any] = {"tool": "revert", "revert_of": target}
        item_id = await ctx.start_item(ItemKind.TOOL_CALL, body)
        if not target or " " in target:
            return await self._fail(ctx, item_id, f"usage: {USAGE['revert']}")
        approval = await ctx.request_approval(item_id, "file_change")
        if not approval.approved:
            return await self._fail(ctx, item_id, approval.refusal("not reverted"))
        try:
            change = await ctx.revert(target, by=item_id)
        except (AutopilotError, self._files.WorkspaceError, OSError) as exc:
            return await self._fail(ctx, item_id, f"not reverted: {exc}")
        return await self._done(ctx, item_id, {**body, "path": change.path})

    async def buy(self, ctx: TurnContext, rest: str) -> Done:
        amount, _, prompt = rest.strip().partition(" ")
        budget = int(amount) if amount.isdigit() else 0
        body: dict[str, Any] = {"prompt": prompt.strip(), "budget_sats": budget}
        item_id = await ctx.start_item(ItemKind.NETWORK_REQUEST, body)
        if budget <= 0 or not prompt.strip():
            return await self._fail(
                ctx, item_id, f"usage: {USAGE['buy']} (SATS a whole number above 0)"
            )
        return await self.buy_item(ctx, item_id, body)

    async def buy_item(self, ctx: TurnContext, item_id: str, body: Mapping[str, Any]) -> Done:
        """Buy for the started network_request item `item_id`, whose body holds a prompt and
        a budget above 0: the thread's spend ceiling, the owner's approval, then the buyer.
        One path for /buy and for an engine's buy tool (Codex's `autopilot_buy`)."""
        prompt, budget = str(body["prompt"]), int(body["budget_sats"])
        left = await ctx.spend_left()
        if budget > left:
            return await self._fail(
                ctx,
                item_id,
                f"not bought: {budget} sats is over what this thread may still approve "
                f"({left} sats of its spend ceiling left)",
                body,
            )
        approval = await ctx.request_approval(item_id, "spend")
        if not approval.approved:
            return await self._fail(ctx, item_id, approval.refusal("not bought"), body)
        try:
            request = await ctx.buy(item_id, prompt, budget, BUY_TIMEOUT_S)
        except AutopilotError as exc:
            return await self._fail(ctx, item_id, f"not bought: {exc.message}", body)
        done = {
            **body,
            "request_id": request.request_id,
            "status": request.status.value,
            "provider": request.provider,
            "payment_hash": request.payment_hash,
            "result": request.result,
        }
        if request.status is BuyStatus.DONE:
            return await self._done(ctx, item_id, done)
        return await self._fail(
            ctx, item_id, f"not bought: {request.reason or request.status.value}", done
        )

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


def _digest(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()
