"""Out-of-band confirmation for spends requested by agents (RELIABILITY S4, T19).

An agent holding a `spend` token cannot call a money-moving command directly. It asks for an
approval (command + exact arguments); a person approves it with the owner token (autopilotctl
or the web UI); only then can the agent execute that one call, once.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from autopilotd.errors import Conflict, NotFound

Status = Literal["pending", "approved", "denied", "executed", "expired"]


@dataclass(frozen=True)
class Approval:
    id: str
    command: str
    params: dict[str, Any]
    status: Status
    created_at: float
    expires_at: float
    note: str = ""
    result: Any = field(default=None)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Approvals:
    """Pending and settled approvals of this daemon run (kept in memory on purpose)."""

    def __init__(self, ttl_s: float = 300.0) -> None:
        self._items: dict[str, Approval] = {}
        self._ttl = ttl_s
        self._changed = asyncio.Event()

    def _set(self, approval: Approval) -> Approval:
        self._items[approval.id] = approval
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return approval

    def get(self, approval_id: str) -> Approval:
        item = self._items.get(approval_id)
        if item is None:
            raise NotFound(f"no approval with id '{approval_id}'")
        if item.status in ("pending", "approved") and time.time() > item.expires_at:
            item = self._set(replace(item, status="expired"))
        return item

    def list(self) -> list[Approval]:
        return [self.get(i) for i in sorted(self._items, key=lambda i: self._items[i].created_at)]

    def request(self, command: str, params: dict[str, Any], note: str) -> Approval:
        now = time.time()
        approval = Approval(
            id=secrets.token_hex(8),
            command=command,
            params=params,
            status="pending",
            created_at=now,
            expires_at=now + self._ttl,
            note=note,
        )
        return self._set(approval)

    def decide(self, approval_id: str, approve: bool) -> Approval:
        item = self.get(approval_id)
        if item.status != "pending":
            raise Conflict(f"approval '{approval_id}' is {item.status}, not pending")
        return self._set(replace(item, status="approved" if approve else "denied"))

    def take(self, approval_id: str) -> Approval:
        """Mark an approved item executed (exactly once) and return it."""
        item = self.get(approval_id)
        if item.status != "approved":
            raise Conflict(f"approval '{approval_id}' is {item.status}; it must be approved first")
        return self._set(replace(item, status="executed"))

    def record_result(self, approval_id: str, result: Any) -> None:
        self._set(replace(self.get(approval_id), result=result))

    async def wait(self, approval_id: str, timeout: float) -> Approval:
        try:
            async with asyncio.timeout(timeout):
                while self.get(approval_id).status == "pending":
                    await self._changed.wait()
        except TimeoutError:
            pass
        return self.get(approval_id)
