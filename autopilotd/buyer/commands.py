"""buy.* and reports.* commands."""

from __future__ import annotations

from typing import Any

from autopilotd.buyer.service import Buyer
from autopilotd.errors import UserError
from autopilotd.registry import Registry
from autopilotd.runtime.context import Runtime


def register(reg: Registry, rt: Runtime, buyer: Buyer) -> None:
    @reg.command("buy.submit", access="owner", moves_money=True)
    async def buy_submit(
        prompt: str,
        budget_sats: int,
        kind: int = 5050,
        providers: list[str] | None = None,
        timeout_s: float = 120.0,
        max_tokens: int | None = None,
    ) -> dict[str, Any]:
        """Buy a job from the network: publish a request and pay the first provider that delivers.

        budget_sats is the most this request may cost; an invoice above it is never paid.
        providers (hex pubkeys) limits who may answer. Returns the request; follow it with
        buy.status or buy.wait.
        """
        return await buyer.submit(kind, prompt, budget_sats, providers or [], timeout_s, max_tokens)

    @reg.command("buy.status")
    async def buy_status(request_id: str) -> dict[str, Any]:
        """Show one of our requests: status, provider, result and payment hash."""
        return await buyer.row(request_id)

    @reg.command("buy.wait")
    async def buy_wait(request_id: str, timeout_s: float = 20.0) -> dict[str, Any]:
        """Wait (at most 25 s per call) until a request is done, failed or expired."""
        return await buyer.wait(request_id, min(max(timeout_s, 0.0), 25.0))

    @reg.command("buy.history")
    async def buy_history(limit: int = 50) -> dict[str, Any]:
        """List our requests, newest first."""
        if not 1 <= limit <= 500:
            raise UserError("limit must be between 1 and 500")
        rows = await rt.store.fetchall(
            "SELECT request_id FROM buy_requests ORDER BY created_at DESC LIMIT ?", (limit,)
        )
        return {"requests": [await buyer.row(r[0]) for r in rows]}

    @reg.command("reports.nip90_payments")
    async def nip90_payments(start: float, end: float) -> dict[str, Any]:
        """Payments we sent for NIP-90 jobs between start and end (UNIX seconds), with totals.

        From the wallet ledger (only what it records as sent), bound to our requests.
        """
        rows = await rt.store.fetchall(
            "SELECT b.request_id, b.provider, w.payment_hash, w.status, w.amount_msat, "
            "w.fee_msat, w.updated_at FROM buy_requests b JOIN wallet_payments w "
            "ON w.payment_hash = b.payment_hash WHERE w.direction = 'out' "
            "AND w.updated_at >= ? AND w.updated_at < ? ORDER BY w.seq",
            (start, end),
        )
        keys = ("request_id", "provider", "payment_hash", "status", "amount_msat", "fee_msat", "at")
        payments = [dict(zip(keys, r, strict=True)) for r in rows]
        settled = [p for p in payments if p["status"] == "succeeded"]
        return {
            "payments": payments,
            "count": len(settled),
            "total_sats": sum(p["amount_msat"] for p in settled) // 1000,
            "fees_msat": sum(p["fee_msat"] or 0 for p in settled),
        }
