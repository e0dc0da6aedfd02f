"""Each vocabulary (vocab.py) is exactly what its table's CHECK constraint admits."""

from __future__ import annotations

import enum
import re
from pathlib import Path

import pytest

from autopilotd.store import Store
from autopilotd.vocab import (
    BuyStatus,
    JobSource,
    JobStage,
    OutboxPurpose,
    PaymentDirection,
    PaymentStatus,
)

CHECKS = [
    ("jobs", "stage", JobStage),
    ("jobs", "source", JobSource),
    ("job_outbox", "purpose", OutboxPurpose),
    ("wallet_payments", "direction", PaymentDirection),
    ("wallet_payments", "status", PaymentStatus),
    ("buy_requests", "status", BuyStatus),
]


@pytest.mark.parametrize(("table", "column", "vocabulary"), CHECKS)
async def test_enum_values_match_the_check_constraint(
    tmp_path: Path, table: str, column: str, vocabulary: type[enum.StrEnum]
) -> None:
    store = await Store.open(tmp_path / "db.sqlite3")
    try:
        row = await store.fetchone("SELECT sql FROM sqlite_master WHERE name = ?", (table,))
    finally:
        await store.close()
    assert row is not None
    match = re.search(rf"\b{column}\b[^,]*?CHECK \({column} IN\s*\(([^)]*)\)\)", row[0], re.S)
    assert match, f"no CHECK constraint on {table}.{column}"
    allowed = set(re.findall(r"'([^']*)'", match.group(1)))
    assert allowed == {v.value for v in vocabulary}
