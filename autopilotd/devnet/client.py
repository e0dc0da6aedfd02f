"""A client for a running devnet's control API (see control.py)."""

from dataclasses import dataclass
from typing import Any

import aiohttp

from autopilotd.devnet.state import DevnetInfo


class DevnetError(RuntimeError):
    """The devnet refused or failed an operation (the message is the devnet's)."""


@dataclass(frozen=True)
class ChannelOpened:
    """A channel from the hub to a participant, confirmed and usable on the hub's side."""

    user_channel_id: str
    funding_txid: str
    channel_sats: int
    push_sats: int
    hub_node_id: str


class DevnetClient:
    """Mine, fund and open channels on a running devnet, from any process."""

    def __init__(self, control_url: str, token: str, timeout_s: float = 180.0) -> None:
        self._url = control_url
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    @classmethod
    def for_info(cls, info: DevnetInfo) -> "DevnetClient":
        """A client for the devnet described by `info`."""
        return cls(info.control_url, info.control_token)

    async def _call(self, name: str, body: dict[str, Any] | None = None) -> Any:
        async with (
            aiohttp.ClientSession(headers=self._headers, timeout=self._timeout) as session,
            session.post(f"{self._url}/v1/{name}", json=body or {}) as response,
        ):
            reply = await response.json(content_type=None)
        if response.status != 200:
            raise DevnetError(f"{name}: {reply.get('error', response.reason)}")
        return reply["result"]

    async def status(self) -> dict[str, Any]:
        """Height, mempool size, the hub's node id, address, balances and channels."""
        result: dict[str, Any] = await self._call("status")
        return result

    async def mine(self, blocks: int = 1) -> list[str]:
        """Mine `blocks` blocks; returns their hashes."""
        result = await self._call("mine", {"blocks": blocks})
        hashes: list[str] = result["hashes"]
        return hashes

    async def reorg(self, depth: int) -> dict[str, Any]:
        """Replace the last `depth` blocks with a longer branch; returns old and new tip."""
        result: dict[str, Any] = await self._call("reorg", {"depth": depth})
        return result

    async def fund(self, address: str, sats: int, confirmations: int = 1) -> str:
        """Send `sats` on chain to `address` and mine `confirmations` blocks; returns the txid."""
        body = {"address": address, "sats": sats, "confirmations": confirmations}
        result = await self._call("fund", body)
        txid: str = result["txid"]
        return txid

    async def open_channel(
        self, node_id: str, address: str, sats: int, push_sats: int = 0
    ) -> ChannelOpened:
        """Have the hub open a `sats` channel to a participant and confirm it.

        `push_sats` start on the participant's side (its outbound liquidity, e.g. a buyer's
        spending money); the rest is the hub's, i.e. the participant's inbound liquidity (what
        a provider needs to get paid). Returns once the hub sees the channel ready; the
        participant sees its own `ChannelReady` event within a chain poll (about 2 s).
        """
        body = {"node_id": node_id, "address": address, "sats": sats, "push_sats": push_sats}
        result = await self._call("open_channel", body)
        return ChannelOpened(**result)

    async def lsp_open_channel(
        self, node_id: str, address: str, sats: int, push_sats: int = 0
    ) -> ChannelOpened:
        """Have the devnet's LSP open a channel to a participant (a payer) and confirm it.

        `hub_node_id` in the answer is the LSP's node id. A payer needs such a channel to
        pay an invoice whose last hop is a just-in-time channel of the LSP.
        """
        body = {"node_id": node_id, "address": address, "sats": sats, "push_sats": push_sats}
        result = await self._call("lsp_open_channel", body)
        return ChannelOpened(**result)

    async def hub_invoice(self, amount_msat: int, description: str = "devnet hub") -> str:
        """A BOLT11 invoice made by the hub (something for a participant to pay)."""
        result = await self._call(
            "hub_invoice", {"amount_msat": amount_msat, "description": description}
        )
        bolt11: str = result["bolt11"]
        return bolt11

    async def hub_payment(self, payment_hash: str) -> dict[str, Any] | None:
        """The hub's record of a payment: `status` PENDING | SUCCEEDED | FAILED, `direction`
        INBOUND | OUTBOUND, `amount_msat`, `fee_paid_msat`; None when the hub has none."""
        result: dict[str, Any] | None = await self._call(
            "hub_payment", {"payment_hash": payment_hash}
        )
        return result

    async def hub_pay(self, bolt11: str) -> dict[str, Any]:
        """Have the hub pay a participant's invoice; returns payment id and fee."""
        result: dict[str, Any] = await self._call("hub_pay", {"bolt11": bolt11})
        return result
