"""The one error hierarchy of autopilotd.

Every error a client may see is an `AutopilotError`: it carries a stable JSON-RPC code and a
message written for users. Anything else that escapes a command is internal: the control plane
logs it with its traceback and answers a generic message with a correlation id, so no exception
text leaks to clients.
"""

from __future__ import annotations

from typing import Any, ClassVar


class AutopilotError(Exception):
    """Base of the errors that are shown to users as they are."""

    code: ClassVar[int] = -32000
    http_status: ClassVar[int] = 200

    def __init__(self, message: str, *, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data or {}


class UserError(AutopilotError):
    """The request cannot be done as asked; the message says why and what to do."""

    code = -32010


class InvalidParams(UserError):
    """A command argument is missing, unknown or of the wrong type."""

    code = -32602


class NotFound(UserError):
    """The named thing (command, approval, job …) does not exist."""

    code = -32011


class Conflict(UserError):
    """The request clashes with the current state (already done, already running …)."""

    code = -32012


class NotReady(AutopilotError):
    """A service this needs is not ready yet; retry later or fix the blocker it names."""

    code = -32020


class AuthFailed(AutopilotError):
    """The caller's credentials are missing or wrong."""

    code = -32030
    http_status = 401


class Forbidden(AuthFailed):
    """The caller's credentials do not allow this command."""

    code = -32031
    http_status = 403


class StartupCheckFailed(AutopilotError):
    """A start-up assertion failed; the daemon refuses to run rather than risk money or data."""

    code = -32040


class DaemonNotRunning(AutopilotError):
    """No live daemon answers at the manifest's address."""

    code = -32050
