"""The on-chain panes: receive with a QR code, send after a preview, cash out with progress."""

from __future__ import annotations

import asyncio
import html as html_lib
import json
import os
import re
from typing import Any

import pytest
from embit import bech32
from support import DaemonFactory, wallet_daemon

import autopilotd.wallet.runner as runner
from autopilotd.adapters.fake_lightning import FakeNetwork
from autopilotd.web.qr import qr_path


@pytest.fixture(autouse=True)
def quick_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "BALANCE_REFRESH_S", 0.05)


def _address() -> str:
    return str(bech32.encode("bcrt", 0, os.urandom(20)))


async def test_receive_shows_an_address_and_its_qr_code(
    daemon_factory: DaemonFactory, net: FakeNetwork, web_login: Any
) -> None:
    d, _ = await wallet_daemon(daemon_factory, net, "me", 0)
    web = await web_login(d)
    status, html = await web.do("wallet.onchain_address", {}, pane="receive_onchain")
    assert status == 200 and '<svg class="qr"' in html
    [address] = re.findall(r'<textarea id="onchain-address"[^>]*>([^<]+)<', html)
    assert address.startswith("bcrt1q") and f"bitcoin:{address}" in html
    assert qr_path(f"bitcoin:{address}").path in html  # the QR code is of the bitcoin: link


async def test_send_is_previewed_then_confirmed(
    daemon_factory: DaemonFactory, net: FakeNetwork, web_login: Any
) -> None:
    d, node = await wallet_daemon(daemon_factory, net, "me", 0)
    node.deposit(200_000)
    node.mine()
    web = await web_login(d)
    to = _address()
    form = {"address": to, "amount_sats": "50,000", "fee_rate_sat_vb": "4"}
    status, html = await web.do("wallet.onchain_preview", form, pane="send_onchain")
    preview = await d.call(
        "wallet.onchain_preview", {"address": to, "amount_sats": 50_000, "fee_rate_sat_vb": 4}
    )
    fee = f"{preview['fee_sats']:,}".replace(",", "\u2009")
    assert status == 200 and "50\u2009000" in html and f"{fee} sats at 4 sat/vB" in html
    assert "Confirm and send" in html and node.onchain_sends == 0
    assert f'name="max_fee_sats" value="{preview["fee_sats"]}"' in html

    confirm = {**form, "amount_sats": "50000", "max_fee_sats": str(preview["fee_sats"])}
    status, html = await web.do("wallet.onchain_send", confirm, pane="send_onchain")
    assert status == 200 and "SENT ✓" in html and node.onchain_sends == 1

    bad = {**form, "address": str(bech32.encode("bc", 0, os.urandom(20)))}
    status, html = await web.do("wallet.onchain_preview", bad, pane="send_onchain")
    assert status == 200 and "alert error" in html and "for bitcoin (mainnet)" in html


async def test_cash_out_preview_confirm_and_progress(
    daemon_factory: DaemonFactory, net: FakeNetwork, web_login: Any
) -> None:
    d, node = await wallet_daemon(daemon_factory, net, "me", 0)
    node.deposit(30_000)
    node.mine()
    node.add_channel(120_000)
    web = await web_login(d)
    form = {"address": _address(), "fee_rate_sat_vb": "2"}
    status, html = await web.do("wallet.cash_out_preview", form, pane="cash_out")
    assert status == 200 and 'data-testid="cash-out-preview"' in html
    assert "120\u2009000" in html and "the peer" in html and node.open_channels

    _, data = await web.do("wallet.cash_out_preview", form, accept_json=True)
    plan = json.loads(data)["result"]
    confirm = {**form, "max_fee_sats": str(plan["fee_sats"])}
    status, html = await web.do("wallet.cash_out", confirm, pane="cash_out")
    assert status == 200 and "CLOSING" in html and node.open_channels == []
    [send_id] = re.findall(r'hx-get="/pane/cash_out\?id=(\d+)"', html)  # it polls itself

    node.mine()
    for _ in range(100):
        _, html = await web.get(f"/pane/cash_out?id={send_id}")
        if "SENT" in html:
            break
        await asyncio.sleep(0.02)
    assert "SENT" in html and node.onchain_sends == 1
    node.mine()
    for _ in range(100):
        _, html = await web.get(f"/pane/cash_out?id={send_id}")
        if "CASHED OUT ✓" in html:
            break
        await asyncio.sleep(0.02)
    text = html_lib.unescape(html)
    sent = f"{plan['amount_sats']:,}".replace(",", "\u2009")
    assert "CASHED OUT ✓" in text and f"{sent} sats sent" in text
    assert 'hx-trigger="every 2s"' not in html  # finished: it stops polling
