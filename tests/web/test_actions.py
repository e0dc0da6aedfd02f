"""Actions go to the command registry and come back as the re-rendered pane."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from support import DaemonFactory, InProcessDaemon, wallet_daemon

from autopilotd.adapters.fake_lightning import FakeNetwork, FakeNode
from autopilotd.app import Adapters
from autopilotd.commands.wallet import REVEAL_CONFIRMATION
from autopilotd.registry import Registry
from autopilotd.runtime.context import Runtime
from autopilotd.web.params import from_form

from .conftest import WebClient

PROBE = (
    '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'
    '<b hx-get="/do/logs.mark?message=pwned" hx-trigger="load">probe</b>'
)


async def test_pay_an_invoice_decode_confirm_settled(
    daemon_factory: DaemonFactory, net: FakeNetwork, web_login: Any
) -> None:
    provider, _ = await wallet_daemon(daemon_factory, net, "provider", 0)
    buyer, bnode = await wallet_daemon(daemon_factory, net, "buyer", 50_000_000)
    inv = await provider.call("wallet.receive", {"amount_sats": 1500, "description": "a job"})
    web = await web_login(buyer)

    status, html = await web.do("wallet.decode", {"bolt11": inv["bolt11"]}, pane="pay_invoice")
    assert status == 200
    assert "1\u2009500" in html and "a job" in html and "at most 15 sats" in html
    assert "Confirm and pay" in html and bnode.sends == 0  # decoding pays nothing

    form = {"bolt11": inv["bolt11"], "max_fee_sats": "15"}
    status, html = await web.do("wallet.pay", form, pane="pay_invoice")
    assert status == 200 and "PAID ✓" in html and bnode.sends == 1

    status, html = await web.do("wallet.decode", {"bolt11": "lnbc1nonsense"}, pane="pay_invoice")
    assert status == 200 and "that is not a valid BOLT11 invoice" in html


async def test_a_failed_payment_says_why_in_plain_words(
    daemon_factory: DaemonFactory, net: FakeNetwork, web_login: Any
) -> None:
    provider, _ = await wallet_daemon(daemon_factory, net, "provider", 0)
    buyer, _ = await wallet_daemon(daemon_factory, net, "buyer", 1_000_000)
    inv = await provider.call("wallet.receive", {"amount_sats": 5000})
    web = await web_login(buyer)
    status, html = await web.do("wallet.pay", {"bolt11": inv["bolt11"]}, pane="pay_invoice")
    assert status == 200 and "alert error" in html
    assert "PAID" not in html


async def test_create_invoice_shows_a_qr_code_and_turns_paid(
    daemon_factory: DaemonFactory, net: FakeNetwork, web_login: Any
) -> None:
    provider, _ = await wallet_daemon(daemon_factory, net, "provider", 0)
    buyer, _ = await wallet_daemon(daemon_factory, net, "buyer", 50_000_000)
    web = await web_login(provider)
    form = {"amount_sats": "2,100", "description": "coffee"}
    status, html = await web.do("wallet.receive", form, pane="create_invoice")
    assert status == 200
    assert '<svg class="qr"' in html and 'd="M' in html and "WAITING FOR PAYMENT" in html
    _, data = await web.do("wallet.receive", {"amount_sats": "10"}, accept_json=True)
    result = json.loads(data)["result"]
    assert result["amount_sats"] == 10 and result["bolt11"]
    _, waiting = await web.get_json(f"/pane/create_invoice?payment_hash={result['payment_hash']}")
    assert waiting["receipt"] == {
        "payment_hash": result["payment_hash"],
        "paid": False,
        "status": "waiting",
    }
    await buyer.call("wallet.pay", {"bolt11": result["bolt11"]})
    for _ in range(100):
        _, html = await web.get(f"/pane/create_invoice?payment_hash={result['payment_hash']}")
        if "PAID ✓" in html:
            break
        await asyncio.sleep(0.05)
    assert "PAID ✓ 10 sats received" in html


async def test_an_invoice_over_the_lsp_shows_its_fee_before_it_is_paid(
    daemon_factory: DaemonFactory, net: FakeNetwork, web_login: Any
) -> None:
    node = FakeNode(net, "newcomer", 0)
    node.receivable_msat, node.lsp_fee_msat = 0, 2_000
    d = await daemon_factory(
        adapters=Adapters(node_factory=lambda m: node),
        wallet_network="regtest",
        wallet_bitcoind_rpc_url="http://u:p@127.0.0.1:1",
        wallet_lsp="02" + "ab" * 32 + "@127.0.0.1:9735",
    )
    assert (await d.call("wait.until", {"condition": "wallet-ready", "timeout_s": 10}))["met"]
    web = await web_login(d)
    status, html = await web.do("wallet.receive", {"amount_sats": "21"}, pane="create_invoice")
    assert status == 200 and 'data-testid="lsp-fee"' in html
    assert "takes 2 sats of it to open the channel. You receive 19 sats." in html


async def test_reveal_needs_the_confirmation(
    daemon_factory: DaemonFactory, net: FakeNetwork, web_login: Any
) -> None:
    d, _ = await wallet_daemon(daemon_factory, net, "me", 0)
    web = await web_login(d)
    _, html = await web.get("/pane/identity_keys")
    assert 'data-testid="mnemonic"' not in html
    npub = (await d.call("identity.show"))["npub"]
    assert f'data-testid="npub">{npub}<' in html and npub.startswith("npub1")
    status, html = await web.do("wallet.reveal_mnemonic", {"confirm": "yes"}, pane="identity_keys")
    assert status == 200 and "to reveal the words" in html
    assert 'data-testid="mnemonic"' not in html
    form = {"confirm": REVEAL_CONFIRMATION}
    status, html = await web.do("wallet.reveal_mnemonic", form, pane="identity_keys")
    assert status == 200 and html.count("<li>") == 24


async def test_form_values_are_converted_by_the_command_types(web: WebClient) -> None:
    reg = Registry()

    async def sample(
        n: int, f: float, b: bool, s: str = "x", o: int | None = None
    ) -> dict[str, Any]:
        """Sample."""
        return {}

    command = reg.add("t.sample", sample)
    assert from_form(command, {"n": "1 000".replace(" ", ""), "f": "2.5", "b": "on"}) == {
        "n": 1000,
        "f": 2.5,
        "b": True,
    }
    assert from_form(command, {"n": "3", "f": "1", "b": "", "s": "", "o": ""}) == {
        "n": 3,
        "f": 1.0,
        "b": False,
    }
    status, html = await web.do("logs.tail", {"lines": "many"}, pane="activity_feed")
    assert status == 200 and "&#39;lines&#39; must be a whole number" in html
    status, body = await web.do("logs.tail", {"lines": "many"}, accept_json=True)
    assert status == 400 and "whole number" in json.loads(body)["error"]
    status, body = await web.do("logs.mark", json_body={"message": "json body"}, accept_json=True)
    assert status == 200 and "event_id" in json.loads(body)["result"]
    status, body = await web.do("no.such", {}, accept_json=True)
    assert status == 400 and "no command named" in json.loads(body)["error"]


def _fail_loudly(reg: Registry, rt: Runtime) -> None:
    @reg.command("test.explode", access="control")
    async def explode() -> dict[str, Any]:
        """Raise an internal error whose text must not reach the page."""
        raise RuntimeError("secret internal detail")


async def test_internal_errors_do_not_leak(daemon_factory: DaemonFactory, web_login: Any) -> None:
    d: InProcessDaemon = await daemon_factory(registrars=[_fail_loudly])
    web = await web_login(d)
    status, html = await web.do("test.explode", {}, pane="activity_feed")
    assert status == 200 and "internal error (error id" in html and "secret" not in html


async def test_event_and_payment_text_is_escaped(
    daemon_factory: DaemonFactory, net: FakeNetwork, web_login: Any
) -> None:
    provider, _ = await wallet_daemon(daemon_factory, net, "provider", 0)
    buyer, _ = await wallet_daemon(daemon_factory, net, "buyer", 50_000_000)
    inv = await provider.call("wallet.receive", {"amount_sats": 21, "description": PROBE})
    await buyer.call("wallet.pay", {"bolt11": inv["bolt11"]})
    await provider.call("logs.mark", {"message": PROBE})
    web = await web_login(provider)
    for _ in range(100):
        _, html = await web.get("/pane/wallet")
        if "probe" in html:
            break
        await asyncio.sleep(0.05)
    _, feed = await web.get("/pane/activity_feed")
    _, page = await web.get("/")
    for text in (html, feed, page):
        assert "<script>window" not in text and "<b hx-get" not in text and "<img src=x" not in text
        assert "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in text
        assert "&lt;b hx-get=" in text
