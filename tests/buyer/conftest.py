"""A market in one process for the provider's and the buyer's fast tests (support/market.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.market import Market


@pytest.fixture
def market(tmp_path: Path) -> Market:
    return Market(tmp_path)
