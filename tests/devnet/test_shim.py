"""The bitcoind shim against a real btcd: chainwork, mempool entries, fees, reorgs."""

from pathlib import Path

import aiohttp

from autopilotd.devnet.btcd import BtcdConfig, BtcdProcess
from autopilotd.devnet.coins import COINBASE_MATURITY, MinerKey
from autopilotd.devnet.headers import work_from_bits
from autopilotd.devnet.rpc import basic_auth_header
from autopilotd.devnet.shim import BitcoindShim, serve_shim
from autopilotd.loopback import free_port

from .conftest import Chain, ShimClient

REGTEST_BITS = 0x207FFFFF


def test_work_from_bits_matches_core() -> None:
    assert work_from_bits(REGTEST_BITS) == 2
    # Mainnet genesis: chainwork 0x100010001.
    assert work_from_bits(0x1D00FFFF) == 0x100010001


async def _chainwork_at(shim: ShimClient, height: int) -> tuple[str, int]:
    block_hash = await shim.call("getblockhash", height)
    header = await shim.call("getblockheader", block_hash)
    return block_hash, int(header["chainwork"], 16)


async def test_getblockheader_has_exact_chainwork(chain: Chain, shim: ShimClient) -> None:
    await chain.mine(5)
    for height in range(6):
        _, chainwork = await _chainwork_at(shim, height)
        assert chainwork == 2 * (height + 1)
    tip = await shim.call("getbestblockhash")
    header = await shim.call("getblockheader", tip, True)
    assert header["height"] == 5
    assert len(header["chainwork"]) == 64
    raw = await shim.call("getblockheader", tip, False)
    assert isinstance(raw, str) and len(raw) == 160


async def test_chainwork_stays_correct_across_a_reorg(chain: Chain, shim: ShimClient) -> None:
    await chain.mine(COINBASE_MATURITY + 5)
    tip = COINBASE_MATURITY + 5
    old_hash, old_work = await _chainwork_at(shim, tip - 1)
    assert old_work == 2 * tip
    # Orphan the last two blocks, then grow a longer branch that differs from the old
    # one (it carries a transaction) and make sure the cached values did not leak into it.
    await shim.call("invalidateblock", old_hash)
    assert await shim.call("getblockcount") == tip - 2
    other = MinerKey.load_or_create(chain.config.home.parent / "other.key")
    await chain.faucet.pay([(other.address, 50_000)])
    await chain.mine(4)
    for height in range(tip - 3, tip + 3):
        block_hash, chainwork = await _chainwork_at(shim, height)
        assert chainwork == 2 * (height + 1), height
        header = await shim.call("getblockheader", block_hash)
        prev = await shim.call("getblockheader", header["previousblockhash"])
        assert chainwork == int(prev["chainwork"], 16) + work_from_bits(int(header["bits"], 16))
    new_hash = await shim.call("getblockhash", tip - 1)
    assert new_hash != old_hash
    stale = await shim.call("getblockheader", old_hash)
    assert int(stale["chainwork"], 16) == 2 * tip
    assert stale["confirmations"] == -1
    assert stale["height"] == tip - 1
    info = await shim.call("getblockchaininfo")
    assert info["blocks"] == tip + 2
    assert info["bestblockhash"] == await shim.call("getbestblockhash")


async def test_getmempoolentry_from_the_mempool(chain: Chain, shim: ShimClient) -> None:
    await chain.mine(COINBASE_MATURITY + 1)
    other = MinerKey.load_or_create(chain.config.home.parent / "other.key")
    txid = await chain.faucet.pay([(other.address, 100_000)])
    assert txid in await shim.call("getrawmempool")
    entry = await shim.call("getmempoolentry", txid)
    assert entry["height"] == COINBASE_MATURITY + 1
    assert entry["time"] > 0
    assert entry["vsize"] > 0
    raw = await shim.call("getrawtransaction", txid)
    assert isinstance(raw, str)
    await chain.mine(1)
    status, reply = await shim.reply("getmempoolentry", txid)
    assert (status, reply["error"]["code"]) == (500, -5)
    status, reply = await shim.reply("getmempoolentry", "00" * 32)
    assert (status, reply["error"]["code"]) == (500, -5)
    # Confirmed transactions stay reachable through btcd's tx index.
    assert await shim.call("getrawtransaction", txid) == raw


async def test_fee_estimates(shim: ShimClient) -> None:
    estimate = await shim.call("estimatesmartfee", 6, "ECONOMICAL")
    assert estimate["feerate"] >= 0.00001
    assert estimate["blocks"] == 6
    info = await shim.call("getmempoolinfo")
    assert info["mempoolminfee"] == 0.00001
    assert info["size"] == 0


async def test_passthrough_and_errors(chain: Chain, shim: ShimClient) -> None:
    await chain.mine(1)
    tip = await shim.call("getbestblockhash")
    block = await shim.call("getblock", tip, 0)
    assert isinstance(block, str)
    status, reply = await shim.reply("nosuchmethod")
    assert (status, reply["error"]["code"]) == (404, -32601)
    status, reply = await shim.reply("getrawtransaction", "00" * 32)
    assert (status, reply["error"]["code"]) == (500, -5)


async def test_auth_is_required(shim: ShimClient) -> None:
    body = {"jsonrpc": "1.0", "id": 1, "method": "getblockcount", "params": []}
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.post(shim.url, json=body) as response:
            assert response.status == 401
        wrong = {"Authorization": basic_auth_header("ldk", "wrong")}
        async with anonymous.post(shim.url, json=body, headers=wrong) as response:
            assert response.status == 401


async def test_btcd_unreachable_is_a_json_rpc_error(tmp_path: Path, btcd_binary: Path) -> None:
    key = MinerKey.load_or_create(tmp_path / "miner.key")
    config = BtcdConfig(tmp_path / "btcd", free_port(), "u", "p", key.address)
    async with BtcdProcess(config) as btcd, config.rpc() as rpc:
        await btcd.stop()  # the shim outlives its btcd
        async with serve_shim(BitcoindShim(rpc, "ldk", "pw"), free_port()) as url:
            headers = {"Authorization": basic_auth_header("ldk", "pw")}
            body = {"jsonrpc": "1.0", "id": 7, "method": "getblockchaininfo", "params": []}
            async with (
                aiohttp.ClientSession(headers=headers) as session,
                session.post(url, json=body) as response,
            ):
                reply = await response.json()
    assert response.status == 500
    assert reply["id"] == 7
    assert reply["error"] == {"code": -1, "message": "btcd is unreachable"}
