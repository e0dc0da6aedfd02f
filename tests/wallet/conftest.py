"""A devnet (real btcd, shim, hub) shared by the wallet end-to-end tests of this folder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from support.devnet import Net

from autopilotd.devnet import Devnet


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.devnet)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def net(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Net]:
    root = tmp_path_factory.mktemp("wallet-e2e")
    async with Devnet(root / "devnet") as devnet:
        n = Net(devnet, devnet.client, root)
        try:
            yield n
        finally:
            for d in n.daemons:
                d.stop()
