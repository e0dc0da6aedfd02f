"""/buy on the command lane, before any money moves: it always asks, only the owner can
approve spending (a spend-scoped or control token cannot), a budget over the thread's spend
ceiling is refused without asking, and an approved request goes to the buyer, whose refusal
ends the item with the reason. A real purchase on the devnet is in tests/earn."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import DaemonFactory

from autopilotd.client import RpcClient, RpcError
from autopilotd.errors import AuthFailed, Forbidden
from autopilotd.mcp.server import scoped_endpoint

from .test_actions import asking, chat_daemon, ended, last, start


async def test_only_the_owner_approves_spending_within_the_thread_ceiling(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    d = await chat_daemon(daemon_factory, chat_spend_ceiling_sats=50)
    (tmp_path / "ws").mkdir()
    thread = await d.call("thread.start", {"workspace": str(tmp_path / "ws")})

    turn = await start(d, thread["id"], "/buy 60 write a haiku")
    done = last(await ended(d, turn["id"]))
    assert done["kind"] == "network_request" and done["status"] == "failed"
    assert done["body"]["error"] == (
        "not bought: 60 sats is over what this thread may still approve "
        "(50 sats of its spend ceiling left)"
    )
    assert "approval" not in done["body"]  # refused before asking

    turn = await start(d, thread["id"], "/buy 30 write a haiku")
    item = await asking(d, turn["id"])
    assert item["body"]["approval"]["action"] == "spend" and item["body"]["budget_sats"] == 30
    with pytest.raises(RpcError) as control:
        await d.call("approval.answer", {"item_id": item["id"], "decision": "approve"})
    assert control.value.rpc_code == Forbidden.code
    assert "only the owner approves spending" in control.value.message
    spend = await scoped_endpoint(d.endpoint, "spend")
    async with RpcClient(spend) as client:
        with pytest.raises(RpcError) as scoped:
            await client.call(
                "approval.answer_spend", {"item_id": item["id"], "decision": "approve"}
            )
    assert scoped.value.rpc_code in (Forbidden.code, AuthFailed.code)
    assert (await asking(d, turn["id"]))["id"] == item["id"]  # still waiting for the owner

    await d.call("approval.answer_spend", {"item_id": item["id"], "decision": "approve"})
    done = last(await ended(d, turn["id"]))
    assert done["status"] == "failed" and done["body"]["approval"]["status"] == "approved"
    assert done["body"]["error"].startswith("not bought: buying needs relays")

    turn = await start(d, thread["id"], "/buy 30 another")  # 30 of 50 approved already
    done = last(await ended(d, turn["id"]))
    assert "(20 sats of its spend ceiling left)" in done["body"]["error"]
    turn = await start(d, thread["id"], "/buy 20 another")
    item = await asking(d, turn["id"])
    await d.call("approval.answer_spend", {"item_id": item["id"], "decision": "deny"})
    done = last(await ended(d, turn["id"]))
    assert done["body"]["error"] == "not bought: the approval was declined (declined by the user)"

    turn = await start(d, thread["id"], "/buy lots of words")
    assert last(await ended(d, turn["id"]))["body"]["error"].startswith("usage: /buy SATS PROMPT")
