"""The golden path in a real browser, as a new user tries it, on the real devnet and relay.

Open the login link → offline, with a live preview row → click Go Online → online → a buyer's
job arrives → Active Job walks its stages → the scoreboard and the balance rise → the 10-sat
milestone is celebrated (once) → pay an invoice from Pay Lightning Invoice → the balance drops
and the history shows it. A screenshot of each step lands in artifacts/web/golden-*.png.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest
from support.browser import artifact, chromium
from support.devnet import WalletDaemon

from .conftest import PRICE_SATS, Market
from .test_earn_e2e import _buy_start, _domain_events

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(900)]

STAGES = ["received", "accepted", "running", "delivered", "paid"]
WATCH_STAGES = """() => {
  window.__stages = [];
  const pane = document.getElementById("pane-active_job");
  const note = () => {
    const ol = pane.querySelector("ol.stages");
    const seen = window.__stages;
    if (ol && seen[seen.length - 1] !== ol.dataset.stage) seen.push(ol.dataset.stage);
  };
  new MutationObserver(note).observe(pane, { childList: true, subtree: true, attributes: true });
  note();
}"""


def _sats(text: str) -> int:
    return int(re.sub(r"\D", "", text))


async def _open(page: Any, name: str) -> Any:
    """Open a pane the way a user does: Ctrl-K, type its command, Enter."""
    await page.keyboard.press("Control+k")
    await page.wait_for_selector("#palette[open]")
    await page.fill("#palette-input", f"pane.{name}")
    await page.keyboard.press("Enter")
    pane = page.locator(f"#pane-{name}")
    await pane.wait_for(state="visible")
    return pane


async def _shot(page: Any, step: str, settle_ms: int = 200) -> None:
    await page.wait_for_timeout(settle_ms)  # let a live refresh (or an animation) land first
    await page.screenshot(path=artifact(f"golden-{step}.png"))


async def _earnable(provider: WalletDaemon, timeout_s: float = 240) -> None:
    """Wait until nothing blocks Go Online (psionic warm, relay connected, wallet ready)."""
    deadline = time.monotonic() + timeout_s
    blockers: list[Any] = []
    while time.monotonic() < deadline:
        blockers = provider.ctl_json("provider.status")["provider"]["blockers"]
        if not blockers:
            return
        await asyncio.sleep(1)
    raise AssertionError(f"still blocked: {blockers}")


async def _balance_is(page: Any, sats: int) -> None:
    """The scoreboard's balance (the node's own figure, which may lag a moment) reaches sats."""
    for _ in range(60):
        if _sats(await page.inner_text("[data-testid=hud-balance]")) == sats:
            return
        await page.wait_for_timeout(500)
    assert _sats(await page.inner_text("[data-testid=hud-balance]")) == sats


async def test_golden_path(market: Market) -> None:
    provider, buyer = market.provider, market.buyer
    login = provider.ctl_json("web.login_url")["url"]
    async with chromium() as ctx:
        page = await ctx.new_page()
        await page.goto(login)
        await page.wait_for_selector("#live[data-state=live]", timeout=15_000)

        # 1. Offline, and a buyer's request shows as a preview nobody can claim.
        go = await _open(page, "go_online")
        await go.locator("[data-testid=provider-state][data-state=offline]").wait_for()
        assert await go.locator(".earning.no").count() == 1
        await _shot(page, "01-offline")
        preview_id = _buy_start(buyer, "Are you there?", timeout_s=8)
        inbox = await _open(page, "job_inbox")
        await inbox.locator("tr[data-stage=preview]").first.wait_for(timeout=20_000)
        assert "preview" in await inbox.inner_text()
        await _shot(page, "02-preview")
        assert provider.ctl_json("jobs.history")["jobs"] == []
        assert preview_id

        # 2. Click Go Online; the pane and the scoreboard say ONLINE.
        await _earnable(provider)

        # Settings: choose the chat model psionic serves; it applies at once, no restart.
        models = provider.ctl_json("status")["local_runtime"]["models"]
        chat = next(m["id"] for m in models if m["kind"] == "chat")
        settings = await _open(page, "settings")
        await settings.locator("select[name=provider_model]").select_option(chat)
        await settings.locator("button[type=submit]").click()
        saved = settings.locator("[data-testid=settings-saved]")
        await saved.wait_for(timeout=20_000)
        assert "applied now: provider_model" in await saved.inner_text()
        rows = {e["name"]: e for e in provider.ctl_json("settings.show")["editable"]}
        assert rows["provider_model"]["value"] == chat
        go = await _open(page, "go_online")
        await go.locator("[data-testid=go-online]").click()
        await go.locator("[data-testid=provider-state][data-state=online]").wait_for(timeout=20_000)
        await page.wait_for_selector("[data-testid=hud-online][data-state=online]")
        await _shot(page, "03-online")

        # 3. A buyer's job arrives; Active Job walks through its stages to paid.
        balance0 = _sats(await page.inner_text("[data-testid=hud-balance]"))
        assert _sats(await page.inner_text("[data-testid=hud-earned]")) == 0
        await _open(page, "active_job")
        await page.evaluate(WATCH_STAGES)
        rid = _buy_start(buyer, "Name three colours.", timeout_s=120)
        await page.wait_for_selector("#pane-active_job ol.stages", timeout=60_000)
        await _shot(page, "04-active-job")
        await page.wait_for_selector("#pane-active_job ol.stages[data-stage=paid]", timeout=120_000)
        await _shot(page, "05-paid")
        seen = await page.evaluate("window.__stages")
        assert seen[-1] == "paid" and len(seen) >= 2, seen
        assert [s for s in STAGES if s in seen] == seen, seen  # forward only, in order
        assert provider.ctl_json("jobs.get", "--request-id", rid)["stage"] == "paid"
        inbox = await _open(page, "job_inbox")
        row = inbox.locator("tr[data-stage=paid]", has_text="Name three colours.")
        await row.wait_for(timeout=10_000)  # what the buyer asked, next to how it ended

        # 4. The scoreboard and the wallet balance rise by the price.
        await page.wait_for_selector(
            f"[data-testid=hud-earned]:has-text('{PRICE_SATS}')", timeout=30_000
        )
        await _balance_is(page, balance0 + PRICE_SATS)
        board = await _open(page, "earnings_scoreboard")
        await board.locator("[data-testid=sats-chart] polyline").wait_for(state="attached")
        assert "1 paid job shown" in await board.inner_text()
        await board.locator(".milestones li.reached[data-sats='10']").wait_for()

        # 5. The 10-sat milestone is celebrated, once.
        party = page.locator("[data-testid=celebrate][data-sats='10']")
        await party.wait_for(timeout=30_000)
        assert "10 sats earned!" in await party.inner_text()
        await _shot(page, "06-milestone")
        await party.locator("button").click()
        await party.wait_for(state="detached", timeout=10_000)
        await page.reload()
        await page.wait_for_selector("#live[data-state=live]", timeout=15_000)
        await page.wait_for_timeout(1000)
        assert await page.locator("[data-testid=celebrate]").count() == 0

        # Two more jobs: the chart steps up, and 25 and 50 are each celebrated in turn.
        for jobs, prompt in ((2, "Name a fruit."), (3, "Name a planet.")):
            _buy_start(buyer, prompt, timeout_s=120)
            earned = f"[data-testid=hud-earned]:has-text('{PRICE_SATS * jobs}')"
            await page.wait_for_selector(earned, timeout=120_000)
        board = await _open(page, "earnings_scoreboard")
        assert "3 paid jobs shown" in await board.inner_text()
        await page.wait_for_selector("[data-testid=celebrate][data-sats='25']", timeout=30_000)
        await _shot(page, "07-scoreboard", settle_ms=900)
        for sats in (25, 50):
            party = page.locator(f"[data-testid=celebrate][data-sats='{sats}']")
            await party.locator("button").click()
            await party.wait_for(state="detached", timeout=10_000)
        await page.wait_for_timeout(500)
        assert await page.locator("[data-testid=celebrate]").count() == 0
        reached = [e for e in _domain_events(provider) if e["domain_event"].startswith("earnings.")]
        assert [e["sats"] for e in reached] == [10, 25, 50], reached  # each once, in order

        # 6. Pay an invoice from Pay Lightning Invoice: the balance drops, history shows it.
        invoice = buyer.ctl_json(
            "wallet.receive", "--amount-sats", "7", "--description", "golden path withdrawal"
        )
        before = balance0 + 3 * PRICE_SATS
        await _balance_is(page, before)  # the node's balance catches up with the earnings
        pay = await _open(page, "pay_invoice")
        await pay.locator("textarea[name=bolt11]").fill(invoice["bolt11"])
        await pay.locator("button[type=submit]").click()
        await pay.locator(".decoded").wait_for()
        assert "golden path withdrawal" in await pay.inner_text()
        await _shot(page, "08-decoded")
        await pay.locator("[data-testid=confirm-pay]").click()
        outcome = pay.locator("[data-testid=pay-outcome]")
        await outcome.wait_for(timeout=60_000)
        assert "PAID" in await outcome.inner_text(), await outcome.inner_text()
        await _shot(page, "09-paid-out")
        sent = provider.ctl_json("wallet.payment", "--payment-hash", invoice["payment_hash"])
        expected = before - 7 - int(sent["fee_sats"] or 0)
        await _balance_is(page, expected)
        wallet = await _open(page, "wallet")
        row = wallet.locator("table.history tbody tr", has_text="golden path withdrawal")
        await row.wait_for(timeout=10_000)  # the pane refreshes as it opens
        assert "golden path withdrawal" in await row.inner_text()
        assert "out" in await row.inner_text() and "succeeded" in await row.inner_text()
        await _shot(page, "10-wallet-history")

        # 7. The buy side: the buyer's own page buys a job with a budget and sees it paid.
        shopper = await ctx.new_page()
        await shopper.goto(buyer.ctl_json("web.login_url")["url"])
        await shopper.wait_for_selector("#live[data-state=live]", timeout=15_000)
        buy = await _open(shopper, "network_requests")
        await buy.locator("textarea[name=prompt]").fill("Say <b>hello</b> in one word.")
        await buy.locator("input[name=budget_sats]").fill(str(PRICE_SATS + 9))
        await shopper.wait_for_timeout(2500)  # live refreshes while the form is filled in
        await buy.locator("button[type=submit]").click()
        prompt = "Say <b>hello</b> in one word."  # shown as text, never as markup
        # The request's row is the lasting answer (the "submitted" note above the form goes
        # with the pane's next live refresh, which can come at once when the job is quick).
        answer = buy.locator(".alert.error").or_(buy.locator("tr[data-status]", has_text=prompt))
        await answer.first.wait_for(timeout=20_000)
        assert await buy.locator(".alert.error").count() == 0, await buy.inner_text()
        done = buy.locator("tr[data-status=done]", has_text=prompt)
        await done.wait_for(timeout=120_000)
        assert await buy.locator("textarea[name=prompt]").input_value() == ""  # ready for another
        assert await buy.locator("input[name=budget_sats]").input_value() == str(PRICE_SATS + 9)
        await _shot(shopper, "11-bought")
