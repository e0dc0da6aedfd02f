"""T3 (reduced), at the daemon: one request over 3 relays, and again after reconnects, is one job."""

from __future__ import annotations

import sqlite3

import pytest

from autopilotd.adapters.local_relay import local_relay

from .conftest import Market
from .test_earn_e2e import _buy, _go_online

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_same_request_via_three_relays_and_reconnects_is_one_job(market: Market) -> None:
    provider, buyer = market.provider, market.buyer
    async with local_relay(port=0) as second, local_relay(port=0) as third:
        relays = ",".join((market.relay_url, second.url, third.url))
        for d in (provider, buyer):
            d.stop()
            d.env["AUTOPILOTD_RELAYS"] = relays
            d.start()
            d.wait_usable()
        provider.ctl("wait", "runtime-ready", "--timeout", "240")
        await _go_online(provider)
        connected = [r for r in provider.ctl_json("provider.status")["relays"] if r["connected"]]
        assert len(connected) == 3
        row = await _buy(buyer, "Three relays, one job.")
        assert row["status"] == "done"
        rid = row["request_id"]
        # Reconnect to all three: the catch-up query delivers the request again.
        provider.stop()
        provider.start()
        provider.wait_usable()
        await _go_online(provider)
        status = provider.ctl_json("provider.status")
        assert sum(r["connected"] for r in status["relays"]) == 3
        conn = sqlite3.connect(provider.paths.database_file)
        try:
            jobs = conn.execute("SELECT stage FROM jobs WHERE request_id = ?", (rid,)).fetchall()
            credits = conn.execute(
                "SELECT COUNT(*) FROM earnings WHERE request_id = ?", (rid,)
            ).fetchone()[0]
        finally:
            conn.close()
        assert jobs == [("paid",)] and credits == 1
        for d in (provider, buyer):  # back to the module's single relay for later tests
            d.stop()
            d.env["AUTOPILOTD_RELAYS"] = market.relay_url
            d.start()
