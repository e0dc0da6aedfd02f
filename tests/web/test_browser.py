"""The web UI in headless Chromium: the palette, live updates, inert content, the attack page.

Screenshots of the main page and of every pane go to artifacts/web/ (not committed).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web as aioweb
from support import DaemonFactory, InProcessDaemon, online_daemon, wallet_daemon
from support.browser import artifact, chromium
from support.bwrap import needs_bwrap
from support.chat import ScriptedEngine, chat_daemon

from autopilotd.adapters.fake_lightning import FakeNetwork
from autopilotd.app import Adapters
from autopilotd.web.catalog import PANES

from .test_actions import PROBE

pytestmark = pytest.mark.timeout(120)


async def _login(page: Any, d: InProcessDaemon) -> None:
    url = (await d.call("web.login_url"))["url"]
    await page.goto(url)
    await page.wait_for_selector("#live[data-state=live]", timeout=15_000)


async def _events(d: InProcessDaemon) -> list[dict[str, Any]]:
    result = await d.call("events.wait", {"after": 0, "timeout_s": 0, "limit": 1000})
    events: list[dict[str, Any]] = result["events"]
    return events


async def test_the_palette_opens_each_pane(daemon_factory: DaemonFactory, net: FakeNetwork) -> None:
    provider, _ = await wallet_daemon(daemon_factory, net, "provider", 0)
    buyer, _ = await wallet_daemon(daemon_factory, net, "buyer", 80_000_000)
    for amount, memo in ((2100, "translation job"), (500, "embedding batch")):
        inv = await provider.call("wallet.receive", {"amount_sats": amount, "description": memo})
        await buyer.call("wallet.pay", {"bolt11": inv["bolt11"]})
    async with chromium() as ctx:
        page = await ctx.new_page()
        await _login(page, provider)
        await page.wait_for_selector("[data-testid=hud-balance]:has-text('2\u2009600')")
        # New content is wired up in the same step as it is shown: no moment in which a button
        # is on the page and a click on it does nothing.
        assert await page.evaluate("htmx.config.defaultSettleDelay") == 0
        await page.screenshot(path=artifact("main.png"))
        for pane in PANES:
            await page.keyboard.press("Control+k")
            await page.wait_for_selector("#palette[open]")
            await page.fill("#palette-input", pane.command)
            await page.keyboard.press("Enter")
            target = page.locator(f"#pane-{pane.name}")
            await target.wait_for(state="visible")
            assert await page.locator(".pane:visible").count() == 1, pane.name
            assert await target.locator("h2").inner_text() == pane.title.upper()
            assert await page.evaluate("location.hash") == f"#{pane.name}"
            await page.wait_for_timeout(150)  # let a refresh on open settle before the picture
            await page.screenshot(path=artifact(f"pane-{pane.name}.png"))


async def test_invoice_turns_paid_and_the_scoreboard_rises_live(
    daemon_factory: DaemonFactory, net: FakeNetwork
) -> None:
    provider, _ = await wallet_daemon(daemon_factory, net, "provider", 0)
    buyer, _ = await wallet_daemon(daemon_factory, net, "buyer", 80_000_000)
    async with chromium() as ctx:
        seller = await ctx.new_page()
        await _login(seller, provider)
        await seller.click("button[data-open=create_invoice]")
        await seller.fill("#pane-create_invoice input[name=amount_sats]", "4200")
        await seller.fill("#pane-create_invoice input[name=description]", "a paid job")
        await seller.click("#pane-create_invoice button[type=submit]")
        await seller.wait_for_selector("#pane-create_invoice svg.qr")
        assert "WAITING" in await seller.inner_text("#invoice-receipt")
        bolt11 = await seller.input_value("#invoice-bolt11")

        payer = await ctx.new_page()
        await _login(payer, buyer)
        await payer.click("button[data-open=pay_invoice]")
        await payer.fill("#pay-bolt11", bolt11)
        await payer.click("#pane-pay_invoice button[type=submit]")
        await payer.wait_for_selector("[data-testid=confirm-pay]")
        await payer.click("[data-testid=cancel-pay]")  # back to the paste form, and again
        await payer.fill("#pay-bolt11", bolt11)
        await payer.click("#pane-pay_invoice button[type=submit]")
        await payer.wait_for_selector("[data-testid=confirm-pay]")
        assert "4\u2009200" in await payer.inner_text("#pane-pay_invoice")
        await payer.screenshot(path=artifact("flow-pay-confirm.png"))
        await payer.click("[data-testid=confirm-pay]")
        await payer.wait_for_selector("[data-testid=pay-outcome]:has-text('PAID')")
        await payer.screenshot(path=artifact("flow-pay-paid.png"))

        await seller.bring_to_front()
        await seller.wait_for_selector("#invoice-receipt.paid", timeout=10_000)
        await seller.wait_for_selector("[data-testid=hud-balance]:has-text('4\u2009200')")
        await seller.screenshot(path=artifact("flow-invoice-paid.png"))


async def test_payment_and_event_text_renders_inert(
    daemon_factory: DaemonFactory, net: FakeNetwork
) -> None:
    provider, _ = await wallet_daemon(daemon_factory, net, "provider", 0)
    buyer, _ = await wallet_daemon(daemon_factory, net, "buyer", 80_000_000)
    inv = await provider.call("wallet.receive", {"amount_sats": 21, "description": PROBE})
    await buyer.call("wallet.pay", {"bolt11": inv["bolt11"]})
    await provider.call("logs.mark", {"message": PROBE})
    async with chromium() as ctx:
        page = await ctx.new_page()
        posts: list[str] = []
        page.on("request", lambda r: posts.append(r.url) if "/do/" in r.url else None)
        await _login(page, provider)
        await page.click("button[data-open=wallet]")
        await page.wait_for_selector("#pane-wallet td.desc")
        await page.click("button[data-open=activity_feed]")
        await page.wait_for_selector("#pane-activity_feed .ev-logs")
        await page.wait_for_timeout(1500)  # time for any smuggled hx-trigger="load" to fire
        assert await page.evaluate("window.__xss === undefined")
        assert await page.evaluate("document.querySelectorAll('[hx-get*=pwned]').length") == 0
        assert await page.evaluate("document.querySelectorAll('img[src=x]').length") == 0
        assert "<script>window.__xss = 1</script>" in await page.inner_text("#pane-activity_feed")
        await page.click("button[data-open=wallet]")
        assert "<script>" in await page.inner_text("#pane-wallet td.desc")
        await page.screenshot(path=artifact("xss-probe.png"))
    assert posts == []
    marks = [e for e in await _events(provider) if e["name"] == "logs.marked"]
    assert len(marks) == 1  # only the probe's own, none from a smuggled hx-get


ATTACK = """<!doctype html><html><body>
<h1>an ordinary web page</h1>
<iframe name="sink"></iframe>
<form id="f" method="post" action="{ui}/do/logs.mark?pane=activity_feed" target="sink">
  <input name="message" value="csrf-form"></form>
<iframe id="framed" src="{ui}/"></iframe>
<script>
  const out = window.results = {{}};
  document.getElementById("f").submit();
  const body = () => new URLSearchParams({{message: "csrf-fetch"}});
  const settle = (name, p) => p.then(r => out[name] = "status " + r.status + " " + r.type,
                                     e => out[name] = "blocked: " + e);
  Promise.all([
    settle("no_cors", fetch("{ui}/do/logs.mark", {{method: "POST", mode: "no-cors",
      credentials: "include", body: body()}})),
    settle("cors", fetch("{ui}/do/logs.mark", {{method: "POST", credentials: "include",
      headers: {{"X-CSRF-Token": "guess", "Content-Type": "application/json"}},
      body: JSON.stringify({{message: "csrf-cors"}})}})),
    settle("read", fetch("{ui}/pane/wallet", {{credentials: "include"}}).then(async r => {{
      out.read_body = await r.text(); return r; }})),
    settle("rebind", fetch("{rebind}/do/logs.mark", {{method: "POST", mode: "no-cors",
      credentials: "include", body: body()}})),
  ]).then(() => out.done = true);
</script></body></html>"""


@pytest.fixture
async def attack_site() -> AsyncIterator[tuple[str, dict[str, str]]]:
    """Another loopback origin that serves whatever page the test puts in `pages`."""
    pages: dict[str, str] = {}

    async def serve(request: aioweb.Request) -> aioweb.Response:
        name = request.match_info["name"]
        if name not in pages:
            raise aioweb.HTTPNotFound()
        return aioweb.Response(text=pages[name], content_type="text/html")

    app = aioweb.Application()
    app.router.add_get("/{name}", serve)
    runner = aioweb.AppRunner(app)
    await runner.setup()
    site = aioweb.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", pages
    finally:
        await runner.cleanup()


async def test_attack_page_changes_nothing(
    daemon: InProcessDaemon, attack_site: tuple[str, dict[str, str]]
) -> None:
    """RELIABILITY T11: form POST, fetch, iframe and a rebound host name, from a logged-in browser."""
    attacker, pages = attack_site
    ui = f"http://127.0.0.1:{daemon.port}"
    rebind = f"http://rebind.test:{daemon.port}"
    pages["attack.html"] = ATTACK.format(ui=ui, rebind=rebind)
    before = (await daemon.call("status"))["seq"]
    events_before = len(await _events(daemon))
    async with chromium(
        "--host-resolver-rules=MAP rebind.test 127.0.0.1", errors_expected_from=(attacker, rebind)
    ) as ctx:
        victim = await ctx.new_page()
        await _login(victim, daemon)  # the browser holds a valid session cookie
        page = await ctx.new_page()
        await page.goto(f"{attacker}/attack.html")
        await page.wait_for_function("window.results && window.results.done", timeout=15_000)
        await page.wait_for_timeout(500)
        results = await page.evaluate("window.results")
        await page.screenshot(path=artifact("attack-page.png"))
        # sent, refused, and unreadable (opaque, or blocked outright by CORP same-origin)
        assert results["no_cors"].startswith(("status 0 opaque", "blocked"))
        assert results["cors"].startswith("blocked")  # no CORS: the preflight fails
        assert results["read"].startswith("blocked") and "read_body" not in results
        for frame in page.frames[1:]:
            text = ""
            try:
                text = await frame.evaluate("document.body ? document.body.innerText : ''")
            except Exception:
                text = ""  # an error page of another origin: refused
            assert "AUTOPILOT" not in text and "Wallet" not in text, frame.url
        rebound = await ctx.new_page()
        for path in ("/", "/pane/wallet", "/events/stream"):
            response = await rebound.goto(rebind + path)
            assert response is not None and response.status == 403, path
            assert "forbidden host" in await rebound.content()
        assert "wallet" in (await victim.content()).lower()  # the real tab still works
    await asyncio.sleep(0.2)
    after = await _events(daemon)
    assert len(after) == events_before, [(e["name"], e["fields"]) for e in after[events_before:]]
    assert not [e for e in after if e["name"] == "logs.marked"]
    assert (await daemon.call("status"))["seq"] == before


async def test_activity_feed_filters_and_follows_new_events(daemon: InProcessDaemon) -> None:
    async with chromium() as ctx:
        page = await ctx.new_page()
        await _login(page, daemon)
        # htmx wires up a re-rendered pane only once its swap settles (20 ms by default): a
        # filter typed before that must still apply. A long settle makes that window certain.
        await page.evaluate("htmx.config.defaultSettleDelay = 3000")
        await page.keyboard.press("Control+k")
        await page.fill("#palette-input", "activity")
        await page.keyboard.press("Enter")
        await page.wait_for_selector("#activity-list p:has-text('events')")  # rendered
        await page.fill("#activity-filter", "logs")
        await page.wait_for_selector("#activity-list p:has-text('0 of')")
        await daemon.call("logs.mark", {"message": "first live event"})
        await page.wait_for_selector("#pane-activity_feed .ev-logs:has-text('first live event')")
        await daemon.call("logs.mark", {"message": "second live event"})
        await page.wait_for_selector("#pane-activity_feed .ev-logs:has-text('second live event')")
        names = await page.locator("#pane-activity_feed .ev-name").all_inner_texts()
        assert names == ["logs.marked", "logs.marked"]  # newest first, filter kept
        assert await page.input_value("#activity-filter") == "logs"
        await page.screenshot(path=artifact("flow-activity-live.png"))


async def test_a_live_refresh_keeps_the_caret_of_the_field_being_typed_in(
    daemon: InProcessDaemon,
) -> None:
    """A refresh that lands between selecting a field's value and typing over it (what a person
    does with a double-click, or a test with fill) must not put the typing before the old value.
    """
    async with chromium() as ctx:
        page = await ctx.new_page()
        await _login(page, daemon)
        await page.click("button[data-open=network_requests]")
        pane = "#pane-network_requests"
        for field, value, start, end, typed, expected in (
            ("#buy-budget", None, 0, None, "30", "30"),  # the whole default value selected
            ("#buy-prompt", "hello world", 5, 5, ",", "hello, world"),  # a caret mid-text
        ):
            await page.wait_for_selector(field)
            if value is not None:
                await page.fill(field, value)
            await page.focus(field)
            before = await page.evaluate_handle(
                """([field, start, end]) => {
                     const el = document.querySelector(field);
                     if (end === null) el.select();
                     else el.setSelectionRange(start, end);
                     return el;
                   }""",
                [field, start, end],
            )
            await page.evaluate(f"htmx.trigger(document.querySelector('{pane}'), 'ap:refresh')")
            await page.wait_for_function(
                """([field, before]) => document.querySelector(field) !== before""",
                arg=[field, before],
            )
            await page.keyboard.insert_text(typed)
            assert await page.input_value(field) == expected
            assert await page.evaluate(f"document.activeElement.matches('{field}')")


# The login page is answered with HTTP 401 (no session), and Chromium logs every page that
# loads with an error status; only that page's own load is expected, not a pane's.
LOGIN_PAGE_401 = r"^(http://[^/]+/): console error: .* status of 401 \(Unauthorized\) \(at \1\)$"


async def test_log_out_shows_the_login_page(daemon: InProcessDaemon) -> None:
    async with chromium(errors_expected=(LOGIN_PAGE_401,)) as ctx:
        page = await ctx.new_page()
        await _login(page, daemon)
        cookies = await ctx.cookies()
        assert [(c["httpOnly"], c["sameSite"]) for c in cookies] == [(True, "Strict")]
        assert await page.evaluate("document.cookie") == ""  # HttpOnly: scripts cannot read it
        await page.click("button.logout")
        await page.wait_for_selector("body.login")
        assert "autopilotctl web" in await page.inner_text("main")
        await page.screenshot(path=artifact("login.png"))
        await page.reload()
        assert await page.locator("#hud").count() == 0


def _sections_changed(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The snapshot sections that differ, the daemon's age (always moving) left out."""

    def plain(snapshot: dict[str, Any]) -> dict[str, Any]:
        daemon = {k: v for k, v in snapshot["daemon"].items() if k != "uptime_s"}
        return {**snapshot, "daemon": daemon, "seq": None}

    a, b = plain(before), plain(after)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


async def test_an_idle_page_asks_for_nothing_while_its_times_move(
    daemon_factory: DaemonFactory,
) -> None:
    """Online and idle for 30 s: the snapshot's seq stands still, no pane and not the
    scoreboard is re-rendered (not one request to /pane/), yet the uptime moves by itself."""
    daemon = await online_daemon(daemon_factory)
    async with chromium() as ctx:
        page = await ctx.new_page()
        ticks: list[str] = []
        cdp = await ctx.new_cdp_session(page)
        await cdp.send("Network.enable")
        cdp.on(
            "Network.eventSourceMessageReceived",
            lambda m: ticks.append(m["data"]) if m["eventName"] == "tick" else None,
        )
        await _login(page, daemon)
        await page.wait_for_function("!document.querySelector('.htmx-request')")  # opened
        uptime = page.locator("[data-testid=hud-uptime] time[data-since]")
        first = await uptime.inner_text()
        before = await daemon.call("status")
        ticks.clear()
        asked: list[str] = []
        page.on("request", lambda r: asked.append(r.url) if "/pane/" in r.url else None)
        await page.wait_for_timeout(30_000)  # six ticks (TICK_S = 5 s)
        after = await daemon.call("status")
        last = await uptime.inner_text()
        await page.screenshot(path=artifact("idle.png"))
    changed = _sections_changed(before, after)
    assert after["provider"]["state"] == "online"
    assert (after["seq"], changed) == (before["seq"], []), "the daemon was not idle"
    assert len(ticks) >= 5, ticks
    assert asked == []
    assert first != last, (first, last)


async def test_an_action_that_fails_shows_why_in_its_pane(daemon: InProcessDaemon) -> None:
    """The answer to a refused action (HTTP 400 with the pane) is shown, not dropped."""
    async with chromium() as ctx:
        page = await ctx.new_page()
        await _login(page, daemon)
        await page.click("button[data-open=relay_connections]")
        pane = page.locator("#pane-relay_connections")
        await pane.locator("input[name=url]").fill("http://not-a-relay.example")
        await pane.locator("button[type=submit]").click()
        error = pane.locator("[data-testid=relays-error]")
        await error.wait_for(timeout=10_000)
        assert "ws:// or wss://" in await error.inner_text()
        assert await pane.locator("input[name=url]").input_value() == "http://not-a-relay.example"


async def test_a_chat_thread_streams_into_its_pane_over_one_event_source(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """The Autopilot Chat pane follows the thread it shows over /chat/<id>/stream: the agent's
    text appears as it streams, through one EventSource for the thread, however many times the
    pane re-renders; picking another thread moves it there, opening another pane closes it."""
    engine = ScriptedEngine()
    d = await chat_daemon(daemon_factory, adapters=Adapters(engine=engine))
    (tmp_path / "ws").mkdir()
    first = await d.call("thread.start", {"workspace": str(tmp_path / "ws"), "title": "first"})
    second = await d.call("thread.start", {"workspace": str(tmp_path / "ws"), "title": "second"})
    base = f"http://127.0.0.1:{d.port}"
    async with chromium() as ctx:
        page = await ctx.new_page()
        cdp = await ctx.new_cdp_session(page)
        await cdp.send("Network.enable")
        opened: list[tuple[str, str]] = []  # the page's chat streams: request id, address
        closed: list[str] = []  # request ids

        def sent(m: dict[str, Any]) -> None:
            if m.get("type") == "EventSource" and "/chat/" in m["request"]["url"]:
                opened.append((m["requestId"], m["request"]["url"].removeprefix(base)))

        cdp.on("Network.requestWillBeSent", sent)
        cdp.on("Network.loadingFailed", lambda m: closed.append(m["requestId"]))
        await _login(page, d)
        await page.goto(f"{base}/?thread={first['id']}#autopilot_chat")
        await page.wait_for_selector(f".chat-thread[data-thread='{first['id']}']")
        await d.call("turn.start", {"thread_id": first["id"], "input": "hello"})
        for piece, shown in (("streaming ", "streaming"), ("text", "streaming text")):
            await engine.pieces.put(piece)
            await page.wait_for_selector(f".chat-agent_message:has-text('{shown}')")
        await engine.pieces.put(None)
        await page.wait_for_selector(".chat-turn:has-text('turn 1: completed')")
        await page.screenshot(path=artifact("chat-streamed.png"))
        assert [url for _, url in opened] == [f"/chat/{first['id']}/stream?after=1"]
        assert opened[0][0] not in closed  # kept across every re-render

        await page.click(f"button.chip:has-text('{second['id']}')")
        await page.wait_for_selector(f".chat-thread[data-thread='{second['id']}']")
        await _until(lambda: len(opened) == 2 and opened[0][0] in closed)
        assert opened[1][1] == f"/chat/{second['id']}/stream?after=2"
        await page.click("button[data-open=identity_keys]")  # a pane that is not refreshed
        await _until(lambda: opened[1][0] in closed)  # none left open
        assert len(opened) == 2


@needs_bwrap
async def test_a_command_is_approved_in_the_chat_pane_and_its_output_shows(
    daemon_factory: DaemonFactory, user_workspace: Path
) -> None:
    """Send /run with the composer: the approval card comes in live (over the thread's
    stream), Approve runs the command in the sandbox, and its card shows the output and the
    exit code."""
    d = await chat_daemon(daemon_factory, chat_approval_timeout_s=60.0)
    thread = await d.call("thread.start", {"workspace": str(user_workspace)})
    async with chromium() as ctx:
        page = await ctx.new_page()
        cdp = await ctx.new_cdp_session(page)
        await cdp.send("Network.enable")
        streamed: list[str] = []  # the chat stream's event types, as the page received them
        cdp.on("Network.eventSourceMessageReceived", lambda m: streamed.append(m["eventName"]))
        await _login(page, d)
        await page.goto(f"http://127.0.0.1:{d.port}/?thread={thread['id']}#autopilot_chat")
        pane = page.locator("#pane-autopilot_chat")
        await pane.locator(f".chat-thread[data-thread='{thread['id']}']").wait_for()
        assert "no model" in await pane.locator("[data-testid=chat-badge]").inner_text()
        await pane.locator("[data-testid=chat-input]").fill("/run echo hello-from-the-sandbox")
        await pane.locator("[data-testid=chat-send]").click()
        card = pane.locator(".chat-command_execution")
        await card.locator("[data-testid=chat-approval]").wait_for(timeout=15_000)
        assert "approval.requested" in streamed
        assert "echo hello-from-the-sandbox" in await card.inner_text()
        assert await card.locator("[data-testid=chat-output]").count() == 0  # nothing ran
        await page.screenshot(path=artifact("chat-approval.png"))

        await card.locator("[data-testid=chat-approve]").click()
        output = card.locator("[data-testid=chat-output]")
        await output.wait_for(timeout=15_000)
        assert (await output.inner_text()).strip() == "hello-from-the-sandbox"
        exit_line = await card.locator("[data-testid=chat-exit]").inner_text()
        assert "exit code 0" in exit_line and "succeeded" in exit_line
        assert "APPROVED" in await card.locator("[data-testid=chat-approval-outcome]").inner_text()
        await pane.locator(".chat-turn:has-text('turn 1: completed')").wait_for()
        await page.screenshot(path=artifact("chat-command-output.png"))


async def _until(condition: Any, timeout_s: float = 10) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.05)
