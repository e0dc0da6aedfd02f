"""`autopilotctl`: generic over the registry, with short forms for the common commands.

    autopilotctl [--home DIR | --manifest FILE | --rpc-url URL --token T] [--json] COMMAND …

COMMAND is a dotted command name (`logs.mark --message hi`), the same words with spaces
(`logs mark --message hi`), or a short form: status, commands, logs, events, wait, stop, web.
Options of a generic command come from `system.commands`, so new commands need no CLI change.

Exit codes: 0 ok, 1 command error, 2 usage, 3 daemon not running, 4 wait timed out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import webbrowser
from collections.abc import Callable, Coroutine
from typing import Any

from autopilotd.ctl.client import Endpoint, RpcClient, RpcError, locate
from autopilotd.ctl.render import render_commands, render_status
from autopilotd.errors import AutopilotError, DaemonNotRunning, UserError
from autopilotd.manifest import pid_alive

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_TIMEOUT = 0, 1, 2, 3, 4


class UsageError(Exception):
    pass


def _global_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autopilotctl",
        description="Control a running autopilotd over JSON-RPC.",
        epilog="Commands: status, commands, logs, events, wait, stop, web, or any dotted command "
        "name from 'autopilotctl commands' with --param value options.",
        add_help=True,
    )
    p.add_argument("--home", help="the daemon's --home directory")
    p.add_argument("--manifest", help="path to autopilotd.json")
    p.add_argument("--rpc-url", help="JSON-RPC URL (with --token, skips the manifest)")
    p.add_argument("--token", help="control token (prefer the manifest; argv is visible to others)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("command", nargs=argparse.REMAINDER, help="command and its options")
    return p


def _print(data: Any, as_json: bool) -> None:
    if as_json or not isinstance(data, str):
        print(json.dumps(data, indent=None if as_json else 2, sort_keys=not as_json))
    else:
        print(data)


async def _cmd_status(c: RpcClient, args: list[str], as_json: bool) -> int:
    _no_more(args, "status")
    snapshot = await c.call("status")
    print(json.dumps(snapshot) if as_json else render_status(snapshot))
    return EXIT_OK


async def _cmd_commands(c: RpcClient, args: list[str], as_json: bool) -> int:
    markdown = "--markdown" in args
    _no_more([a for a in args if a != "--markdown"], "commands")
    commands = await c.call("system.commands")
    if as_json:
        print(json.dumps(commands))
    else:
        print(render_commands(commands, markdown=markdown), end="")
    return EXIT_OK


async def _cmd_logs(c: RpcClient, args: list[str], as_json: bool) -> int:
    p = argparse.ArgumentParser(prog="autopilotctl logs", exit_on_error=False)
    p.add_argument("--tail", type=int, default=50)
    ns = _parse(p, args)
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
    ns = _parse(p, args)
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


async def _cmd_wait(c: RpcClient, args: list[str], as_json: bool) -> int:
    p = argparse.ArgumentParser(prog="autopilotctl wait", exit_on_error=False)
    p.add_argument("condition", help="see 'autopilotctl wait.conditions'")
    p.add_argument("--timeout", type=float, default=60.0)
    ns = _parse(p, args)
    deadline = time.monotonic() + ns.timeout
    while True:
        left = max(0.0, deadline - time.monotonic())
        result = await c.call(
            "wait.until", {"condition": ns.condition, "timeout_s": min(left, 20.0)}
        )
        if result["met"]:
            _print(result if as_json else f"{ns.condition}: met", as_json)
            return EXIT_OK
        if left <= 0:
            _print(
                result if as_json else f"{ns.condition}: not met after {ns.timeout:g} s", as_json
            )
            return EXIT_TIMEOUT


async def _cmd_stop(c: RpcClient, args: list[str], as_json: bool) -> int:
    p = argparse.ArgumentParser(prog="autopilotctl stop", exit_on_error=False)
    p.add_argument("--timeout", type=float, default=30.0)
    ns = _parse(p, args)
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
    ns = _parse(p, args)
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
    "wait": _cmd_wait,
    "stop": _cmd_stop,
    "web": _cmd_web,
}


def _no_more(args: list[str], name: str) -> None:
    if args:
        raise UsageError(f"{name}: unexpected arguments: {' '.join(args)}")


def _parse(p: argparse.ArgumentParser, args: list[str]) -> argparse.Namespace:
    try:
        return p.parse_args(args)
    except (argparse.ArgumentError, SystemExit) as exc:
        raise UsageError(f"{p.prog}: {exc}") from None


def _split_command(words: list[str], names: set[str]) -> tuple[str, list[str]]:
    """Find the command name: `a.b`, or the words `a b` joined by dots."""
    head = [
        w for w in words[: next((i for i, w in enumerate(words) if w.startswith("-")), len(words))]
    ]
    for n in range(len(head), 0, -1):
        name = ".".join(head[:n])
        if name in names:
            return name, words[n:]
    raise UsageError(f"unknown command '{' '.join(head) or words[0]}'; see 'autopilotctl commands'")


def parse_params(command: dict[str, Any], args: list[str]) -> dict[str, Any]:
    """Turn `--param value` options into typed JSON params, by the command's own description."""
    params = {p["name"]: p for p in command["params"]}
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise UsageError(f"{command['name']}: unexpected argument '{arg}'")
        key, eq, inline = arg[2:].partition("=")
        name = key.replace("-", "_")
        negated = (
            name.startswith("no_") and name[3:] in params and params[name[3:]]["type"] == "boolean"
        )
        if negated:
            out[name[3:]] = False
            i += 1
            continue
        if name not in params:
            known = ", ".join("--" + p.replace("_", "-") for p in params) or "none"
            raise UsageError(f"{command['name']}: unknown option --{key} (options: {known})")
        kind = params[name]["type"]
        if kind == "boolean" and not eq and (i + 1 >= len(args) or args[i + 1].startswith("--")):
            out[name] = True
            i += 1
            continue
        if eq:
            raw = inline
            i += 1
        else:
            if i + 1 >= len(args):
                raise UsageError(f"{command['name']}: --{key} needs a value")
            raw = args[i + 1]
            i += 2
        out[name] = _convert(command["name"], name, kind, raw, out.get(name))
    missing = [p for p, d in params.items() if d["required"] and p not in out]
    if missing:
        raise UsageError(
            f"{command['name']}: missing " + ", ".join("--" + m.replace("_", "-") for m in missing)
        )
    return out


def _convert(cmd: str, name: str, kind: str, raw: str, previous: Any) -> Any:
    try:
        if kind == "integer":
            return int(raw)
        if kind == "number":
            return float(raw)
        if kind == "boolean":
            if raw.lower() in ("true", "yes", "1", "on"):
                return True
            if raw.lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError(raw)
        if kind == "array":
            return [*(previous or []), raw]
        if kind == "object":
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise ValueError(raw)
            return value
        return raw
    except ValueError:
        raise UsageError(
            f"{cmd}: --{name.replace('_', '-')} expects a {kind}, not '{raw}'"
        ) from None


async def _generic(c: RpcClient, words: list[str], as_json: bool) -> int:
    commands = {cmd["name"]: cmd for cmd in await c.call("system.commands")}
    name, rest = _split_command(words, set(commands))
    if "--help" in rest or "-h" in rest:
        print(render_commands([commands[name]], markdown=False, full=True), end="")
        return EXIT_OK
    result = await c.call(name, parse_params(commands[name], rest))
    _print(result, as_json)
    return EXIT_OK


async def run(argv: list[str]) -> int:
    ns = _global_parser().parse_args(argv)
    words: list[str] = ns.command
    if not words:
        raise UsageError("no command given; try 'autopilotctl status' or 'autopilotctl commands'")
    endpoint: Endpoint = locate(
        home=ns.home, manifest=ns.manifest, rpc_url=ns.rpc_url, token=ns.token
    )
    async with RpcClient(endpoint) as client:
        if words[0] in SHORT and (
            words[0] == "wait" or len(words) == 1 or words[1].startswith("-")
        ):
            return await SHORT[words[0]](client, words[1:], ns.json)
        return await _generic(client, words, ns.json)


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
