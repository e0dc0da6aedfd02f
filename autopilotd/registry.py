"""The one command registry: every control action, under one dotted name.

A command is an `async def` with typed keyword parameters and a docstring written for users.
JSON-RPC, the web UI's actions, `autopilotctl` and MCP all call `Registry.call` and nothing
else; `describe()` feeds `system.commands`, from which the CLI options, the MCP tool list and
the docs are generated. Signatures are checked when a command is registered, so a command with
an unsupported parameter type or no docstring fails at start-up, not at a user's call.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol, TypeVar

from autopilotd.codec import Bounds
from autopilotd.errors import Forbidden, InvalidParams, NotFound, NotReady

Access = Literal["read", "control", "spend", "owner"]
"""Who may call a command.

read: looks only. control: changes the daemon's state but moves no money. spend: the level of
a token that may execute spends a person approved (see `approvals.*`). owner: the full token in
the manifest; commands that move money or reveal secrets require it.
"""

ACCESS_RANK: dict[str, int] = {"read": 0, "control": 1, "spend": 2, "owner": 3}

CommandFunc = Callable[..., Awaitable[Any]]
F = TypeVar("F", bound=CommandFunc)

_SCALARS: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _is_unicode_text(value: Any) -> bool:
    """Whether every string in a JSON value, keys and nested values included, is valid Unicode.

    JSON may spell a lone surrogate (`"\\ud800"`), which no UTF-8 text can hold; refused here, it
    never reaches a command, a log line or a file.
    """
    pending = [value]
    while pending:  # a loop, not recursion: nesting as deep as the JSON parser allows is fine
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
    return True


@dataclass(frozen=True)
class Param:
    """One keyword parameter of a command, as clients see it."""

    name: str
    type: str  # string | integer | number | boolean | array | object
    required: bool
    default: Any = None
    choices: tuple[str, ...] | None = None
    nullable: bool = False
    bounds: Bounds | None = None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "required": self.required}
        if not self.required:
            out["default"] = self.default
        if self.choices is not None:
            out["choices"] = list(self.choices)
        if self.bounds is not None:
            out.update(self.bounds.schema())
        return out

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any]
        if self.type == "array":
            schema = {"type": "array", "items": {"type": "string"}}
        else:
            schema = {"type": self.type}
        if self.choices is not None:
            schema["enum"] = list(self.choices)
        if self.bounds is not None:
            schema.update(self.bounds.schema())
        if self.nullable:
            schema = {"anyOf": [schema, {"type": "null"}]}
        if not self.required:
            schema["default"] = self.default
        return schema

    def check(self, value: Any) -> Any:
        """Return `value` if it fits this parameter, else raise InvalidParams naming it."""
        if value is None and self.nullable:
            return None
        ok: bool
        if self.type == "boolean":
            ok = isinstance(value, bool)
        elif self.type == "integer":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.type == "number":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif self.type == "string":
            ok = isinstance(value, str)
        elif self.type == "array":
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        else:
            ok = isinstance(value, dict)
        if not ok:
            raise InvalidParams(f"parameter '{self.name}' must be of type {self.type}")
        if not _is_unicode_text(value):
            raise InvalidParams(
                f"parameter '{self.name}' must be valid Unicode text (it holds a lone surrogate)"
            )
        if self.choices is not None and value not in self.choices:
            raise InvalidParams(
                f"parameter '{self.name}' must be one of: {', '.join(self.choices)}"
            )
        why = self.bounds.violation(value) if self.bounds is not None else None
        if why is not None:
            raise InvalidParams(f"parameter '{self.name}' {why}")
        return value


@dataclass(frozen=True)
class Command:
    """A registered command: its name, help, parameters and who may call it."""

    name: str
    func: CommandFunc
    help: str
    params: tuple[Param, ...]
    access: Access
    moves_money: bool
    needs: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        return self.help.split("\n\n", 1)[0].replace("\n", " ")

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "help": self.help,
            "summary": self.summary,
            "access": self.access,
            "moves_money": self.moves_money,
            "needs": list(self.needs),
            "params": [p.describe() for p in self.params],
        }

    def input_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {p.name: p.json_schema() for p in self.params},
            "required": [p.name for p in self.params if p.required],
            "additionalProperties": False,
        }

    def bind(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Check JSON arguments against the signature; unknown or missing names are errors."""
        params = {} if params is None else params
        known = {p.name: p for p in self.params}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise InvalidParams(f"{self.name}: unknown parameter(s): {', '.join(unknown)}")
        bound: dict[str, Any] = {}
        for p in self.params:
            if p.name in params:
                bound[p.name] = p.check(params[p.name])
            elif p.required:
                raise InvalidParams(f"{self.name}: missing required parameter '{p.name}'")
        return bound


class RegistrationError(TypeError):
    """A command's definition is not acceptable (a programming error, found at start-up)."""


def _param_from_annotation(func_name: str, param: inspect.Parameter, hint: Any) -> Param:
    nullable = False
    bounds: Bounds | None = None
    if typing.get_origin(hint) is Annotated:
        hint, *extra = typing.get_args(hint)
        bounds = next((e for e in extra if isinstance(e, Bounds)), None)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1 or len(typing.get_args(hint)) != 2:
            raise RegistrationError(f"{func_name}: '{param.name}' may only be 'T | None'")
        nullable = True
        hint = args[0]
        origin = typing.get_origin(hint)
    required = param.default is inspect.Parameter.empty
    default = None if required else param.default
    if hint in _SCALARS:
        kind, choices = _SCALARS[hint], None
    elif origin is Literal:
        values = typing.get_args(hint)
        if not all(isinstance(v, str) for v in values):
            raise RegistrationError(f"{func_name}: '{param.name}' Literal must hold strings")
        kind, choices = "string", tuple(values)
    elif origin is list and typing.get_args(hint) == (str,):
        kind, choices = "array", None
    elif origin is dict and typing.get_args(hint)[:1] == (str,):
        kind, choices = "object", None
    else:
        raise RegistrationError(f"{func_name}: parameter '{param.name}' has unsupported type")
    if default is not None and not isinstance(default, str | int | float | bool):
        raise RegistrationError(f"{func_name}: default of '{param.name}' must be a JSON scalar")
    if bounds is not None and kind not in ("integer", "number", "string"):
        raise RegistrationError(f"{func_name}: bounds on '{param.name}' need a number or text")
    return Param(param.name, kind, required, default, choices, nullable, bounds)


def _json_result(hint: Any) -> bool:
    """Is `hint` a type whose values serialise to JSON as they are?"""
    if hint is type(None) or hint in _SCALARS:
        return True
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return all(_json_result(a) for a in args)
    if origin is list:
        return args[0] is Any or _json_result(args[0])
    if origin is dict:
        return args[0] is str and (args[1] is Any or _json_result(args[1]))
    return origin is Literal


def inspect_command(
    name: str,
    func: CommandFunc,
    access: Access,
    moves_money: bool,
    needs: Iterable[str] = (),
) -> Command:
    """Build a Command from a function, refusing anything clients could not call safely."""
    if not inspect.iscoroutinefunction(func):
        raise RegistrationError(f"{name}: a command must be an 'async def'")
    doc = inspect.getdoc(func)
    if not doc or not doc.strip():
        raise RegistrationError(f"{name}: a command needs a docstring written for users")
    if access not in ACCESS_RANK:
        raise RegistrationError(f"{name}: unknown access level {access!r}")
    if moves_money and access != "owner":
        raise RegistrationError(f"{name}: a command that moves money needs access='owner'")
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except NameError as exc:
        raise RegistrationError(f"{name}: annotations cannot be resolved ({exc})") from None
    if "return" not in hints or not _json_result(hints["return"]):
        raise RegistrationError(f"{name}: the return type must be JSON (dict, list, scalars)")
    params: list[Param] = []
    for p in inspect.signature(func).parameters.values():
        if p.kind not in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
            raise RegistrationError(f"{name}: only named parameters are supported")
        if p.name not in hints:
            raise RegistrationError(f"{name}: parameter '{p.name}' needs a type annotation")
        params.append(_param_from_annotation(name, p, hints[p.name]))
    return Command(
        name, func, doc.strip(), tuple(params), access, moves_money, tuple(sorted(set(needs)))
    )


class Preconditions(Protocol):
    """What the registry asks before running a command that declares `needs`."""

    names: frozenset[str]

    def unmet(self, need: str) -> tuple[str, str] | None:
        """Why `need` does not hold now, and what to do about it; None when it holds."""
        ...


class Registry:
    """Commands by dotted name. Built once per daemon; never a module global.

    A command may declare what it needs (`needs={"wallet"}`): while a need does not hold, the
    registry answers NotReady with the reason and the next step, the same for every caller,
    and the command never runs. `system.commands` lists each command's needs.
    """

    def __init__(self, preconditions: Preconditions | None = None) -> None:
        self._commands: dict[str, Command] = {}
        self._preconditions = preconditions

    def command(
        self,
        name: str,
        *,
        access: Access = "read",
        moves_money: bool = False,
        needs: Iterable[str] = (),
    ) -> Callable[[F], F]:
        """Decorator: register the function under `name`."""

        def decorator(func: F) -> F:
            self.add(name, func, access=access, moves_money=moves_money, needs=needs)
            return func

        return decorator

    def add(
        self,
        name: str,
        func: CommandFunc,
        *,
        access: Access = "read",
        moves_money: bool = False,
        needs: Iterable[str] = (),
    ) -> Command:
        parts = name.split(".")
        if not all(part and part.replace("_", "").isalnum() for part in parts):
            raise RegistrationError(f"{name!r}: names are dotted lower-case words")
        if name != name.lower():
            raise RegistrationError(f"{name!r}: names are lower case")
        if name in self._commands:
            raise RegistrationError(f"command {name!r} is registered twice")
        needs = tuple(needs)
        known = self._preconditions.names if self._preconditions is not None else frozenset()
        unknown = sorted(set(needs) - known)
        if unknown:
            raise RegistrationError(f"{name}: unknown need(s) {', '.join(unknown)}")
        cmd = inspect_command(name, func, access, moves_money, needs)
        self._commands[name] = cmd
        return cmd

    def get(self, name: str) -> Command:
        try:
            return self._commands[name]
        except KeyError:
            raise NotFound(
                f"no command named '{name}'; 'system.commands' lists them",
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._commands

    def commands(self) -> list[Command]:
        return [self._commands[n] for n in sorted(self._commands)]

    def describe(self) -> list[dict[str, Any]]:
        return [c.describe() for c in self.commands()]

    async def call(self, name: str, params: Mapping[str, Any] | None, *, scope: Access) -> Any:
        """Check the caller's scope and the arguments, then run the command."""
        cmd = self.get(name)
        if ACCESS_RANK[scope] < ACCESS_RANK[cmd.access]:
            raise Forbidden(f"'{name}' needs '{cmd.access}' access; this token has '{scope}'")
        bound = cmd.bind(params)
        for need in cmd.needs:
            unmet = self._preconditions.unmet(need) if self._preconditions is not None else None
            if unmet is not None:
                reason, next_step = unmet
                raise NotReady(reason, data={"need": need, "next_step": next_step})
        return await cmd.func(**bound)
