"""A Nexus as a provider sees it: a session by Nostr identity, and starter offers on leases.

The starter service (starter/service.py) is the only user; the HTTP adapter
(adapters/nexus_http.py) signs the session request with NIP-98 and keeps the bearer token. A
refusal carries the Nexus's HTTP status and its stable code (`starter_offer_heartbeat_missed`
…); a Nexus that cannot be reached, or answers what is not its protocol, is `NexusUnreachable`.
Nothing a Nexus says is proof of payment: the provider confirms completion only after its own
wallet reported the payment settled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol


class NexusRefused(Exception):
    """The Nexus answered with an error: its HTTP status, its code, its message."""

    def __init__(self, status: int, code: str, message: str = "") -> None:
        super().__init__(f"{status} {code}: {message or code}")
        self.status = status
        self.code = code
        self.message = message or code.replace("_", " ")


class NexusUnreachable(Exception):
    """No answer, or not a Nexus's answer (the reason is short and safe to show)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class NexusSession:
    session_id: str
    pubkey: str  # ours, as the Nexus bound it (the NIP-98 signer)
    nexus_pubkey: str  # who signs the starter requests
    relay_url: str
    expires_at: float


@dataclass(frozen=True)
class StarterOffer:
    """One offer as the Nexus reported it (its clock: deadlines are the Nexus's)."""

    offer_id: str
    status: str
    kind: int
    price_msat: int
    request_id: str | None  # the NIP-90 request, once acked
    reason: str | None
    start_confirm_by: float | None
    execution_expires_at: float | None
    next_heartbeat_due_at: float | None
    payment_hash: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StarterOffer:
        """Parse the Nexus's offer JSON; a field of the wrong type raises ValueError."""

        def number(name: str) -> float | None:
            value = data.get(name)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"offer field {name} is not a number")
            return float(value)

        def text(name: str, required: bool = False) -> str | None:
            value = data.get(name)
            if value is None and not required:
                return None
            if not isinstance(value, str) or len(value) > 512:
                raise ValueError(f"offer field {name} is not a string")
            return value

        kind, price = data.get("request_kind"), data.get("price_sats")
        if not isinstance(kind, int) or not isinstance(price, int) or price < 0:
            raise ValueError("offer kind or price missing")
        return cls(
            offer_id=text("request_id", True) or "",
            status=text("status", True) or "",
            kind=kind,
            price_msat=price * 1000,
            request_id=text("nostr_request_id"),
            reason=text("reason"),
            start_confirm_by=number("start_confirm_by"),
            execution_expires_at=number("execution_expires_at"),
            next_heartbeat_due_at=number("next_heartbeat_due_at"),
            payment_hash=text("payment_hash"),
        )


@dataclass(frozen=True)
class PollAnswer:
    eligible: bool
    reason: str | None
    offers: tuple[StarterOffer, ...]
    budget: Mapping[str, int]
    heartbeat_interval_s: float


class NexusClient(Protocol):
    @property
    def url(self) -> str: ...

    async def open_session(self) -> NexusSession:
        """Open a session signed by our identity (NIP-98); later calls use its token."""
        ...

    async def poll(self) -> PollAnswer: ...

    async def ack(self, offer_id: str) -> StarterOffer: ...

    async def heartbeat(self, offer_id: str) -> StarterOffer: ...

    async def fail(self, offer_id: str, reason: str) -> StarterOffer: ...

    async def complete(self, offer_id: str, payment_hash: str) -> StarterOffer: ...

    async def close(self) -> None: ...


NexusFactory = Callable[[str], NexusClient]
"""Makes the client for a Nexus URL (the setting `nexus_url`)."""
