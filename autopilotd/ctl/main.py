"""`autopilotctl`: generic over the registry, with short forms for the common commands.

    autopilotctl [--home DIR | --manifest FILE | --rpc-url URL --token T] [--json] COMMAND …

COMMAND is a dotted command name (`logs.mark --message hi`), the same words with spaces
(`logs mark --message hi`), or a short form: status, commands, logs, events, wait, stop, web.
Options of a generic command come from `system.commands`, so new commands need no CLI change.
The global options may also follow the command (`status --json`), except where the command
declares an option of the same name: that one is the command's. `--` ends option scanning.

Exit codes: 0 ok, 1 command error, 2 usage, 3 daemon not running, 4 wait timed out.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
import webbrowser
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from autopilotd.client import Endpoint, RpcClient, RpcError, locate
from autopilotd.ctl.args import (
    UsageError,
    global_parser,
    leading_options,
    no_more,
    parse_args,
    parse_params,
    split_command,
    split_globals,
)
from autopilotd.ctl.render import render_commands, render_status
from autopilotd.errors import AutopilotError, DaemonNotRunning, UserError
from autopilotd.manifest import pid_alive

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_TIMEOUT = 0, 1, 2, 3, 4


WAIT_RETRY_S = 0.2  # how often `wait` looks again for a daemon that is not up yet


def _print(data: Any, as_json: bool) -> None:
    if as_json or not isinstance(data, str):
        print(json.dumps(data, indent=None if as_json else 2, sort_keys=not as_json))
    else:
        print(data)


async def _cmd_status(c: RpcClient, args: list[str], as_json: bool) -> int:
    no_more(args, "status")
    snapshot = await c.call("status")
    print(json.dumps(snapshot) if as_json else render_status(snapshot))
    return EXIT_OK


async def _cmd_commands(c: RpcClient, args: list[str], as_json: bool) -> int:
    markdown = "--markdown" in args
    no_more([a for a in args if a != "--markdown"], "commands")
    commands = await c.call("system.commands")
    if as_json:
        print(json.dumps(commands))
    else:
        print(render_commands(commands, markdown=markdown), end="")
    return EXIT_OK


async def _cmd_logs(c: RpcClient, args: list[str], as_json: bool) -> int:
    p = argparse.ArgumentParser(prog="autopilotctl logs", exit_on_error=False)
    p.add_argument("--tail", type=int, default=50)
    ns = parse_args(p, args)
    result = await c.call("logs.tail", {"lines": ns.tail})
    for record in result["records"]:
        if as_json:
            print(json.dumps(record))
        else:
            stamp = time.strftime("%H:%M:%S", time.localtime(float(record.get("ts", 0))))
            level, source = record.get("level", ""), record.get("source", "")
            print(f"{stamp} {level:7} {source}: {record.get('message', '')}")
    return EXIT_OK


async def _cmd_events(c: RpcClient, args: list[str], as_json: bool) -> int:
    p = argparse.ArgumentParser(prog="autopilotctl events", exit_on_error=False)
    p.add_argument("--after", type=int, default=0)
    p.add_argument("--follow", action="store_true", help="keep waiting for new events")
    p.add_argument("--timeout", type=float, default=0.0, help="seconds to wait for the first event")
    ns = parse_args(p, args)
    after = ns.after
    while True:
        result = await c.call(
            "events.wait", {"after": after, "timeout_s": ns.timeout if not ns.follow else 20.0}
        )
        for event in result["events"]:
            if as_json:
                print(json.dumps(event), flush=True)
            else:
                fields = " ".join(f"{k}={v}" for k, v in event["fields"].items())
                print(f"{event['id']:>6} {event['name']} {fields}".rstrip(), flush=True)
        after = result["last_id"]
        if not ns.follow:
            return EXIT_OK


async def _cmd_wait(find: Callable[[], Endpoint], args: list[str], as_json: bool) -> int:
    """Wait for a condition, and first for the daemon itself: scripts start it, then wait.

    Until the daemon answers, the manifest is read again on each try (each start writes a new
    token); a missing or stale manifest or a refused connection is retried within --timeout.
    """
    p = argparse.ArgumentParser(prog="autopilotctl wait", exit_on_error=False)
    p.add_argument("condition", help="see 'autopilotctl wait.conditions'")
    p.add_argument("--timeout", type=float, default=60.0)
    ns = parse_args(p, args)
    deadline = time.monotonic() + ns.timeout
    while True:
        try:
            async with RpcClient(find()) as c:
                return await _wait_until(c, ns.condition, ns.timeout, deadline, as_json)
        except DaemonNotRunning as exc:
            if time.monotonic() >= deadline:
                message = f"autopilotd did not come up within {ns.timeout:g} s: {exc.message}"
                _print(
                    {"condition": ns.condition, "met": False, "running": False, "error": message}
                    if as_json
                    else f"{ns.condition}: not met, {message}",
                    as_json,
                )
                return EXIT_TIMEOUT
        await asyncio.sleep(min(WAIT_RETRY_S, max(0.0, deadline - time.monotonic())))


async def _wait_until(
    c: RpcClient, condition: str, timeout: float, deadline: float, as_json: bool
) -> int:
    while True:
        left = max(0.0, deadline - time.monotonic())
        result = await c.call("wait.until", {"condition": condition, "timeout_s": min(left, 20.0)})
        if result["met"]:
            _print(result if as_json else f"{condition}: met", as_json)
            return EXIT_OK
        if left <= 0:
            _print(result if as_json else f"{condition}: not met after {timeout:g} s", as_json)
            return EXIT_TIMEOUT


async def _cmd_stop(c: RpcClient, args: list[str], as_json: bool) -> int:
    p = argparse.ArgumentParser(prog="autopilotctl stop", exit_on_error=False)
    p.add_argument("--timeout", type=float, default=30.0)
    ns = parse_args(p, args)
    await c.call("daemon.stop")
    pid = c.endpoint.pid
    deadline = time.monotonic() + ns.timeout
    while pid is not None and pid_alive(pid):
        if time.monotonic() > deadline:
            _print(f"asked to stop, but pid {pid} still runs after {ns.timeout:g} s", as_json)
            return EXIT_TIMEOUT
        await asyncio.sleep(0.1)
    _print({"stopped": True} if as_json else "autopilotd stopped", as_json)
    return EXIT_OK


def _has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


async def _cmd_web(c: RpcClient, args: list[str], as_json: bool) -> int:
    p = argparse.ArgumentParser(prog="autopilotctl web", exit_on_error=False)
    p.add_argument("--no-open", action="store_true", help="print the link, open no browser")
    ns = parse_args(p, args)
    result = await c.call("web.login_url")
    url = result["url"]
    opened = False
    if not ns.no_open and _has_display():
        opened = await asyncio.to_thread(webbrowser.open, url)
    if as_json:
        _print({**result, "opened": opened}, True)
        return EXIT_OK
    print(url)
    where = "opened in your browser" if opened else "open it in a browser on this computer"
    print(f"{where}; the link works once, within five minutes", file=sys.stderr)
    return EXIT_OK


SHORT: dict[str, Callable[[RpcClient, list[str], bool], Coroutine[Any, Any, int]]] = {
    "status": _cmd_status,
    "commands": _cmd_commands,
    "logs": _cmd_logs,
    "events": _cmd_events,
    "stop": _cmd_stop,
    "web": _cmd_web,
}


def _locate(ns: argparse.Namespace) -> Endpoint:
    return locate(home=ns.home, manifest=ns.manifest, rpc_url=ns.rpc_url, token=ns.token)


def _where(ns: argparse.Namespace) -> tuple[str | None, ...]:
    return ns.home, ns.manifest, ns.rpc_url, ns.token


async def _generic(leading: list[str], words: list[str], scan: bool) -> int:
    # The command's parameters come from the daemon, so it is found taking every global option
    # after the command as global. An option the command turns out to declare is the command's;
    # if that was one saying where the daemon is, the command goes to the daemon found without it.
    first = global_parser().parse_args(leading + (split_globals(words)[0] if scan else []))
    async with RpcClient(_locate(first)) as client:
        commands = {cmd["name"]: cmd for cmd in await client.call("system.commands")}
        name, rest = split_command(words, set(commands))
        trailing, rest = split_globals(rest, commands[name]["params"]) if scan else ([], rest)
        ns = global_parser().parse_args(leading + trailing)
        if "--help" in rest or "-h" in rest:
            print(render_commands([commands[name]], markdown=False, full=True), end="")
            return EXIT_OK
        rest, save = _save_option(commands[name], rest)
        params = parse_params(commands[name], rest)
        if _where(ns) == _where(first):
            result = await client.call(name, params)
        else:
            async with RpcClient(_locate(ns)) as elsewhere:
                result = await elsewhere.call(name, params)
    if save is not None:
        result = _saved(result, save)
    _print(result, ns.json)
    return EXIT_OK


def _save_option(command: dict[str, Any], rest: list[str]) -> tuple[list[str], Path | None]:
    """`--save FILE` (for a command that answers a file as `data_b64`, not its own option)."""
    if any(p["name"] == "save" for p in command["params"]):
        return rest, None
    for i, arg in enumerate(rest):
        if arg == "--save" and i + 1 < len(rest):
            return rest[:i] + rest[i + 2 :], Path(rest[i + 1]).expanduser()
        if arg.startswith("--save="):
            return rest[:i] + rest[i + 1 :], Path(arg[len("--save=") :]).expanduser()
        if arg == "--save":
            raise UsageError(f"{command['name']}: --save needs a file name")
    return rest, None


def _saved(result: Any, path: Path) -> Any:
    """Write the answer's `data_b64` to `path`; the answer shown without it."""
    if not isinstance(result, dict) or not isinstance(result.get("data_b64"), str):
        raise UsageError("--save: this command answers no file (no data_b64)")
    data = base64.b64decode(result["data_b64"])
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise UserError(f"--save {path}: {exc.strerror or exc}") from None
    shown = {k: v for k, v in result.items() if k != "data_b64"}
    return {**shown, "saved_to": str(path), "saved_bytes": len(data)}


async def run(argv: list[str]) -> int:
    leading, words, scan = leading_options(argv)
    if not words:
        global_parser().parse_args(leading)  # --help, or a bad option
        raise UsageError("no command given; try 'autopilotctl status' or 'autopilotctl commands'")
    command, args = words[0], words[1:]
    if command != "wait" and not (command in SHORT and (not args or args[0].startswith("-"))):
        return await _generic(leading, words, scan)
    trailing, args = split_globals(args) if scan else ([], args)
    ns = global_parser().parse_args(leading + trailing)
    if command == "wait":
        return await _cmd_wait(lambda: _locate(ns), args, ns.json)
    async with RpcClient(_locate(ns)) as client:
        return await SHORT[command](client, args, ns.json)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        code = asyncio.run(run(args))
    except UsageError as exc:
        print(f"autopilotctl: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    except DaemonNotRunning as exc:
        print(f"autopilotctl: {exc.message}", file=sys.stderr)
        code = EXIT_NOT_RUNNING
    except RpcError as exc:
        detail = (
            f" (error id {exc.raw_data['correlation_id']})"
            if isinstance(exc.raw_data, dict) and "correlation_id" in exc.raw_data
            else ""
        )
        print(f"autopilotctl: {exc.message}{detail}", file=sys.stderr)
        code = EXIT_ERROR
    except (UserError, AutopilotError) as exc:
        print(f"autopilotctl: {exc.message}", file=sys.stderr)
        code = EXIT_ERROR
    except KeyboardInterrupt:
        code = 130
    if argv is None:
        sys.exit(code)
    return code
