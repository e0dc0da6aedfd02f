"""autopilotctl's command line: the global options (before or after the command), the
command's name (`a.b` or `a b`), and its `--param value` options typed by the registry's own
description of the command (values read by codec.py, as the web forms read theirs)."""

from __future__ import annotations

import argparse
import base64
from pathlib import Path
from typing import Any

from autopilotd.codec import CodecError, from_text


class UsageError(Exception):
    pass


# The global options: flag, whether it takes a value, help.
GLOBAL_OPTIONS: tuple[tuple[str, bool, str], ...] = (
    ("--home", True, "the daemon's --home directory"),
    ("--manifest", True, "path to autopilotd.json"),
    ("--rpc-url", True, "JSON-RPC URL (with --token, skips the manifest)"),
    ("--token", True, "control token (prefer the manifest; argv is visible to others)"),
    ("--json", False, "machine-readable output"),
)
TAKES_VALUE = {flag: takes_value for flag, takes_value, _ in GLOBAL_OPTIONS}


def global_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autopilotctl",
        usage="autopilotctl [options] COMMAND [command options] [options]",
        description="Control a running autopilotd over JSON-RPC.",
        epilog="Commands: status, commands, logs, events, wait, stop, web, or any dotted command "
        "name from 'autopilotctl commands' with --param value options. The options above may "
        "also follow the command, unless the command has an option of the same name.",
        allow_abbrev=False,
    )
    for flag, takes_value, help_text in GLOBAL_OPTIONS:
        if takes_value:
            p.add_argument(flag, help=help_text)
        else:
            p.add_argument(flag, action="store_true", help=help_text)
    return p


def leading_options(argv: list[str]) -> tuple[list[str], list[str], bool]:
    """Split argv at the command: (options before it, the command and the rest, scan the rest).

    The rest is not scanned for global options when `--` came before the command.
    """
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        if argv[i] == "--":
            return argv[:i], argv[i + 1 :], False
        flag, eq, _ = argv[i].partition("=")
        i += 2 if TAKES_VALUE.get(flag) and not eq else 1
    return argv[:i], argv[i:], True


def split_globals(
    args: list[str], params: list[dict[str, Any]] | None = None
) -> tuple[list[str], list[str]]:
    """Pull the global options out of the words after the command: (global, the command's).

    An option the command declares itself (`params`, from `system.commands`) stays with the
    command, with its value; so does everything after `--`.
    """
    declared = {p["name"]: p for p in params or ()}
    found: list[str] = []
    own: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            own.extend(args[i + 1 :])
            break
        flag, eq, _ = arg.partition("=")
        name = flag[2:].replace("-", "_")
        negated = name.startswith("no_") and declared.get(name[3:], {}).get("type") == "boolean"
        if arg.startswith("--") and (negated or name in declared):
            # Mirror parse_params: which of the command's options take the next word as a value.
            takes_value = not (negated or eq) and (
                declared[name]["type"] != "boolean"
                or (i + 1 < len(args) and not args[i + 1].startswith("--"))
            )
            width = 2 if takes_value else 1
            own.extend(args[i : i + width])
        elif flag in TAKES_VALUE:
            width = 2 if TAKES_VALUE[flag] and not eq else 1
            found.extend(args[i : i + width])
        else:
            width = 1
            own.append(arg)
        i += width
    return found, own


def no_more(args: list[str], name: str) -> None:
    if args:
        raise UsageError(f"{name}: unexpected arguments: {' '.join(args)}")


def parse_args(p: argparse.ArgumentParser, args: list[str]) -> argparse.Namespace:
    try:
        return p.parse_args(args)
    except (argparse.ArgumentError, SystemExit) as exc:
        raise UsageError(f"{p.prog}: {exc}") from None


def split_command(words: list[str], names: set[str]) -> tuple[str, list[str]]:
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
        from_file = name.endswith("_file") and f"{name[:-5]}_b64" in params
        if from_file:  # `--data-file PATH` for `--data-b64 <its bytes in base64>`
            name = f"{name[:-5]}_b64"
        elif name not in params:
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
        if from_file:
            out[name] = _file_b64(command["name"], key, raw)
        else:
            out[name] = _convert(command["name"], name, kind, raw, out.get(name))
    missing = [p for p, d in params.items() if d["required"] and p not in out]
    if missing:
        raise UsageError(
            f"{command['name']}: missing " + ", ".join("--" + m.replace("_", "-") for m in missing)
        )
    return out


def _file_b64(cmd: str, option: str, path: str) -> str:
    """A local file's bytes, base64, for a `*_b64` parameter given as `--*-file PATH`."""
    try:
        return base64.b64encode(Path(path).expanduser().read_bytes()).decode()
    except OSError as exc:
        raise UsageError(f"{cmd}: --{option} {path}: {exc.strerror or exc}") from None


def _convert(cmd: str, name: str, kind: str, raw: str, previous: Any) -> Any:
    """An option's text as the parameter's value (codec.py: the same rules as the web forms)."""
    if kind == "array":
        return [*(previous or []), raw]
    try:
        return from_text(kind, raw)
    except CodecError as exc:
        raise UsageError(f"{cmd}: --{name.replace('_', '-')} {exc}") from None
