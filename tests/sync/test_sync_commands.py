"""History sync through the registry and the web UI, on two in-process daemons with one seed
(fake relays): a request made on one is history on the other, marked restored, never earnings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from support import DaemonFactory, InProcessDaemon
from support.relays import until
from web.conftest import WebClient, login

from autopilotd.adapters.fake_lightning import FakeNetwork, FakeNode
from autopilotd.adapters.fake_relays import FakeNetwork as FakeRelays
from autopilotd.app import Adapters
from autopilotd.paths import Paths
from autopilotd.wallet.seed import load_or_create_seed, seed_path, write_seed_exclusive


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


async def test_a_second_daemon_with_the_same_words_sees_the_history(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    relays = FakeRelays()
    words, _ = load_or_create_seed(Paths.for_home(tmp_path / "a").data_dir)
    write_seed_exclusive(seed_path(Paths.for_home(tmp_path / "b").data_dir), words)

    net = FakeNetwork()

    async def start(home: str) -> InProcessDaemon:
        node = FakeNode(net, home, 100_000_000)
        d = await daemon_factory(
            home=tmp_path / home,
            adapters=Adapters(node_factory=lambda mnemonic: node, relay_pool=relays.pool()),
            relays=", ".join(relays.relays),
            wallet_network="regtest",
            wallet_bitcoind_rpc_url="http://u:p@127.0.0.1:1",
        )
        assert (await d.call("wait.until", {"condition": "wallet-ready", "timeout_s": 10}))["met"]
        return d

    a = await start("a")
    bought = await a.call("buy.submit", {"prompt": "Name a colour.", "budget_sats": 5})
    history: list[dict[str, Any]] = []

    async def recorded() -> bool:
        history[:] = (await a.call("sync.history"))["items"]
        return bool(history)

    await eventually(recorded)  # recorded after the request's domain event
    assert [(h["type"], h["id"], h["restored"]) for h in history] == [
        ("buy", bought["request_id"], False)
    ]

    b = await start("b")
    await until(lambda: bool(relays.published))
    rounds = (await b.call("sync.now"))["relays"]
    assert {r["url"] for r in rounds} == set(relays.relays)
    assert all(r["method"] == "negentropy" and r["error"] is None for r in rounds)
    (item,) = (await b.call("sync.history"))["items"]
    assert item["id"] == bought["request_id"] and item["restored"] is True
    assert item["data"]["prompt"] == "Name a colour."
    status = await b.call("sync.status")
    assert status["restored"] == 1 and len(status["relays"]) == 2
    assert (await b.call("status"))["earnings"]["lifetime_sats"] == 0  # history, not earnings

    web: WebClient = await login(b)
    try:
        _, html = await web.get("/pane/sync_health")
        assert "1 jobs, requests and payments restored from relays" in html
        assert all(f'data-relay="{url}"' in html for url in relays.relays)
        status_code, html = await web.do("sync.now", pane="sync_health")
        assert status_code == 200 and "negentropy" in html
    finally:
        await web.session.close()

    # Wallet activity too: B pays A; each sees the other's side as restored, not as balance.
    invoice = await a.call("wallet.receive", {"amount_sats": 7, "description": "tea money"})
    paid = await b.call("wallet.pay", {"bolt11": invoice["bolt11"]})
    assert paid["status"] == "succeeded"

    async def a_side_on_b() -> bool:
        await a.call("sync.now")
        await b.call("sync.now")
        items = (await b.call("sync.history", {"type": "pay"}))["items"]
        return {(i["type"], i["step"], i["restored"]) for i in items} == {
            ("pay_in", "succeeded", True),  # A's: restored on B
            ("pay_out", "succeeded", False),  # B's own
        }

    await eventually(a_side_on_b)
    balance = (await b.call("wallet.status"))["balance"]
    web = await login(b)
    try:
        _, html = await web.get("/pane/wallet")
    finally:
        await web.session.close()
    assert 'data-testid="restored-payments"' in html and "tea money" in html
    assert (await b.call("wallet.status"))["balance"] == balance  # history, not balance

    # A relay taken out in Settings leaves Sync Health with its last round.
    await b.call("settings.update", {"relays": relays.relays[0]})

    async def one_relay_shown() -> bool:
        shown = (await b.call("sync.status"))["relays"]
        return [r["url"] for r in shown] == [relays.relays[0]]

    await eventually(one_relay_shown)


async def test_only_the_users_own_relays_keep_history(daemon_factory: DaemonFactory) -> None:
    """A relay in the pool that is not in `relays` (a Nexus's, which joins by itself) is for
    starter jobs: history is neither reconciled with it nor published to it."""
    relays = FakeRelays(("ws://mine", "ws://nexus-relay"))
    node = FakeNode(FakeNetwork(), "me", 100_000_000)
    d = await daemon_factory(
        adapters=Adapters(node_factory=lambda mnemonic: node, relay_pool=relays.pool()),
        relays="ws://mine",
        wallet_network="regtest",
        wallet_bitcoind_rpc_url="http://u:p@127.0.0.1:1",
    )
    assert (await d.call("wait.until", {"condition": "wallet-ready", "timeout_s": 10}))["met"]
    seen: list[tuple[str, int]] = []
    relays.answer(lambda url, event: seen.append((url, event.kind)))  # type: ignore[func-returns-value]
    await d.call("buy.submit", {"prompt": "Name a river.", "budget_sats": 5})

    async def recorded() -> bool:
        return ("ws://mine", 4377) in seen

    await eventually(recorded)
    rounds = (await d.call("sync.now"))["relays"]
    assert [r["url"] for r in rounds] == ["ws://mine"]
    assert ("ws://nexus-relay", 5050) in seen  # the job request itself goes everywhere
    assert ("ws://nexus-relay", 4377) not in seen  # history does not
