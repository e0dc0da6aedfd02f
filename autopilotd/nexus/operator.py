"""The Nexus's operator: a file that says where it runs, and the treasury's own endpoints.

While it serves, the Nexus keeps `nexus.json` in its runtime directory (0600): its URL, its
relay's URL, its public key, its pid and an operator token made at each start. The operator
endpoints answer only on loopback and only with that token (`Authorization: Bearer …`), so
only someone who can read the Nexus's files can use them:

    GET  /operator/treasury     state, network, node id, listening address, balances
    POST /operator/receive      {"amount_sats": N}: a BOLT11 invoice into the treasury
    POST /operator/address      a new on-chain address of the treasury

`autopilotd nexus treasury|receive|address --home DIR` call them (docs/nexus.md).
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from autopilotd.errors import UserError
from autopilotd.nexus.desk import NexusError
from autopilotd.paths import write_private_atomic
from autopilotd.runtime.state import StateStore
from autopilotd.wallet.service import Wallet

INVOICE_EXPIRY_S = 3600
MAX_RECEIVE_SATS = 10_000_000


@dataclass(frozen=True)
class NexusFile:
    url: str
    relay_url: str
    pubkey: str
    pid: int
    operator_token: str

    @staticmethod
    def path(runtime_dir: Path) -> Path:
        return runtime_dir / "nexus.json"

    def write(self, runtime_dir: Path) -> None:
        data = json.dumps(dataclasses.asdict(self), indent=2).encode()
        write_private_atomic(self.path(runtime_dir), data)

    @classmethod
    def read(cls, runtime_dir: Path) -> NexusFile:
        path = cls.path(runtime_dir)
        try:
            data = json.loads(path.read_text())
            found = cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})
        except FileNotFoundError:
            raise UserError(f"no Nexus is running with this home ({path} does not exist)") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path} is not readable: {exc}") from None
        if found.pid != os.getpid() and not _alive(found.pid):
            raise UserError(f"the Nexus that wrote {path} is not running (pid {found.pid})")
        return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Operator:
    """The operator endpoints over the treasury wallet (see the module docstring)."""

    def __init__(self, *, wallet: Wallet, state: StateStore) -> None:
        self._wallet = wallet
        self._state = state
        self.token = secrets.token_urlsafe(32)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/operator/treasury", self.treasury)
        app.router.add_post("/operator/receive", self.receive)
        app.router.add_post("/operator/address", self.address)

    def _check(self, request: web.Request) -> None:
        try:
            loopback = ipaddress.ip_address(request.remote or "").is_loopback
        except ValueError:
            loopback = False
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if not loopback or scheme.lower() != "bearer":
            raise NexusError(403, "operator_only", "operator endpoints answer on loopback only")
        if not hmac.compare_digest(token.strip().encode(), self.token.encode()):
            raise NexusError(403, "operator_only", "wrong operator token (see nexus.json)")

    async def treasury(self, request: web.Request) -> web.Response:
        self._check(request)
        section = self._state.current.wallet
        return web.json_response(
            {
                "state": section.state.value,
                "reason": section.reason,
                "network": section.network,
                "node_id": section.node_id,
                "listening": section.listening,
                "balance": None if section.balance is None else dataclasses.asdict(section.balance),
            }
        )

    async def receive(self, request: web.Request) -> web.Response:
        self._check(request)
        try:
            body = await request.json()
            sats = body["amount_sats"]
        except (ValueError, KeyError, TypeError):
            raise NexusError(400, "amount_sats_required") from None
        if not isinstance(sats, int) or isinstance(sats, bool) or not 0 < sats <= MAX_RECEIVE_SATS:
            raise NexusError(400, "amount_sats_invalid", f"1 to {MAX_RECEIVE_SATS} sats")
        try:
            invoice = await self._wallet.receive(
                sats * 1000, "nexus treasury funding", INVOICE_EXPIRY_S
            )
        except UserError as exc:
            raise NexusError(409, "treasury_not_ready", exc.message) from None
        return web.json_response(
            {"bolt11": invoice.bolt11, "payment_hash": invoice.payment_hash, "amount_sats": sats}
        )

    async def address(self, request: web.Request) -> web.Response:
        self._check(request)
        try:
            address = await self._wallet.require_node().onchain_address()
        except UserError as exc:
            raise NexusError(409, "treasury_not_ready", exc.message) from None
        return web.json_response({"address": address})
