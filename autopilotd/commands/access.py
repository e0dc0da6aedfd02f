"""Scoped tokens and spend approvals: how agents get narrow, human-confirmed access."""

from __future__ import annotations

from typing import Any, Literal

from autopilotd.commands.system import clamp_timeout
from autopilotd.errors import InvalidParams
from autopilotd.registry import Registry
from autopilotd.runtime.context import Runtime


def register(reg: Registry, rt: Runtime) -> None:
    @reg.command("auth.token_create", access="owner")
    async def token_create(scope: Literal["read", "control", "spend"]) -> dict[str, Any]:
        """Issue a narrower token for an agent or script (valid until the daemon stops).

        read: look only; control: also change the daemon's state; spend: also execute spends
        that a person approved with `approvals.approve`.
        """
        return {"token": rt.tokens.issue(scope), "scope": scope}

    @reg.command("approvals.request", access="spend")
    async def approvals_request(
        command: str, params: dict[str, Any], note: str = ""
    ) -> dict[str, Any]:
        """Ask a person to approve one money-moving command with exactly these arguments.

        The person approves with `autopilotctl approvals.approve --id ID` (or the web UI);
        then `approvals.execute` runs it once.
        """
        target = reg.get(command)
        if not target.moves_money:
            raise InvalidParams(f"'{command}' moves no money and needs no approval")
        target.bind(params)  # refuse bad arguments now, not after a person approved them
        approval = rt.approvals.request(command, params, note[:200])
        rt.events.publish("approval.requested", approval_id=approval.id, command=command)
        return {
            **approval.to_json(),
            "how_to_approve": f"autopilotctl approvals.approve --id {approval.id}",
        }

    @reg.command("approvals.list")
    async def approvals_list() -> list[dict[str, Any]]:
        """List the approvals of this daemon run, oldest first, with their status."""
        return [a.to_json() for a in rt.approvals.list()]

    @reg.command("approvals.approve", access="owner")
    async def approvals_approve(id: str) -> dict[str, Any]:
        """Approve a pending spend request (a person's decision; agents cannot call this)."""
        approval = rt.approvals.decide(id, approve=True)
        rt.events.publish("approval.approved", approval_id=id, command=approval.command)
        return approval.to_json()

    @reg.command("approvals.deny", access="owner")
    async def approvals_deny(id: str) -> dict[str, Any]:
        """Deny a pending spend request."""
        approval = rt.approvals.decide(id, approve=False)
        rt.events.publish("approval.denied", approval_id=id, command=approval.command)
        return approval.to_json()

    @reg.command("approvals.wait", access="spend")
    async def approvals_wait(id: str, timeout_s: float = 20.0) -> dict[str, Any]:
        """Wait (at most 25 s per call) until a person approves or denies the request."""
        return (await rt.approvals.wait(id, clamp_timeout(timeout_s))).to_json()

    @reg.command("approvals.execute", access="spend")
    async def approvals_execute(id: str) -> dict[str, Any]:
        """Run an approved spend exactly once and return the command's result."""
        approval = rt.approvals.take(id)
        result = await reg.call(approval.command, approval.params, scope="owner")
        rt.approvals.record_result(id, result)
        return {"id": id, "command": approval.command, "result": result}
