"""Human renderings of registry and snapshot data (the JSON stays the truth)."""

from __future__ import annotations

from typing import Any


def render_status(snapshot: dict[str, Any]) -> str:
    d = snapshot["daemon"]
    lines = [
        f"autopilotd {d['version']}  {d['state'].upper()}  pid {d['pid']}  "
        f"up {_duration(d['uptime_s'])}  (snapshot #{snapshot['seq']})",
        f"  home     {d['home']}",
        f"  web      {d['web_url']}",
        f"  rpc      {d['rpc_url']}",
        "  services",
    ]
    for s in snapshot["services"]:
        line = f"    {s['name']:<16} {s['state']}"
        if s.get("last_error"):
            line += f"  — {s['last_error']}"
        if s.get("next_step"):
            line += f"  → {s['next_step']}"
        lines.append(line)
    starter = snapshot.get("starter")
    if starter and starter.get("state") != "off":
        lines.append(f"  starter  {starter['state']}  — {starter['reason']}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _signature(cmd: dict[str, Any]) -> str:
    parts = []
    for p in cmd["params"]:
        flag = "--" + p["name"].replace("_", "-")
        kind = "/".join(p["choices"]) if p.get("choices") else p["type"]
        parts.append(f"{flag} {kind}" if p["required"] else f"[{flag} {kind}]")
    return " ".join(parts)


def _bounds(p: dict[str, Any]) -> str:
    """ " (1..500)", " (≥ 1)", " (≤ 256 chars)" or "": a parameter's bounds, when it has any."""
    low, high, length = p.get("minimum"), p.get("maximum"), p.get("maxLength")
    if low is not None and high is not None:
        return f" ({low:g}..{high:g})"
    if low is not None:
        return f" (≥ {low:g})"
    if high is not None:
        return f" (≤ {high:g})"
    return f" (≤ {length} chars)" if length is not None else ""


def render_commands(commands: list[dict[str, Any]], *, markdown: bool, full: bool = False) -> str:
    """A command list for the terminal, or the Markdown reference kept in docs/commands.md."""
    if markdown:
        out = [
            "# Command reference",
            "",
            "Generated from `system.commands` (`autopilotctl commands --markdown`); a test checks",
            "that this file matches the registry. Every command is reachable over JSON-RPC",
            "(method = name), from `autopilotctl NAME --param value`, and from MCP when its",
            "access level is exposed there (see mcp.md). A bound in the type column (`1..500`)",
            "is checked for every caller; a command's `needs` must hold, or it answers NotReady",
            "with what to do.",
            "",
        ]
        for cmd in commands:
            out += [f"## `{cmd['name']}`", ""]
            needs = cmd.get("needs") or []
            out += [
                f"Access: `{cmd['access']}`"
                + (" · moves money" if cmd["moves_money"] else "")
                + (f" · needs: {', '.join(needs)}" if needs else ""),
                "",
            ]
            if cmd["params"]:
                out += ["| parameter | type | required | default |", "|---|---|---|---|"]
                for p in cmd["params"]:
                    kind = " \\| ".join(p["choices"]) if p.get("choices") else p["type"]
                    kind += _bounds(p)
                    default = "" if p["required"] else f"`{p['default']!r}`"
                    required = "yes" if p["required"] else "no"
                    out.append(f"| `{p['name']}` | {kind} | {required} | {default} |")
                out.append("")
            out += [cmd["help"], ""]
        return "\n".join(out)
    width = max((len(c["name"]) for c in commands), default=0)
    lines = []
    for cmd in commands:
        if full:
            lines += [f"{cmd['name']} {_signature(cmd)}".rstrip(), "", cmd["help"], ""]
        else:
            lines.append(f"{cmd['name']:<{width}}  {cmd['summary']}")
    return "\n".join(lines) + "\n"
