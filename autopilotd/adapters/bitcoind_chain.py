"""`ChainReader` over a bitcoind-compatible JSON-RPC (bitcoind, or the devnet's shim over
btcd): `getblockcount`, `getblockhash`, `getblock` (verbosity 1), `getrawtransaction`
(verbose; needs a transaction index), `gettxout` and `sendrawtransaction`."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from autopilotd.ports.chain import ChainError, ChainOutput

ALREADY = ("already in block chain", "already have transaction", "txn-already-known")
"""A broadcast refused only because the transaction is already there: done, not an error."""


class BitcoindChain:
    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        parts = urlsplit(url)
        self._url = urlunsplit(
            (parts.scheme, f"{parts.hostname}:{parts.port}", parts.path or "/", "", "")
        )
        self._auth = aiohttp.BasicAuth(parts.username or "", parts.password or "")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def _call(self, method: str, *params: Any) -> Any:
        body = {"jsonrpc": "1.0", "id": method, "method": method, "params": list(params)}
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as http,
                http.post(self._url, json=body, auth=self._auth) as r,
            ):
                answer = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ChainError(f"{method}: {type(exc).__name__}: {exc}"[:200]) from None
        if not isinstance(answer, dict):
            raise ChainError(f"{method}: not a JSON-RPC answer")
        error = answer.get("error")
        if error:
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise ChainError(f"{method}: {message}"[:300])
        return answer.get("result")

    async def tip(self) -> int:
        return int(await self._call("getblockcount"))

    async def outputs(self, height: int) -> list[ChainOutput]:
        block = await self._call("getblock", await self._call("getblockhash", height), 1)
        out = []
        for txid in block["tx"]:
            tx = await self._call("getrawtransaction", txid, 1)
            for vout in tx["vout"]:
                sats = round(float(vout["value"]) * 100_000_000)
                out.append(
                    ChainOutput(txid, int(vout["n"]), sats, vout["scriptPubKey"]["hex"], height)
                )
        return out

    async def confirmations(self, txid: str, vout: int) -> int | None:
        found = await self._call("gettxout", txid, vout, True)
        return None if not found else int(found.get("confirmations") or 0)

    async def broadcast(self, tx_hex: str) -> str:
        try:
            return str(await self._call("sendrawtransaction", tx_hex))
        except ChainError as exc:
            if any(words in str(exc).lower() for words in ALREADY):
                return ""
            raise
