"""Fixtures for the Nexus's tests: a lab (home, treasury node, clock) and an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from support.nexus import NexusLab


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[NexusLab]:
    async with aiohttp.ClientSession() as http:
        yield NexusLab(tmp_path, http)
