"""Channel recovery's table (wallet/recovery.py): each old channel's close output found for
this seed, and its sweep. A sweep is recorded (its signed transaction) before it is sent, so a
crash sends the same transaction again, never a second one."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from autopilotd.store.db import Sql

COLUMNS = (
    "outpoint, kind, key_index, sats, height, status, sweep_txid, sweep_hex, fee_sats, "
    "sent_sats, error"
)


@dataclass(frozen=True)
class Recovery:
    outpoint: str  # txid:vout
    kind: str
    key_index: int
    sats: int
    height: int
    status: str  # found → sweeping → swept → confirmed, or too_small
    sweep_txid: str | None = None
    sweep_hex: str | None = None
    fee_sats: int | None = None
    sent_sats: int | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        shown = asdict(self)
        del shown["sweep_hex"], shown["key_index"]
        return shown


class Recoveries:
    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    async def all(self) -> list[Recovery]:
        rows = await self._sql.fetchall(
            f"SELECT {COLUMNS} FROM channel_recoveries ORDER BY height, outpoint"
        )
        return [Recovery(*r) for r in rows]

    async def scanned(self) -> int | None:
        row = await self._sql.fetchone("SELECT height FROM channel_recovery_scan WHERE id = 1")
        return None if row is None else int(row[0])

    async def found(self, height: int, found: list[Recovery]) -> None:
        """Record what block `height` held for us, and that it was scanned, in one go."""
        now = time.time()
        async with self._sql.write() as tx:
            for r in found:
                await tx.execute(
                    "INSERT OR IGNORE INTO channel_recoveries (outpoint, kind, key_index, sats, "
                    "height, status, created_at, updated_at) VALUES (?,?,?,?,?,'found',?,?)",
                    (r.outpoint, r.kind, r.key_index, r.sats, r.height, now, now),
                )
            await tx.execute(
                "INSERT INTO channel_recovery_scan (id, height) VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET height = excluded.height",
                (height,),
            )

    async def update(self, outpoint: str, **changes: Any) -> None:
        names = ", ".join(f"{k} = ?" for k in changes)
        async with self._sql.write() as tx:
            await tx.execute(
                f"UPDATE channel_recoveries SET {names}, updated_at = ? WHERE outpoint = ?",
                (*changes.values(), time.time(), outpoint),
            )
