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

from autopilotd.codec import CodecError, from_text
from autopilotd.errors import InvalidParams
from autopilotd.registry import Command, Param


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
    """A form field's text as the parameter's value (codec.py: the same rules as the CLI's)."""
    if p.type == "boolean" and not raw.strip():
        return False  # an unchecked box sends nothing, or an empty value
    try:
        return from_text(p.type, raw)
    except CodecError as exc:
        raise InvalidParams(f"'{p.name}' {exc}") from None
