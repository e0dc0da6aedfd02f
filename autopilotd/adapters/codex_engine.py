"""The Codex engine: a chat turn done by OpenAI Codex's app-server (docs/chat.md).

For each turn the engine spawns `codex app-server` (JSON-RPC, one JSON object a line on its
stdin and stdout) with its own home, `CODEX_HOME` = `<data>/codex`, initializes it, opens the
chat thread's Codex thread (`thread/start` the first time, `thread/resume` after; the mapping
is kept in `<data>/codex/autopilotd-threads.json`), starts a turn with the user's text, and
records what Codex reports as our items until `turn/completed`; then the process is stopped.
A process per turn costs a start (about half a second) but leaves nothing running between
turns, and a crash costs only the turn it happened in: the next one starts a new process and
resumes the thread from Codex's own history.

What Codex asks, the thread's approvals answer: `item/commandExecution/requestApproval` and
`item/fileChange/requestApproval` become `ctx.request_approval` (grants, deadlines, the user's
answer) and Codex is told `accept` or `decline`. Codex runs its commands itself, in its own
sandbox (bubblewrap on Linux) set from the thread's sandbox mode, under approval policy
`untrusted` (only commands Codex knows to be read-only run unasked), as the daemon's user;
it applies its file changes itself, so they are not kept for `revert`. An approved command
may run outside Codex's sandbox when Codex asked for that (its justification is the item's
`reason`), so a thread in read-only mode has every command and file change Codex asks for
declined without asking: there only what Codex knows to be read-only runs, sandboxed.

Buying is a tool Codex can call (`autopilot_buy`, a dynamic tool of the thread): a
`network_request` item, the thread's spend ceiling, the owner's spend approval, then `ctx.buy`.
Server requests the daemon cannot answer (user input, MCP elicitations, permissions) get a
JSON-RPC error at once, so Codex never waits on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import shlex
import shutil
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autopilotd.ports.engine import Approval, BuyAction, EngineStatus, TurnContext, TurnFailed
from autopilotd.store.chat_records import ItemKind

logger = logging.getLogger(__name__)

CODEX_VERSION = "0.171.0"  # what `make codex` installs; keep in step with the Makefile
MESSAGE_MAX_BYTES = 16 << 20  # one JSON-RPC line from the app-server
OUTPUT_SHOWN_CHARS = 64 << 10  # what a command item keeps of its output
STOP_TIMEOUT_S = 5.0
BUY_TIMEOUT_S = 120.0
BUY_TOOL = "autopilot_buy"
THREADS_FILE = "autopilotd-threads.json"
LOG_FILE = "app-server.log"
# The npm package's native binary, by platform: (package suffix, target triple).
_NATIVE = {
    ("Linux", "x86_64"): ("linux-x64", "x86_64-unknown-linux-musl"),
    ("Linux", "aarch64"): ("linux-arm64", "aarch64-unknown-linux-musl"),
    ("Darwin", "x86_64"): ("darwin-x64", "x86_64-apple-darwin"),
    ("Darwin", "arm64"): ("darwin-arm64", "aarch64-apple-darwin"),
}
_BUY_SCHEMA = {
    "type": "object",
    "properties": {
        "prompt": {"type": "string", "description": "What to ask the network's model."},
        "budget_sats": {"type": "integer", "description": "The most to pay, in sats."},
    },
    "required": ["prompt", "budget_sats"],
}
_BUY_SPEC = {
    "type": "function",
    "name": BUY_TOOL,
    "description": "Buy a text-generation job from the Nostr compute network, paid from the "
    "owner's wallet after the owner approves the spend; returns the provider's answer.",
    "inputSchema": _BUY_SCHEMA,
}


def find_codex(configured: str, build_cache: Path) -> Path | None:
    """The program to spawn: `configured` when set (None if it is not an executable file);
    else the native binary `make codex` puts in the build cache; else `codex` on PATH."""
    if configured:
        path = Path(configured)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    native = _NATIVE.get((platform.system(), platform.machine()))
    if native is not None:
        suffix, triple = native
        package = build_cache / f"npm-codex-{CODEX_VERSION}" / "node_modules" / "@openai"
        path = package / f"codex-{suffix}" / "vendor" / triple / "bin" / "codex"
        if path.is_file() and os.access(path, os.X_OK):
            return path
    found = shutil.which("codex")
    return None if found is None else Path(found)


@dataclass(frozen=True)
class CodexSettings:
    binary: Path | None  # None: not installed
    home: Path  # CODEX_HOME: Codex's config, sign-in, history and sessions
    model: str = ""  # "" = Codex's default
    base_url: str = ""  # "" = Codex's own provider; else a Responses API of one's own


class CodexEngine:
    """The `codex` engine (see the module docstring)."""

    def __init__(self, settings: CodexSettings, actions: BuyAction) -> None:
        """`actions`: the chat's buy action (chat/actions.py), for the buy tool's purchases."""
        self._settings = settings
        self._actions = actions
        self._threads_lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return "codex"

    def status(self) -> EngineStatus:
        s = self._settings
        model = s.model or None
        if s.binary is None:
            return EngineStatus(self.name, False, False, model, _NOT_INSTALLED)
        signed_in, how = self._signed_in()
        if not signed_in:
            return EngineStatus(self.name, True, False, model, how)
        return EngineStatus(
            self.name,
            True,
            True,
            model,
            f"Codex app-server ({s.binary.name}) with its home {s.home}; {how}; lines "
            "starting with / go to the command lane",
        )

    def _signed_in(self) -> tuple[bool, str]:
        s = self._settings
        if s.base_url:
            return True, f"its model server is {s.base_url} (codex_base_url)"
        if (s.home / "auth.json").is_file():
            return True, "signed in (auth.json in its home)"
        return False, (
            f"Codex is installed but not signed in: run `CODEX_HOME={s.home} codex login` "
            "(or set codex_base_url to a model server of your own)"
        )

    async def run_turn(self, ctx: TurnContext, text: str) -> None:
        s = self._settings
        if s.binary is None:
            raise TurnFailed(_NOT_INSTALLED)
        signed_in, how = self._signed_in()
        if not signed_in:
            raise TurnFailed(how)
        async with _AppServer.spawn(s) as server:
            await server.request(
                "initialize",
                {
                    "clientInfo": {"name": "autopilotd", "title": "autopilotd", "version": "1"},
                    "capabilities": {"experimentalApi": True},
                },
            )
            await server.notify("initialized", {})
            codex_thread = await self._open_thread(server, ctx)
            await _Turn(server, ctx, self._actions).run(codex_thread, text)

    async def _open_thread(self, server: _AppServer, ctx: TurnContext) -> str:
        """The Codex thread of the chat thread: resumed if there is one, else started."""
        params: dict[str, Any] = {
            "cwd": str(ctx.workspace),
            "approvalPolicy": "untrusted",
            "sandbox": "read-only" if ctx.sandbox_mode == "read-only" else "workspace-write",
        }
        async with self._threads_lock:
            known = (await asyncio.to_thread(self._load_threads)).get(ctx.thread_id)
        if known is not None:
            try:
                result = await server.request("thread/resume", {"threadId": known, **params})
                return str(result["thread"]["id"])
            except _RpcError as exc:
                logger.warning("codex: thread %s not resumed (%s): a new one", known, exc)
        result = await server.request("thread/start", {**params, "dynamicTools": [_BUY_SPEC]})
        codex_thread = str(result["thread"]["id"])
        async with self._threads_lock:
            threads = await asyncio.to_thread(self._load_threads)
            threads[ctx.thread_id] = codex_thread
            await asyncio.to_thread(self._save_threads, threads)
        return codex_thread

    def _load_threads(self) -> dict[str, str]:
        try:
            data = json.loads((self._settings.home / THREADS_FILE).read_text())
        except FileNotFoundError:
            return {}
        return {str(k): str(v) for k, v in data.items()}

    def _save_threads(self, threads: Mapping[str, str]) -> None:
        path = self._settings.home / THREADS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(threads), indent=1))
        tmp.replace(path)


_NOT_INSTALLED = (
    "Codex is not installed: `make codex` installs @openai/codex "
    f"{CODEX_VERSION} from npm (or set codex_bin to its program)"
)


class _RpcError(Exception):
    """An error response from the app-server."""


class _AppServer:
    """One running `codex app-server`: requests out, messages in, one line each."""

    def __init__(self, proc: asyncio.subprocess.Process, home: Path) -> None:
        self._proc = proc
        self._home = home
        self._next_id = 0
        self._held: deque[dict[str, Any]] = deque()  # read while waiting for a response

    @classmethod
    @contextlib.asynccontextmanager
    async def spawn(cls, s: CodexSettings) -> AsyncIterator[_AppServer]:
        assert s.binary is not None
        args = [str(s.binary), "app-server"]
        if s.model:
            args += ["-c", f"model={json.dumps(s.model)}"]
        if s.base_url:
            provider = "model_providers.autopilotd"
            args += [
                "-c",
                'model_provider="autopilotd"',
                "-c",
                f'{provider}.name="autopilotd"',
                "-c",
                f"{provider}.base_url={json.dumps(s.base_url)}",
                "-c",
                f'{provider}.wire_api="responses"',
                # Tools only OpenAI's own servers serve (web search, sub-agents, goals): a
                # model server of one's own, psionic among them, refuses a request with them.
                "-c",
                'web_search="disabled"',
                "-c",
                "features.multi_agent=false",
                "-c",
                "features.goals=false",
            ]
        log = await asyncio.to_thread(_open_log, s.home)
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env={**os.environ, "CODEX_HOME": str(s.home)},
                limit=MESSAGE_MAX_BYTES,
                start_new_session=True,
            )
        except OSError as exc:
            raise TurnFailed(f"cannot start Codex ({s.binary}): {exc.strerror}") from exc
        finally:
            log.close()
        try:
            yield cls(proc, s.home)
        finally:
            await _stop(proc)

    async def request(self, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Send a request and wait for its response; other messages meanwhile are held for
        `next`."""
        self._next_id += 1
        wanted = self._next_id
        await self._send({"id": wanted, "method": method, "params": dict(params)})
        while True:
            message = await self._read()
            if message.get("id") == wanted and "method" not in message:
                if "error" in message:
                    raise _RpcError(str(message["error"].get("message", message["error"])))
                result: dict[str, Any] = message.get("result") or {}
                return result
            self._held.append(message)

    async def notify(self, method: str, params: Mapping[str, Any]) -> None:
        await self._send({"method": method, "params": dict(params)})

    async def respond(self, request_id: Any, result: Mapping[str, Any]) -> None:
        await self._send({"id": request_id, "result": dict(result)})

    async def refuse(self, request_id: Any, message: str) -> None:
        await self._send({"id": request_id, "error": {"code": -32601, "message": message}})

    async def next(self) -> dict[str, Any]:
        """The next message from the app-server: a notification, a request, or a response."""
        return self._held.popleft() if self._held else await self._read()

    async def _send(self, message: Mapping[str, Any]) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(message).encode() + b"\n")
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            await self._died()

    async def _read(self) -> dict[str, Any]:
        stdout = self._proc.stdout
        assert stdout is not None
        while True:
            try:
                line = await stdout.readline()
            except ValueError as exc:  # a line over MESSAGE_MAX_BYTES
                raise TurnFailed("Codex sent a message too long to read") from exc
            if not line:
                await self._died()
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("codex: not JSON: %.200r", line)
                continue
            if isinstance(message, dict):
                return message

    async def _died(self) -> None:
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                code = await self._proc.wait()
        except TimeoutError:
            code = None
        how = "" if code is None else (f" (signal {-code})" if code < 0 else f" (code {code})")
        raise TurnFailed(
            f"the Codex app-server exited{how} during the turn; its log is "
            f"{self._home / LOG_FILE}. The next turn starts it again and resumes the thread."
        )


def _open_log(home: Path) -> Any:
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return open(home / LOG_FILE, "ab")  # handed to the child, closed after


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """End the app-server: stdin closed, then SIGTERM, then SIGKILL, each with a bound."""
    if proc.returncode is None and proc.stdin is not None:
        proc.stdin.close()
    for signal_it in (proc.terminate, proc.kill):
        if proc.returncode is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            signal_it()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await asyncio.shield(proc.wait())


class _Turn:
    """One Codex turn recorded as our items."""

    def __init__(self, server: _AppServer, ctx: TurnContext, actions: BuyAction) -> None:
        self._server = server
        self._ctx = ctx
        self._actions = actions
        self._ours: dict[str, str] = {}  # Codex item id → our item id
        self._text: dict[str, str] = {}  # our item id → its streamed text so far
        self._ended: set[str] = set()  # our items already completed or failed
        self._declined: dict[str, str] = {}  # our item id → why it was not done
        self._reasons: dict[str, str] = {}  # our item id → why Codex asked to run it

    async def run(self, codex_thread: str, text: str) -> None:
        await self._server.request(
            "turn/start", {"threadId": codex_thread, "input": [{"type": "text", "text": text}]}
        )
        while True:
            message = await self._server.next()
            method = message.get("method")
            params = message.get("params") or {}
            if method is None:
                continue  # a response to nothing we wait for
            if "id" in message:
                await self._serve(message["id"], str(method), params)
            elif method == "turn/completed":
                turn = params.get("turn") or {}
                status = turn.get("status")
                if status == "failed":
                    error = (turn.get("error") or {}).get("message") or "no reason given"
                    raise TurnFailed(f"Codex failed the turn: {error}")
                if status == "interrupted":
                    raise TurnFailed("Codex interrupted the turn")
                return
            else:
                await self._notified(str(method), params)

    # -- notifications -------------------------------------------------------------------

    async def _notified(self, method: str, params: Mapping[str, Any]) -> None:
        ctx = self._ctx
        if method == "item/started":
            await self._started(params["item"])
        elif method == "item/completed":
            await self._completed(params["item"])
        elif method in _DELTAS:
            ours = self._ours.get(str(params.get("itemId")))
            delta = str(params.get("delta", ""))
            if ours is not None and delta and ours not in self._ended:
                field = _DELTAS[method]
                self._text[ours] = self._text.get(ours, "") + delta
                await ctx.append(ours, field, delta)

    async def _started(self, item: Mapping[str, Any]) -> None:
        ctx, kind = self._ctx, item.get("type")
        if kind == "agentMessage":
            ours = await ctx.start_item(ItemKind.AGENT_MESSAGE, {"text": ""})
            if item.get("text"):
                await ctx.append(ours, "text", str(item["text"]))
                self._text[ours] = str(item["text"])
        elif kind == "reasoning":
            ours = await ctx.start_item(ItemKind.REASONING, {"text": ""})
        elif kind == "commandExecution":
            ours = await ctx.start_item(ItemKind.COMMAND_EXECUTION, self._command_body(item))
        elif kind == "fileChange":
            ours = await ctx.start_item(ItemKind.FILE_CHANGE, self._change_body(item))
        elif kind == "dynamicToolCall" and item.get("tool") == BUY_TOOL:
            ours = await ctx.start_item(ItemKind.NETWORK_REQUEST, _buy_body(item.get("arguments")))
        elif kind in ("mcpToolCall", "dynamicToolCall", "webSearch"):
            ours = await ctx.start_item(
                ItemKind.TOOL_CALL, {"tool": str(item.get("tool") or kind), "engine": "codex"}
            )
        else:
            return  # the user's message (recorded already), plans, hooks, compactions
        self._ours[str(item["id"])] = ours

    async def _completed(self, item: Mapping[str, Any]) -> None:
        ctx, kind = self._ctx, item.get("type")
        ours = self._ours.get(str(item.get("id")))
        if ours is None or ours in self._ended:
            return
        self._ended.add(ours)
        status = item.get("status")
        if kind == "agentMessage":
            await ctx.complete(ours, {"text": str(item.get("text") or self._text.get(ours, ""))})
        elif kind == "reasoning":
            said = "\n".join(map(str, item.get("summary") or item.get("content") or []))
            await ctx.complete(ours, {"text": said or self._text.get(ours, "")})
        elif kind == "commandExecution":
            output = str(item.get("aggregatedOutput") or self._text.get(ours, ""))
            duration = item.get("durationMs")
            body = {
                **self._command_body(item),
                "exit_code": item.get("exitCode"),
                "duration_s": None if duration is None else duration / 1000,
                "output": output[:OUTPUT_SHOWN_CHARS],
                "truncated": len(output) > OUTPUT_SHOWN_CHARS,
            }
            if status == "completed":
                await ctx.complete(ours, body)
            elif status == "declined":
                await ctx.fail(ours, self._declined.get(ours, "not run: declined"), body)
            else:
                await ctx.fail(ours, f"exited with code {item.get('exitCode')}", body)
        elif kind == "fileChange":
            body = self._change_body(item)
            if status == "completed":
                await ctx.complete(ours, body)
            elif status == "declined":
                await ctx.fail(ours, self._declined.get(ours, "not changed: declined"), body)
            else:
                await ctx.fail(ours, "Codex could not apply the change", body)
        elif status in ("failed", "declined"):
            await ctx.fail(ours, f"{kind} {status}")
        else:
            await ctx.complete(ours)

    def _command_body(self, item: Mapping[str, Any]) -> dict[str, Any]:
        body = {
            "command": _unwrap(str(item.get("command", ""))),
            "cwd": _relative(self._ctx.workspace, item.get("cwd")),
            "ran_by": "codex",  # in Codex's own sandbox, not the daemon's
        }
        reason = self._reasons.get(self._ours.get(str(item.get("id") or item.get("itemId")), ""))
        return body if reason is None else {**body, "reason": reason}

    def _change_body(self, item: Mapping[str, Any]) -> dict[str, Any]:
        return _change_body(self._ctx.workspace, item)

    # -- requests from the app-server ------------------------------------------------------

    async def _serve(self, request_id: Any, method: str, params: Mapping[str, Any]) -> None:
        server = self._server
        if method == "item/commandExecution/requestApproval":
            ours = await self._item_for(params, ItemKind.COMMAND_EXECUTION, self._command_body)
            if self._ctx.sandbox_mode == "read-only":  # an approved one could leave its sandbox
                self._declined[ours] = "not run: this thread's sandbox mode is read-only"
                await server.respond(request_id, {"decision": "decline"})
                return
            command = _unwrap(str(params.get("command") or ""))
            if params.get("reason"):  # Codex's justification, e.g. to run outside its sandbox
                self._reasons[ours] = str(params["reason"])
                body = {**self._command_body(params), "reason": self._reasons[ours]}
                await self._ctx.update(ours, body)
            approval = await self._ctx.request_approval(ours, "command", command or None)
            await server.respond(request_id, {"decision": self._decide(ours, approval, "run")})
        elif method == "item/fileChange/requestApproval":
            ours = await self._item_for(params, ItemKind.FILE_CHANGE, self._change_body)
            if self._ctx.sandbox_mode == "read-only":
                self._declined[ours] = "not changed: this thread's sandbox mode is read-only"
                await server.respond(request_id, {"decision": "decline"})
                return
            approval = await self._ctx.request_approval(ours, "file_change")
            await server.respond(request_id, {"decision": self._decide(ours, approval, "changed")})
        elif method == "item/tool/call" and params.get("tool") == BUY_TOOL:
            said, ok = await self._buy(params)
            await server.respond(
                request_id, {"contentItems": [{"type": "inputText", "text": said}], "success": ok}
            )
        elif method == "item/tool/call":
            await server.respond(
                request_id,
                {
                    "contentItems": [{"type": "inputText", "text": "no such tool here"}],
                    "success": False,
                },
            )
        else:
            await server.refuse(request_id, f"autopilotd does not answer {method}")

    async def _item_for(self, params: Mapping[str, Any], kind: ItemKind, body: Any) -> str:
        """Our item for the Codex item a request is about (started if Codex skipped it)."""
        codex_id = str(params.get("itemId") or params.get("callId"))
        ours = self._ours.get(codex_id)
        if ours is None:
            ours = await self._ctx.start_item(kind, body(params))
            self._ours[codex_id] = ours
        return ours

    def _decide(self, ours: str, approval: Approval, done: str) -> str:
        if approval.approved:
            return "accept"
        self._declined[ours] = approval.refusal(f"not {done}")
        return "decline"

    async def _buy(self, params: Mapping[str, Any]) -> tuple[str, bool]:
        """Codex's `autopilot_buy` call, done as /buy does it (chat/actions.py); what Codex is
        told, and whether it was bought."""
        ctx = self._ctx
        body = _buy_body(params.get("arguments"))
        ours = await self._item_for(params, ItemKind.NETWORK_REQUEST, lambda _: body)
        self._ended.add(ours)  # ended here, whatever item/completed says
        if body["budget_sats"] <= 0 or not body["prompt"]:
            reason = "not bought: give a prompt and budget_sats, a whole number above 0"
            await ctx.fail(ours, reason, body)
            return reason, False
        done = await self._actions.buy_item(ctx, ours, body)
        if done.ok:
            return str(done.body.get("result") or ""), True
        return str(done.body["error"]), False


_DELTAS = {
    "item/agentMessage/delta": "text",
    "item/reasoning/summaryTextDelta": "text",
    "item/reasoning/textDelta": "text",
    "item/commandExecution/outputDelta": "output",
}


def _unwrap(command: str) -> str:
    """The shell line of Codex's `/bin/bash -lc '…'` (what grants and the user see)."""
    try:
        words = shlex.split(command)
    except ValueError:
        return command
    if len(words) == 3 and Path(words[0]).name in ("bash", "sh", "zsh") and words[1] in _SH:
        return words[2]
    return command


_SH = ("-c", "-lc")


def _relative(root: Path, cwd: Any) -> str:
    if not cwd:
        return "."
    try:
        return str(Path(str(cwd)).relative_to(root)) or "."
    except ValueError:
        return str(cwd)


def _change_body(root: Path, item: Mapping[str, Any]) -> dict[str, Any]:
    changes = [
        {
            "path": _relative(root, c.get("path")),
            "kind": _kind(c.get("kind")),
            "diff": str(c.get("diff", "")),
        }
        for c in item.get("changes") or []
    ]
    return {
        "path": ", ".join(c["path"] for c in changes),
        "diff": "".join(c["diff"] for c in changes),
        "changes": changes,
        "applied_by": "codex",  # not kept for a revert
    }


def _kind(kind: Any) -> str:
    return str(kind.get("type")) if isinstance(kind, dict) else str(kind)


def _buy_body(arguments: Any) -> dict[str, Any]:
    args = arguments if isinstance(arguments, dict) else {}
    budget = args.get("budget_sats")
    return {
        "prompt": str(args.get("prompt") or "").strip(),
        "budget_sats": budget if isinstance(budget, int) and not isinstance(budget, bool) else 0,
        "tool": BUY_TOOL,
    }
