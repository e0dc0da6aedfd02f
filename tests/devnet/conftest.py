"""Fixtures for the devnet tests: a real btcd on loopback, the shim in front of it."""

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from autopilotd.devnet.btcd import BtcdConfig, BtcdProcess
from autopilotd.devnet.buildcache import BinaryNotFound, find_btcd_bin
from autopilotd.devnet.coins import Faucet, MinerKey
from autopilotd.devnet.rpc import BtcdRpc, basic_auth_header
from autopilotd.devnet.shim import BitcoindShim, serve_shim
from autopilotd.loopback import free_port


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "devnet: needs the native builds (btcd, ldk-node) and starts real processes"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.devnet)


@pytest.fixture
def btcd_binary() -> Path:
    try:
        return find_btcd_bin()
    except BinaryNotFound as exc:
        pytest.fail(str(exc))


@dataclass
class Chain:
    """A running btcd with its RPC client, the miner key and the faucet."""

    config: BtcdConfig
    rpc: BtcdRpc
    key: MinerKey
    faucet: Faucet

    async def mine(self, blocks: int) -> list[str]:
        hashes: list[str] = await self.rpc.call("generate", blocks)
        return hashes


@pytest.fixture
async def chain(tmp_path: Path, btcd_binary: Path) -> AsyncIterator[Chain]:
    key = MinerKey.load_or_create(tmp_path / "miner.key")
    config = BtcdConfig(
        home=tmp_path / "btcd",
        rpc_port=free_port(),
        rpc_user="btcd",
        rpc_password=secrets.token_hex(16),
        mining_address=key.address,
    )
    async with BtcdProcess(config), config.rpc() as rpc:
        yield Chain(config, rpc, key, Faucet(rpc, key))


@dataclass
class ShimClient:
    """Talks to the shim like ldk-node does: one keep-alive HTTP connection, Basic auth."""

    session: aiohttp.ClientSession
    url: str

    async def reply(self, method: str, *params: Any) -> tuple[int, dict[str, Any]]:
        body = {"jsonrpc": "1.0", "id": "t", "method": method, "params": list(params)}
        async with self.session.post(self.url, json=body) as response:
            return response.status, await response.json(content_type=None)

    async def call(self, method: str, *params: Any) -> Any:
        status, reply = await self.reply(method, *params)
        assert reply["error"] is None, reply
        assert status == 200
        return reply["result"]


@pytest.fixture
async def shim(chain: Chain) -> AsyncIterator[ShimClient]:
    user, password = "ldk", secrets.token_hex(16)
    port = free_port()
    async with serve_shim(BitcoindShim(chain.rpc, user, password), port) as url:
        connector = aiohttp.TCPConnector(limit=1)
        headers = {"Authorization": basic_auth_header(user, password)}
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            yield ShimClient(session, url)
