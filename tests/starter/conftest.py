"""A Nexus (support/nexus.py) and a market of real daemons (support/market.py) in one process,
on one Lightning network and one clock: the provider's side of starter demand, fast."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from support.market import Market
from support.nexus import NexusLab


@pytest.fixture
def market(tmp_path: Path) -> Market:
    return Market(tmp_path)


@pytest.fixture
async def lab(tmp_path: Path, market: Market) -> AsyncIterator[NexusLab]:
    async with aiohttp.ClientSession() as http:
        yield NexusLab(tmp_path, http, lightning=market.lightning, clock=market.clock)
