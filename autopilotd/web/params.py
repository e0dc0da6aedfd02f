"""Request bodies → command arguments, by the command's own parameter types.

A form sends strings; each value is converted to the type the registry declared for that
parameter (`Param.type`), then `Registry.call` checks it like any other caller's. An empty
field of an optional parameter means "use the default". JSON bodies pass through as they are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from autopilotd.errors import InvalidParams
from autopilotd.registry import Command, Param

TRUE = frozenset({"true", "on", "yes", "1"})
FALSE = frozenset({"false", "off", "no", "0", ""})


async def read_params(request: web.Request, cmd: Command) -> dict[str, Any]:
    """The arguments for `cmd` from a JSON object or a form body."""
    if request.content_type == "application/json":
        try:
            body = json.loads(await request.text() or "{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InvalidParams("the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise InvalidParams("the body must be a JSON object of named parameters")
        return body
    form = await request.post()
    return from_form(cmd, form)


def from_form(cmd: Command, form: MultiDictProxy[Any] | Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in cmd.params:
        if p.name not in form:
            continue
        if p.type == "array":
            values = form.getall(p.name) if isinstance(form, MultiDictProxy) else [form[p.name]]
            out[p.name] = [str(v) for v in values if str(v) != ""]
            continue
        raw = form[p.name]
        if not isinstance(raw, str):
            raise InvalidParams(f"'{p.name}' must be text, not a file")
        if raw.strip() == "" and p.type != "string" and p.type != "boolean":
            if p.required:
                raise InvalidParams(f"give a value for '{p.name}'")
            continue
        if raw == "" and p.type == "string" and not p.required:
            continue
        out[p.name] = convert(p, raw)
    return out


def convert(p: Param, raw: str) -> Any:
    text = raw.strip()
    try:
        if p.type == "integer":
            return int(text.replace("_", "").replace(",", ""))
        if p.type == "number":
            return float(text)
        if p.type == "boolean":
            if text.lower() in TRUE:
                return True
            if text.lower() in FALSE:
                return False
            raise ValueError(text)
        if p.type == "object":
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError(text)
            return value
    except ValueError:
        raise InvalidParams(f"'{p.name}' must be {_kind(p.type)}") from None
    return raw


def _kind(kind: str) -> str:
    return {
        "integer": "a whole number",
        "number": "a number",
        "boolean": "yes or no",
        "object": "a JSON object",
    }.get(kind, kind)
