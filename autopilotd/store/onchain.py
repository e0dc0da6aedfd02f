"""On-chain sends and cash-outs: one row each, written before the node is asked to send.

A row keeps what the person was shown before confirming (the quote: the amount, the fee and
whether the fee was exact or the most it could be) next to what the node then did (txid, the
amount and fee of the confirmed transaction), so both can be shown side by side. The node's
own record stays the truth about balances; this table is the intent and its outcome.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from autopilotd.store.db import Row, Sql
from autopilotd.vocab import OPEN_ONCHAIN_STATUSES, OnchainKind, OnchainStatus

COLUMNS = (
    "id, kind, status, address, fee_rate_sat_vb, quoted_sats, quoted_fee_sats, quote_exact, "
    "channels_json, txid, sent_sats, fee_sats, failure, created_at, updated_at"
)
_OPEN = ", ".join(f"'{s.value}'" for s in sorted(OPEN_ONCHAIN_STATUSES))


@dataclass(frozen=True)
class OnchainSendRow:
    id: int
    kind: OnchainKind
    status: OnchainStatus
    address: str
    fee_rate_sat_vb: int
    quoted_sats: int | None  # what the address was to receive (None: not known in advance)
    quoted_fee_sats: int  # the fee shown: exact if quote_exact, else the most it could be
    quote_exact: bool
    channels: list[dict[str, Any]]  # a cash-out's channels, as shown before confirming
    txid: str | None
    sent_sats: int | None  # what the confirmed transaction paid to the address
    fee_sats: int | None  # the fee it paid
    failure: str | None
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: Row) -> OnchainSendRow:
        v = list(row)
        v[1], v[2], v[7], v[8] = (
            OnchainKind(v[1]),
            OnchainStatus(v[2]),
            bool(v[7]),
            json.loads(v[8]),
        )
        return cls(*v)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "status": self.status.value,
            "address": self.address,
            "fee_rate_sat_vb": self.fee_rate_sat_vb,
            "quoted_sats": self.quoted_sats,
            "quoted_fee_sats": self.quoted_fee_sats,
            "quote_exact": self.quote_exact,
            "channels": self.channels,
            "txid": self.txid,
            "sent_sats": self.sent_sats,
            "fee_sats": self.fee_sats,
            "failure": self.failure,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


class OnchainSends:
    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    async def get(self, send_id: int) -> OnchainSendRow | None:
        row = await self._sql.fetchone(
            f"SELECT {COLUMNS} FROM wallet_onchain_sends WHERE id = ?", (send_id,)
        )
        return None if row is None else OnchainSendRow.from_row(row)

    async def open(self) -> list[OnchainSendRow]:
        """Every row not yet final (closing, intent, broadcast, unknown), oldest first."""
        rows = await self._sql.fetchall(
            f"SELECT {COLUMNS} FROM wallet_onchain_sends WHERE status IN ({_OPEN}) ORDER BY id"
        )
        return [OnchainSendRow.from_row(r) for r in rows]

    async def recent(self, limit: int) -> list[OnchainSendRow]:
        rows = await self._sql.fetchall(
            f"SELECT {COLUMNS} FROM wallet_onchain_sends ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [OnchainSendRow.from_row(r) for r in rows]

    async def txids(self) -> set[str]:
        rows = await self._sql.fetchall(
            "SELECT txid FROM wallet_onchain_sends WHERE txid IS NOT NULL"
        )
        return {str(r[0]) for r in rows}

    async def begin(
        self,
        *,
        kind: OnchainKind,
        status: OnchainStatus,
        address: str,
        fee_rate: int,
        quoted_sats: int | None,
        quoted_fee_sats: int,
        quote_exact: bool,
        channels: list[dict[str, Any]] | None = None,
    ) -> OnchainSendRow:
        """Record a send (or a cash-out) before the node is asked to do anything."""
        now = time.time()
        async with self._sql.write() as tx:
            await tx.execute(
                "INSERT INTO wallet_onchain_sends (kind, status, address, fee_rate_sat_vb, "
                "quoted_sats, quoted_fee_sats, quote_exact, channels_json, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    kind,
                    status,
                    address,
                    fee_rate,
                    quoted_sats,
                    quoted_fee_sats,
                    int(quote_exact),
                    json.dumps(channels or []),
                    now,
                    now,
                ),
            )
            row = await tx.fetchone(
                f"SELECT {COLUMNS} FROM wallet_onchain_sends WHERE id = last_insert_rowid()"
            )
        assert row is not None
        return OnchainSendRow.from_row(row)

    async def update(
        self,
        send_id: int,
        status: OnchainStatus,
        *,
        txid: str | None = None,
        sent_sats: int | None = None,
        fee_sats: int | None = None,
        failure: str | None = None,
    ) -> OnchainSendRow:
        """Move a row on; a txid, once known, is never replaced, and a final row stays final."""
        async with self._sql.write() as tx:
            await tx.execute(
                "UPDATE wallet_onchain_sends SET status = ?, txid = COALESCE(txid, ?), "
                "sent_sats = COALESCE(?, sent_sats), fee_sats = COALESCE(?, fee_sats), "
                f"failure = ?, updated_at = ? WHERE id = ? AND status IN ({_OPEN})",
                (status, txid, sent_sats, fee_sats, failure, time.time(), send_id),
            )
        row = await self.get(send_id)
        assert row is not None
        return row
