"""On-chain sends and cash-out against the fake node: the command rules, errors and restarts.

The fake prices a send with its own simple model; that what a preview shows is what the real
node moves is checked on the devnet (test_onchain_e2e.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
from embit import bech32
from support import DaemonFactory, InProcessDaemon, wallet_daemon

import autopilotd.wallet.runner as runner
from autopilotd.adapters.fake_lightning import FakeNetwork, FakeNode
from autopilotd.app import Adapters
from autopilotd.client import RpcError
from autopilotd.ports.lightning import NodeError
from autopilotd.store import Store
from autopilotd.store.onchain import OnchainSends
from autopilotd.vocab import OnchainKind, OnchainStatus


@pytest.fixture(autouse=True)
def quick_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sends move on at each refresh of the wallet: every 50 ms here instead of 5 s."""
    monkeypatch.setattr(runner, "BALANCE_REFRESH_S", 0.05)


@pytest.fixture
def net() -> FakeNetwork:
    return FakeNetwork()


def address(version: int = 0, size: int = 20, hrp: str = "bcrt") -> str:
    return str(bech32.encode(hrp, version, os.urandom(size)))


async def funded(
    factory: DaemonFactory, net: FakeNetwork, *coins: int
) -> tuple[InProcessDaemon, FakeNode]:
    d, node = await wallet_daemon(factory, net, "me", 0)
    for sats in coins:
        node.deposit(sats)
    node.mine()
    return d, node


async def until(d: InProcessDaemon, send_id: int, status: str) -> dict[str, Any]:
    for _ in range(200):
        sends = (await d.call("wallet.onchain_sends"))["sends"]
        row = next(s for s in sends if s["id"] == send_id)
        if row["status"] == status:
            return row
        await asyncio.sleep(0.02)
    raise AssertionError(f"send {send_id} stayed {row['status']}, never {status}: {row}")


async def test_preview_then_send_moves_what_was_shown_once(
    daemon_factory: DaemonFactory, net: FakeNetwork
) -> None:
    d, node = await funded(daemon_factory, net, 500_000)
    to = address(1, 32)  # a taproot output: 43 vbytes
    params = {"address": to, "amount_sats": 100_000, "fee_rate_sat_vb": 5}
    preview = await d.call("wallet.onchain_preview", params)
    assert preview["amount_sats"] == 100_000 and preview["fee_exact"] and preview["coins"] == 1
    assert preview["fee_sats"] == 5 * (11 + 68 + 43 + 31) and preview["uri"] == f"bitcoin:{to}"
    assert preview["total_sats"] == 100_000 + preview["fee_sats"]
    assert node.onchain_sends == 0  # a preview sends nothing

    sent = await d.call("wallet.onchain_send", {**params, "max_fee_sats": preview["fee_sats"]})
    assert sent["status"] == "broadcast" and sent["txid"] and not sent["repeated"]
    assert (sent["quoted_sats"], sent["quoted_fee_sats"]) == (100_000, preview["fee_sats"])
    # A double click, a retry, ten at once: the same send comes back, the node sends once.
    again = await asyncio.gather(*(d.call("wallet.onchain_send", params) for _ in range(10)))
    assert all(a["repeated"] and a["id"] == sent["id"] for a in again)
    assert node.onchain_sends == 1

    node.mine()
    done = await until(d, sent["id"], "confirmed")
    assert (done["sent_sats"], done["fee_sats"]) == (100_000, preview["fee_sats"])
    balance = await d.call("wallet.balance")
    assert balance["onchain_sats"] == 500_000 - 100_000 - preview["fee_sats"]
    # Once in a block, the same amount to the same address is a new send.
    second = await d.call("wallet.onchain_send", params)
    assert not second["repeated"] and second["id"] != sent["id"] and node.onchain_sends == 2
    events = await d.call("events.wait", {"after": 0, "timeout_s": 0, "limit": 1000})
    names = [e["name"] for e in events["events"]]
    assert names.count("wallet.onchain_sent") == 2 and "wallet.onchain_confirmed" in names


async def test_bad_input_gets_a_clear_error_and_sends_nothing(
    daemon_factory: DaemonFactory, net: FakeNetwork
) -> None:
    d, node = await funded(daemon_factory, net, 50_000)
    ok = {"address": address(), "amount_sats": 10_000, "fee_rate_sat_vb": 2}
    typo = ok["address"][:-1] + ("q" if ok["address"][-1] != "q" else "p")
    cases = [
        ({"address": "not an address"}, "not a valid Bitcoin address"),
        ({"address": typo}, "not a valid Bitcoin address"),
        ({"address": address(hrp="bc")}, "for bitcoin \\(mainnet\\); the wallet runs on regtest"),
        ({"address": address(hrp="tb")}, "for testnet or signet"),
        ({"address": f"bitcoin:{address()}?amount=1"}, "paste the address alone"),
        ({"amount_sats": 0}, "must be positive"),
        ({"amount_sats": 293}, "below the dust limit .*294 sats"),
        ({"amount_sats": 60_000}, "not enough on chain"),
        ({"fee_rate_sat_vb": 0}, "fee_rate_sat_vb"),
        ({"fee_rate_sat_vb": 1001}, "fee_rate_sat_vb"),
        ({"max_fee_sats": 10}, "more than the 10 sats you confirmed: preview the send again"),
    ]
    for change, message in cases:
        with pytest.raises(RpcError, match=message):
            await d.call("wallet.onchain_send", {**ok, **change})
        if "max_fee_sats" not in change:
            with pytest.raises(RpcError, match=message):
                await d.call("wallet.onchain_preview", {**ok, **change})
    # A plain bitcoin: link and an upper-case address (as QR codes carry them) are fine.
    upper = f"bitcoin:{address().upper()}"
    assert (await d.call("wallet.onchain_preview", {**ok, "address": upper}))["fee_exact"]
    node.fail_onchain = NodeError("the node could not build the transaction")
    with pytest.raises(RpcError, match="nothing was sent: the node could not build"):
        await d.call("wallet.onchain_send", ok)
    assert node.onchain_sends == 0 and node.coins == [50_000]
    [failed] = (await d.call("wallet.onchain_sends"))["sends"]
    assert failed["status"] == "failed" and "could not build" in failed["failure"]
    # A failed send is final: the same send may be made again, and goes through once.
    retry = await d.call("wallet.onchain_send", ok)
    assert retry["status"] == "broadcast" and node.onchain_sends == 1


async def test_only_the_owner_moves_money(daemon: InProcessDaemon) -> None:
    commands = {c["name"]: c for c in await daemon.call("system.commands")}
    for name in ("wallet.onchain_send", "wallet.cash_out"):
        assert commands[name]["access"] == "owner" and commands[name]["moves_money"], name
    for name in ("wallet.onchain_preview", "wallet.cash_out_preview", "wallet.onchain_sends"):
        assert commands[name]["access"] == "read" and not commands[name]["moves_money"], name
    with pytest.raises(RpcError, match="the wallet is not set up yet"):
        await daemon.call("wallet.cash_out_preview", {"address": address(), "fee_rate_sat_vb": 1})


async def test_cash_out_closes_every_channel_then_sweeps_what_was_shown(
    daemon_factory: DaemonFactory, net: FakeNetwork
) -> None:
    d, node = await funded(daemon_factory, net, 40_000)
    node.add_channel(300_000)
    node.add_channel(200)  # below the dust limit: its close pays nothing back
    to = address()
    params = {"address": to, "fee_rate_sat_vb": 3}
    preview = await d.call("wallet.cash_out_preview", params)
    assert [c["returns_sats"] for c in preview["channels"]] == [300_000, 0]
    assert all(
        c["closing_fee_sats"] == 0 and c["opened_by"] == "the peer" for c in preview["channels"]
    )
    assert preview["coins"] == 2 and preview["exact"] and preview["can_close"]
    assert preview["fee_sats"] == 3 * (11 + 68 * 2 + 31)
    assert preview["amount_sats"] == 40_000 + 300_000 - preview["fee_sats"]

    started = await d.call("wallet.cash_out", {**params, "max_fee_sats": preview["fee_sats"]})
    assert started["status"] == "closing" and node.open_channels == []
    assert [c["returns_sats"] for c in started["channels"]] == [300_000, 0]
    again = await d.call("wallet.cash_out", params)
    assert again["repeated"] and again["id"] == started["id"]
    with pytest.raises(RpcError, match=r"cash-out to .* is under way"):
        await d.call("wallet.cash_out", {**params, "address": address()})
    await asyncio.sleep(0.2)
    assert node.onchain_sends == 0  # no sweep while the closes wait for a block

    node.mine()  # the closing transactions confirm: the sweep goes out
    swept = await until(d, started["id"], "broadcast")
    assert swept["txid"] and node.onchain_sends == 1 and node.coins == []
    node.mine()
    done = await until(d, started["id"], "confirmed")
    assert (done["sent_sats"], done["fee_sats"]) == (preview["amount_sats"], preview["fee_sats"])


async def test_cash_out_refuses_what_it_cannot_do(
    daemon_factory: DaemonFactory, net: FakeNetwork
) -> None:
    d, node = await funded(daemon_factory, net)
    params = {"address": address(), "fee_rate_sat_vb": 2}
    with pytest.raises(RpcError, match="nothing on chain"):
        await d.call("wallet.cash_out_preview", params)
    channel = node.add_channel(100_000)
    node.open_channels[0] = dataclasses.replace(channel, usable=False)  # its peer is away
    preview = await d.call("wallet.cash_out_preview", params)
    assert not preview["can_close"] and preview["blocked_by"]
    with pytest.raises(
        RpcError, match=r"not connected\): try again when it is; nothing was closed"
    ):
        await d.call("wallet.cash_out", params)
    assert node.open_channels and (await d.call("wallet.onchain_sends"))["sends"] == []
    node.open_channels[0] = channel
    node.fail_onchain = NodeError("the channel could not be closed (is the peer connected?)")
    with pytest.raises(RpcError, match="could not be closed"):
        await d.call("wallet.cash_out", params)
    [failed] = (await d.call("wallet.onchain_sends"))["sends"]
    assert failed["kind"] == "cash_out" and failed["status"] == "failed"
    # A channel this wallet opened: its closing fee is agreed at close, so the sweep's amount
    # is not known in advance and the preview says so.
    node.add_channel(50_000, opened_by_us=True)
    preview = await d.call("wallet.cash_out_preview", params)
    mine = [c for c in preview["channels"] if c["opened_by"] == "this wallet"]
    assert mine[0]["closing_fee_sats"] is None and mine[0]["returns_sats"] is None
    assert preview["amount_sats"] is None and not preview["exact"]


async def _restart(
    d: InProcessDaemon, node: FakeNode, factory: DaemonFactory, rows: list[dict[str, Any]]
) -> InProcessDaemon:
    """Stop the daemon, write on-chain intents as a crash would leave them, start again."""
    await d.stop()
    store = await Store.open(d.paths.database_file)
    for row in rows:
        await OnchainSends(store).begin(**row)
    await store.close()
    restarted = await factory(
        home=d.paths.home,
        adapters=Adapters(node_factory=lambda m: node),
        wallet_network="regtest",
        wallet_bitcoind_rpc_url="http://u:p@127.0.0.1:1",
    )
    assert (await restarted.call("wait.until", {"condition": "wallet-ready"}))["met"]
    return restarted


def _intent(to: str, sats: int | None, kind: OnchainKind = OnchainKind.SEND) -> dict[str, Any]:
    return {
        "kind": kind,
        "status": OnchainStatus.INTENT,
        "address": to,
        "fee_rate": 2,
        "quoted_sats": sats,
        "quoted_fee_sats": 500,
        "quote_exact": True,
    }


async def test_a_send_cut_off_by_a_crash_is_never_sent_twice(
    daemon_factory: DaemonFactory, net: FakeNetwork, tmp_path: Path
) -> None:
    """An intent the node took is matched with its transaction; one it never saw is 'not
    sent'; neither is sent again."""
    d, node = await funded(daemon_factory, net, 80_000, 70_000)
    taken, lost = address(), address()
    from autopilotd.ports.onchain import parse_destination

    await node.send_onchain(parse_destination(taken, "regtest"), 12_345, 2)  # before the crash
    node.mine()
    d = await _restart(d, node, daemon_factory, [_intent(taken, 12_345), _intent(lost, 5_000)])
    sends = {s["address"]: s for s in (await d.call("wallet.onchain_sends"))["sends"]}
    assert sends[lost]["status"] == "failed" and "not sent" in sends[lost]["failure"]
    matched = await until(d, sends[taken]["id"], "confirmed")
    assert matched["sent_sats"] == 12_345 and node.onchain_sends == 1


async def test_a_cash_out_resumes_after_a_restart(
    daemon_factory: DaemonFactory, net: FakeNetwork
) -> None:
    """A cash-out stopped before its sweep sweeps after the restart (everything, once)."""
    d, node = await funded(daemon_factory, net, 90_000)
    to = address()
    d = await _restart(d, node, daemon_factory, [_intent(to, None, OnchainKind.CASH_OUT)])
    [row] = (await d.call("wallet.onchain_sends"))["sends"]
    row = await until(d, row["id"], "broadcast")
    assert node.onchain_sends == 1 and node.coins == []
    node.mine()
    done = await until(d, row["id"], "confirmed")
    assert done["sent_sats"] == 90_000 - done["fee_sats"]
