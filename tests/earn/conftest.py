"""The earn loop end to end: devnet, a real local relay, psionic, provider and buyer daemons."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from support.devnet import Net, WalletDaemon

from autopilotd.adapters.local_relay import local_relay
from autopilotd.devnet import Devnet

CHANNEL_SATS = 1_000_000
PRICE_SATS = 21


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.devnet)


@dataclass
class Market:
    net: Net
    relay_url: str
    provider: WalletDaemon
    buyer: WalletDaemon

    def provider_settings(self) -> dict[str, str]:
        return {
            "relays": self.relay_url,
            "runtime_mode": "spawn",
            "runtime_args": "--threads 1",
            "provider_price_sats": str(PRICE_SATS),
            "provider_max_tokens": "16",
        }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def market(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Market]:
    root = tmp_path_factory.mktemp("earn-e2e")
    async with Devnet(root / "devnet") as devnet, local_relay(port=0) as relay:
        net = Net(devnet, devnet.client, root)
        m = Market(net, relay.url, None, None)  # type: ignore[arg-type]
        try:
            m.provider = net.daemon("provider", **m.provider_settings()).start()
            m.buyer = net.daemon("buyer", relays=relay.url).start()
            # Some sats on the provider's side, above the channel reserve and the dust limit, so
            # its node's balance reflects each 21-sat payment exactly (see docs/wallet.md).
            await net.channel(m.provider, CHANNEL_SATS, 50_000)
            await net.channel(m.buyer, CHANNEL_SATS, 600_000)
            yield m
        finally:
            for d in net.daemons:
                d.stop()
