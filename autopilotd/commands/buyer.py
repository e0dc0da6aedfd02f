"""buy.* and reports.* commands."""

from __future__ import annotations

from typing import Annotated, Any

from autopilotd.buyer.service import Buyer
from autopilotd.codec import Bounds
from autopilotd.commands.system import clamp_timeout
from autopilotd.nostr.nip90 import KIND_TEXT_GENERATION
from autopilotd.registry import Registry
from autopilotd.runtime.context import Runtime


def register(reg: Registry, rt: Runtime, buyer: Buyer) -> None:
    @reg.command("buy.submit", access="owner", moves_money=True, needs={"identity"})
    async def buy_submit(
        prompt: str,
        budget_sats: Annotated[int, Bounds(minimum=1)],
        kind: int = KIND_TEXT_GENERATION,
        providers: list[str] | None = None,
        timeout_s: Annotated[float, Bounds(5, 3600)] = 120.0,
        max_tokens: int | None = None,
    ) -> dict[str, Any]:
        """Buy a job from the network: publish a request and pay the first provider that delivers.

        budget_sats is the most this request may cost; an invoice above it is never paid.
        providers (hex pubkeys) limits who may answer. Returns the request; follow it with
        buy.status or buy.wait.
        """
        row = await buyer.submit(kind, prompt, budget_sats, providers or [], timeout_s, max_tokens)
        return row.to_json()

    @reg.command("buy.status")
    async def buy_status(request_id: str) -> dict[str, Any]:
        """Show one of our requests: status, provider, result and payment hash."""
        return (await buyer.get(request_id)).to_json()

    @reg.command("buy.wait")
    async def buy_wait(request_id: str, timeout_s: float = 20.0) -> dict[str, Any]:
        """Wait (at most 25 s per call) until a request is done, failed or expired."""
        return (await buyer.wait(request_id, clamp_timeout(timeout_s))).to_json()

    @reg.command("buy.history")
    async def buy_history(limit: Annotated[int, Bounds(1, 500)] = 50) -> dict[str, Any]:
        """List our requests, newest first."""
        return {"requests": [r.to_json() for r in await buyer.requests.history(limit)]}

    @reg.command("reports.nip90_payments")
    async def nip90_payments(start: float, end: float) -> dict[str, Any]:
        """Payments we sent for NIP-90 jobs between start and end (UNIX seconds), with totals.

        From the wallet ledger (only what it records as sent), bound to our requests.
        """
        payments = await buyer.requests.nip90_payments(start, end)
        settled = [p for p in payments if p["status"] == "succeeded"]
        return {
            "payments": payments,
            "count": len(settled),
            "total_sats": sum(p["amount_msat"] for p in settled) // 1000,
            "fees_msat": sum(p["fee_msat"] or 0 for p in settled),
        }
