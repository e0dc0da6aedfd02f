"""Go Online → paid jobs → balance rises: real devnet, real relay, real psionic, real wallets;
text generation, a sandbox job, a fine-tuning job, and chats that buy."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support.devnet import WalletDaemon

from autopilotd.adapters.relay_pool import PoolConfig, RelayPool, running
from autopilotd.nostr.identity import generate_identity
from autopilotd.nostr.intake import IntakePolicy, RequestParser
from autopilotd.nostr.nip90 import (
    KIND_TEXT_GENERATION,
    FeedbackStatus,
    JobRequest,
    build_feedback,
    build_result,
)
from autopilotd.ports.relays import SubscriptionFilter

from .conftest import PRICE_SATS, Market

pytestmark = pytest.mark.asyncio(loop_scope="module")

CONTRACT = [
    "provider.request_received",
    "provider.accepted",
    "provider.running",
    "provider.result_published",
    "provider.payment_requested",
    "provider.settlement_confirmed",
]


def _lightning(d: WalletDaemon) -> int:
    return int(d.ctl_json("wallet.balance")["lightning_sats"])


async def _earned(provider: WalletDaemon, before: int, sats: int) -> None:
    """The provider's Lightning balance rises to exactly `before + sats` (settlement is
    asynchronous: wait for it a while, then hold it to the figure)."""
    for _ in range(40):
        if _lightning(provider) == before + sats:
            break
        await asyncio.sleep(0.5)
    assert _lightning(provider) == before + sats


def _paid_job(provider: WalletDaemon, request_id: str, payment_hash: str) -> None:
    """The provider's job for the request is paid, bound to the buyer's payment hash."""
    job = provider.ctl_json("jobs.get", "--request-id", request_id)
    assert job["stage"] == "paid" and job["payment_hash"] == payment_hash


async def _go_online(provider: WalletDaemon) -> dict[str, Any]:
    deadline = time.monotonic() + 240
    last = ""
    while time.monotonic() < deadline:
        r = provider.ctl("--json", "provider.online")
        if r.returncode == 0:
            provider.ctl("wait", "provider-online", "--timeout", "30")
            return provider.ctl_json("provider.status")
        last = r.stderr
        await asyncio.sleep(1)
    raise AssertionError(f"could not go online: {last}")


def _buy_start(buyer: WalletDaemon, prompt: str, timeout_s: int = 120) -> str:
    req = buyer.ctl_json(
        "buy.submit",
        "--prompt",
        prompt,
        "--budget-sats",
        str(PRICE_SATS + 9),
        "--max-tokens",
        "8",
        "--timeout-s",
        str(timeout_s),
    )
    return str(req["request_id"])


async def _wait_buy(buyer: WalletDaemon, rid: str, timeout_s: int = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s + 30
    while time.monotonic() < deadline:
        row: dict[str, Any] = buyer.ctl_json("buy.wait", "--request-id", rid, "--timeout-s", "20")
        if row["status"] in ("done", "failed", "expired"):
            return row
    raise AssertionError(f"request {rid} never finished")


async def _buy(buyer: WalletDaemon, prompt: str, timeout_s: int = 120) -> dict[str, Any]:
    return await _wait_buy(buyer, _buy_start(buyer, prompt, timeout_s), timeout_s)


def _domain_events(d: WalletDaemon) -> list[dict[str, Any]]:
    lines = (d.paths.log_dir / "latest.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [r for r in records if "domain_event" in r]


async def test_offline_requests_are_previews_only(market: Market) -> None:
    provider, buyer = market.provider, market.buyer
    assert provider.ctl_json("provider.status")["provider"]["state"] == "offline"
    row = await _buy(buyer, "Are you there?", timeout_s=8)
    assert row["status"] == "expired"
    jobs = provider.ctl_json("provider.status")["jobs"]
    previews = [r for r in jobs["inbox"] if r.get("stage") == "preview"]
    assert previews and previews[0]["request_id"] == row["request_id"]
    assert previews[0]["claimable"] is False
    assert provider.ctl_json("jobs.history")["jobs"] == []  # no job row, no invoice


async def test_five_paid_jobs(market: Market) -> None:
    provider, buyer = market.provider, market.buyer
    status = await _go_online(provider)
    assert status["provider"]["state"] == "online" and status["provider"]["blockers"] == []
    p0, b0 = _lightning(provider), _lightning(buyer)
    rows = [await _buy(buyer, f"Say the number {i}.") for i in range(5)]
    assert [r["status"] for r in rows] == ["done"] * 5, rows
    assert all(r["result"] for r in rows)
    await _earned(provider, p0, 5 * PRICE_SATS)
    hashes = {r["payment_hash"] for r in rows}
    sent = [
        p
        for p in buyer.ctl_json("wallet.history", "--limit", "500")["payments"]
        if p["payment_hash"] in hashes
    ]
    fees = sum(p["fee_sats"] for p in sent)
    assert len(sent) == 5 and all(p["status"] == "succeeded" for p in sent)
    assert b0 - _lightning(buyer) == 5 * PRICE_SATS + fees
    earnings = provider.ctl_json("provider.status")["earnings"]
    assert earnings["lifetime_jobs"] == 5 and earnings["lifetime_sats"] == 5 * PRICE_SATS
    report = buyer.ctl_json(
        "reports.nip90_payments", "--start", "0", "--end", str(time.time() + 60)
    )
    assert report["count"] == 5 and report["total_sats"] == 5 * PRICE_SATS
    events = _domain_events(provider)
    for r in rows:
        names = [e["domain_event"] for e in events if e.get("request_id") == r["request_id"]]
        ordered = [n for n in names if n in CONTRACT]
        assert ordered == CONTRACT, (r["request_id"], names)
    assert provider.ctl("wait", "job-paid", "--timeout", "5").returncode == 0
    assert buyer.ctl("wait", "buy-paid", "--timeout", "5").returncode == 0


async def test_two_providers_race_for_one_request(market: Market) -> None:
    """One is paid; the other gets lost-race and shows its job unpaid, not failed silently."""
    first, buyer = market.provider, market.buyer
    second = market.net.daemon("provider2", **market.provider_settings()).start()
    await market.net.channel(second, 1_000_000, 50_000)
    second.wait_usable()
    await _go_online(first)  # the test does not rely on an earlier one having done it
    await _go_online(second)
    assert first.ctl_json("provider.status")["provider"]["state"] == "online"
    row = await _buy(buyer, "Race: say one word.")
    assert row["status"] == "done"
    rid = row["request_id"]
    outcome: dict[str, Any] = {}
    for _ in range(60):
        outcome = {}
        for d in (first, second):
            r = d.ctl("--json", "jobs.get", "--request-id", rid)
            outcome[d.home.name] = json.loads(r.stdout) if r.returncode == 0 else None
        stages = sorted(j["stage"] for j in outcome.values() if j)
        if stages == ["delivered_unpaid", "paid"]:
            break
        await asyncio.sleep(0.5)
    assert stages == ["delivered_unpaid", "paid"], outcome
    loser = next(j for j in outcome.values() if j and j["stage"] == "delivered_unpaid")
    assert "lost the race" in loser["reason"]
    winner = next(j for j in outcome.values() if j and j["stage"] == "paid")
    assert winner["payment_hash"] == row["payment_hash"]
    second.ctl("provider.offline")
    second.stop()


async def _authored(relay_url: str, pubkey: str, kinds: tuple[int, ...]) -> list[Any]:
    """Every event of `kinds` by `pubkey` the relay holds (a fresh subscription from 0)."""
    pool = RelayPool(PoolConfig(relays=(relay_url,)))
    sub = pool.subscription("test")
    await sub.set_filters([SubscriptionFilter(kinds=kinds, authors=(pubkey,), since=0)])
    found: list[Any] = []
    async with running(pool):
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3):
                async for incoming in sub.events():
                    found.append(incoming.event)
    return found


async def test_online_announces_a_handler_and_offline_withdraws_it(market: Market) -> None:
    """NIP-89: Go Online publishes the handler for the served kinds; Go Offline deletes it."""
    provider = market.provider
    await _go_online(provider)
    pubkey = provider.ctl_json("identity.show")["hex"]
    [handler] = await _authored(market.relay_url, pubkey, (31990,))
    tags = [list(t) for t in handler.tags]
    assert ["d", "autopilotd"] in tags and ["k", "5050"] in tags and ["k", "5060"] in tags
    assert json.loads(handler.content)["price_sats"] == PRICE_SATS
    provider.ctl("provider.offline")
    [deletion] = await _authored(market.relay_url, pubkey, (5,))
    deleted = [list(t) for t in deletion.tags]
    assert ["e", handler.id] in deleted and ["a", f"31990:{pubkey}:autopilotd"] in deleted
    await _go_online(provider)


async def test_after_a_restart_the_provider_is_offline(market: Market) -> None:
    provider = market.provider
    before = (
        provider.ctl_json("jobs.history"),
        provider.ctl_json("provider.status")["earnings"],
        _lightning(provider),
    )
    provider.stop()
    assert provider.wait_exit() == 0
    provider.start()
    provider.wait_usable()
    status = provider.ctl_json("provider.status")
    assert status["provider"]["state"] == "offline"
    after = (provider.ctl_json("jobs.history"), status["earnings"], _lightning(provider))
    assert after == before


async def test_a_buyer_pays_a_provider_for_a_sandbox_job(market: Market) -> None:
    """Kind 5720 through the same flow: the buyer's script hashes 1 MiB in the provider's
    sandbox, the result carries the digest, the provider is paid the price its limits set."""
    provider, buyer = market.provider, market.buyer
    await _go_online(provider)
    deadline = time.monotonic() + 30
    while provider.ctl_json("sandbox.status")["state"] != "ready":
        assert time.monotonic() < deadline, provider.ctl_json("sandbox.status")
        await asyncio.sleep(0.2)
    assert 5720 in provider.ctl_json("provider.status")["provider"]["served_kinds"]
    p0 = _lightning(provider)
    script = (
        "import hashlib\n"
        "data = bytes(range(256)) * 4096\n"
        "open('digest.txt', 'w').write(hashlib.sha256(data).hexdigest())\n"
        "print('hashed', len(data))\n"
    )
    req = buyer.ctl_json(
        "buy.submit",
        "--kind",
        "5720",
        "--prompt",
        script,
        "--params",
        '{"cpu_s": "10", "timeout_s": "20"}',
        "--budget-sats",
        "15",
        "--timeout-s",
        "120",
    )
    row = await _wait_buy(buyer, str(req["request_id"]))
    assert row["status"] == "done", row
    result = json.loads(row["result"])
    assert result["outcome"] == "succeeded" and result["stdout"] == "hashed 1048576\n"
    [digest] = [a for a in result["artifacts"] if a["path"] == "digest.txt"]
    expected = hashlib.sha256(bytes(range(256)) * 4096).hexdigest()
    assert base64.b64decode(digest["data_b64"]).decode() == expected
    assert digest["sha256"] == hashlib.sha256(expected.encode()).hexdigest()
    await _earned(provider, p0, 10)  # provider_sandbox_price_sats, one step of 10 CPU-seconds
    _paid_job(provider, row["request_id"], row["payment_hash"])
    [ran] = provider.ctl_json("sandbox.list", "--limit", "5")["jobs"]
    assert (ran["origin"], ran["request_id"], ran["state"]) == (
        "nip90",
        row["request_id"],
        "succeeded",
    )


async def _buy_asking(
    buyer: WalletDaemon, thread_id: str, budget: int
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A chat /buy started, once its item asks the owner: the turn, the item, the turn now."""
    turn = buyer.ctl_json(
        "turn.start", "--thread-id", thread_id, "--input", f"/buy {budget} Say hello."
    )
    deadline = time.monotonic() + 30
    while True:
        now = buyer.ctl_json("turn.wait", "--turn-id", turn["id"], "--timeout-s", "0")
        item = now["items"][-1]
        if item["body"].get("approval", {}).get("status") == "pending":
            return turn, item, now
        assert time.monotonic() < deadline, now
        await asyncio.sleep(0.1)


async def test_a_chat_buys_a_job_from_the_network_after_the_owner_approves(
    market: Market, tmp_path: Path
) -> None:
    """/buy in an Autopilot Chat thread: it asks, the owner approves the budget, the buyer
    pays the provider over Lightning, and the item holds the request, the provider, the
    payment hash and the result, the same as the buyer's own record and the provider's job."""
    provider, buyer = market.provider, market.buyer
    await _go_online(provider)
    p0 = _lightning(provider)
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    thread = buyer.ctl_json("thread.start", "--workspace", str(workspace))
    budget = PRICE_SATS + 9
    turn, item, now = await _buy_asking(buyer, thread["id"], budget)
    assert (item["kind"], item["body"]["budget_sats"]) == ("network_request", budget)
    assert "request_id" not in item["body"]  # nothing is published before the approval
    buyer.ctl_json("approval.answer_spend", "--item-id", item["id"], "--decision", "approve")
    deadline = time.monotonic() + 180
    while now["status"] == "running":
        assert time.monotonic() < deadline, "the chat's purchase never ended"
        now = buyer.ctl_json("turn.wait", "--turn-id", turn["id"], "--timeout-s", "20")
    bought = now["items"][-1]
    assert bought["status"] == "completed", bought
    body = bought["body"]
    row = buyer.ctl_json("buy.status", "--request-id", body["request_id"])
    assert row["status"] == "done" and row["budget_sats"] == budget
    assert (body["provider"], body["payment_hash"], body["result"]) == (
        row["provider"],
        row["payment_hash"],
        row["result"],
    )
    assert body["result"]
    await _earned(provider, p0, PRICE_SATS)
    _paid_job(provider, body["request_id"], body["payment_hash"])


async def test_a_chat_buy_refuses_a_real_invoice_above_its_budget(
    market: Market, tmp_path: Path
) -> None:
    """/buy approved for a budget, and the only provider answers with a real devnet invoice for
    more: the buyer decodes it with its own wallet, refuses it (an event says so) and pays
    nothing; the hub that made the invoice never sees a payment for it."""
    provider, buyer = market.provider, market.buyer
    provider.ctl("provider.offline")  # the cheat below is the only provider
    cheat = generate_identity()
    pool = RelayPool(PoolConfig(relays=(market.relay_url,)))
    sub = pool.subscription("cheat")
    since = int(time.time()) - 5
    await sub.set_filters([SubscriptionFilter(kinds=(KIND_TEXT_GENERATION,), since=since)])
    budget = PRICE_SATS + 9
    bolt11 = await market.net.client.hub_invoice((budget + 31) * 1000, "above the budget")
    payment_hash = buyer.ctl_json("wallet.decode", "--bolt11", bolt11)["payment_hash"]
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    thread = buyer.ctl_json("thread.start", "--workspace", str(workspace))
    async with running(pool):
        turn, item, _ = await _buy_asking(buyer, thread["id"], budget)
        buyer.ctl_json("approval.answer_spend", "--item-id", item["id"], "--decision", "approve")
        async with asyncio.timeout(60):
            async for incoming in sub.events():
                request = RequestParser(cheat, IntakePolicy()).parse(
                    incoming.event, now=time.time()
                )
                if isinstance(request, JobRequest) and request.bid_msat == budget * 1000:
                    break
        await pool.publish(build_result(cheat, request, "cheap words"))
        await pool.publish(
            build_feedback(
                cheat,
                request,
                FeedbackStatus.PAYMENT_REQUIRED,
                amount_msat=(budget + 31) * 1000,
                bolt11=bolt11,
            )
        )
        deadline = time.monotonic() + 60
        while not (
            refused := [
                e
                for e in _domain_events(buyer)
                if e["domain_event"] == "buyer.invoice_refused"
                and e.get("request_id") == request.id
            ]
        ):
            assert time.monotonic() < deadline, "the buyer never refused the invoice"
            await asyncio.sleep(0.5)
    assert refused[0]["reason"] == "invoice above budget"
    assert refused[0]["amount_msat"] == (budget + 31) * 1000
    buyer.ctl_json("turn.interrupt", "--turn-id", turn["id"])
    ended = buyer.ctl_json("turn.wait", "--turn-id", turn["id"], "--timeout-s", "20")
    assert (
        ended["status"] == "interrupted" and ended["items"][-1]["body"].get("payment_hash") is None
    )
    row = buyer.ctl_json("buy.status", "--request-id", request.id)
    assert row["payment_hash"] is None and row["status"] != "done"
    at_hub = await market.net.client.hub_payment(payment_hash)  # the invoice, still unpaid
    assert at_hub is not None and at_hub["status"] == "PENDING", at_hub
    history = buyer.ctl_json("wallet.history")["payments"]
    assert all(p["payment_hash"] != payment_hash for p in history)


async def test_a_buyer_pays_for_a_fine_tuning_job_and_fetches_the_trained_adapter(
    market: Market,
) -> None:
    """Kind 5740 for real: the provider's psionic trains a LoRA adapter on the packaged model
    from the buyer's inline chat JSONL, the buyer pays the invoice over Lightning, and the key
    in the result fetches a tar of the adapter whose weights have the result's digest."""
    provider, buyer = market.provider, market.buyer
    await _go_online(provider)
    deadline = time.monotonic() + 120
    while 5740 not in provider.ctl_json("provider.status")["provider"]["served_kinds"]:
        assert time.monotonic() < deadline, provider.ctl_json("finetune.status")
        await asyncio.sleep(0.5)
    p0 = _lightning(provider)
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "Arr!"}]}
        for q in ("Name a fruit.", "Say hello.", "Is ice cold?", "Name a colour.")
    ]
    req = buyer.ctl_json(
        "buy.submit",
        "--kind",
        "5740",
        "--prompt",
        "".join(json.dumps(r) + "\n" for r in rows),
        "--params",
        '{"n_epochs": "1", "max_steps": "2", "learning_rate": "0.003"}',
        "--budget-sats",
        "15",
        "--timeout-s",
        "600",
    )
    row = await _wait_buy(buyer, str(req["request_id"]), timeout_s=600)
    assert row["status"] == "done", row
    result = json.loads(row["result"])
    assert result["outcome"] == "succeeded" and result["base_model"], result
    assert result["trained_tokens"] > 0
    await _earned(provider, p0, 10)  # provider_finetune_price_sats: under 4 KiB, one epoch
    _paid_job(provider, row["request_id"], row["payment_hash"])
    fetch = result["fetch"]
    async with (
        aiohttp.ClientSession() as http,
        http.get(fetch["url"], headers={"Authorization": f"Bearer {fetch['key']}"}) as resp,
    ):
        assert resp.status == 200, await resp.text()
        body = await resp.read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        weights = tar.extractfile("adapter_model.safetensors")
        assert weights is not None
        assert hashlib.sha256(weights.read()).hexdigest() == result["adapter_digest"]
        config = tar.extractfile("adapter_config.json")
        assert config is not None and json.load(config)["peft_type"] == "LORA"
    trained = provider.ctl_json("finetune.job", "--job-id", result["job"])
    assert trained["status"] == "succeeded" and trained["fine_tuned_model"] is None  # theirs
    losses = [loss for _, loss in trained["losses"]]
    print("\nfine-tuning over NIP-90: losses", losses, "adapter", result["adapter_digest"][:12])
    assert len(losses) == 2
