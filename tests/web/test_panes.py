"""Every pane renders inside the full page, alone as a fragment, and as JSON (its twin)."""

from __future__ import annotations

import asyncio
import dataclasses
import html as html_lib
import re
from pathlib import Path
from typing import Any

import pytest
from support import DaemonFactory, wallet_daemon

from autopilotd.adapters.fake_lightning import FakeNetwork
from autopilotd.errors import UserError
from autopilotd.runtime.sections import StarterSection
from autopilotd.web.auth import WebAuth
from autopilotd.web.catalog import BY_NAME, HUD, PANES
from autopilotd.web.panes import View
from autopilotd.web.views import WebUI

from .conftest import WebClient

TEMPLATES = Path(__file__).resolve().parents[2] / "autopilotd" / "web" / "templates"
TAG_RE = re.compile(r"<[^>]+>")


async def _check_every_pane(web: WebClient) -> None:
    status, page = await web.get("/")
    assert status == 200
    for pane in (HUD, *PANES):
        if pane is not HUD:
            assert f'id="pane-{pane.name}"' in page, pane.name
        status, fragment = await web.get(f"/pane/{pane.name}", **{"HX-Request": "true"})
        assert status == 200, (pane.name, fragment)
        assert "<html" not in fragment and "<body" not in fragment, pane.name
        assert "could not load" not in fragment, (pane.name, fragment)
        if pane is not HUD:
            assert f"<h2>{pane.title}</h2>" in fragment and pane.title in page, pane.name
        status, data = await web.get_json(f"/pane/{pane.name}")
        assert status == 200 and isinstance(data, dict) and "failed" not in data, pane.name


async def test_every_pane_renders_with_the_wallet_off(web: WebClient) -> None:
    await _check_every_pane(web)
    _, data = await web.get_json("/pane/wallet")
    assert data["wallet"]["state"] == "needs_setup" and data["history"] == []
    _, hud = await web.get("/pane/hud")
    assert "OFFLINE" in hud and "Go Online" in hud


async def test_every_pane_renders_with_a_ready_wallet(
    daemon_factory: DaemonFactory, net: FakeNetwork, web_login: Any
) -> None:
    provider, _ = await wallet_daemon(daemon_factory, net, "provider", 0)
    buyer, _ = await wallet_daemon(daemon_factory, net, "buyer", 50_000_000)
    inv = await provider.call("wallet.receive", {"amount_sats": 2100, "description": "first job"})
    paid = await buyer.call("wallet.pay", {"bolt11": inv["bolt11"]})
    assert paid["settled"]
    web = await web_login(buyer)
    await _check_every_pane(web)
    _, data = await web.get_json("/pane/wallet")
    assert data["wallet"]["state"] == "ready"
    assert [p["amount_sats"] for p in data["history"]] == [2100]
    _, html = await web.get("/pane/wallet")
    assert "first job" in html and "2\u2009100" in html
    _, alerts = await web.get_json("/pane/alerts_recovery")
    assert alerts["alerts"] == [] and alerts["earning"]["wallet_ready"] is True


def test_each_pane_is_one_block_named_after_it() -> None:
    for name in BY_NAME:
        text = (TEMPLATES / "panes" / f"{name}.html").read_text()
        assert re.findall(r"{%\s*block\s+(\w+)", text) == [name], name
    assert {p.stem for p in (TEMPLATES / "panes").glob("*.html")} == set(BY_NAME)


def test_no_template_marks_anything_safe() -> None:
    for path in TEMPLATES.rglob("*.html"):
        text = path.read_text()
        assert "|safe" not in text.replace(" ", ""), path
        assert "autoescape false" not in text, path
    for path in TEMPLATES.parent.glob("*.py"):
        assert "Markup(" not in path.read_text(), path


def test_no_selector_of_a_template_can_match_nothing() -> None:
    """htmx logs an error for an hx-include that matches nothing (a pane without kept fields),
    and hx-include is inherited by every button inside; app.js sends a pane's kept fields."""
    for path in TEMPLATES.rglob("*.html"):
        assert "hx-include" not in path.read_text(), path


def test_relative_times_are_rendered_where_the_page_can_move_them() -> None:
    """`ago` and `duration` only inside the macros that write <time data-since> (or data-age)."""
    for path in TEMPLATES.rglob("*.html"):
        if path.name != "macros.html":
            assert not re.search(r"\|\s*(ago|duration)\b", path.read_text()), path


async def test_nothing_on_the_page_is_refreshed_by_the_tick(web: WebClient) -> None:
    _, page = await web.get("/")
    live = re.findall(r'data-live="([^"]*)"', page)
    assert len(live) == len(PANES) + 1  # every pane and the scoreboard
    assert not [kinds for kinds in live if "tick" in kinds.split()]
    assert 'data-testid="hud-uptime"' in page and "<time data-since=" in page


def test_the_palette_has_one_command_per_pane() -> None:
    commands = [p.command for p in PANES]
    assert len(commands) == len(set(commands)) == 25
    assert all(c == f"pane.{p.name}" for c, p in zip(commands, PANES, strict=True))


@pytest.mark.parametrize("missing", ["/pane/nope", "/pane/..%2Fwallet"])
async def test_unknown_panes_are_404(web: WebClient, missing: str) -> None:
    status, _ = await web.get(missing)
    assert status == 404


class _Broken:
    name = "broken"

    async def run(self, ready: Any) -> None:
        raise UserError("the broken service cannot reach its relay")


async def test_alerts_list_failures_with_what_to_do(
    daemon_factory: DaemonFactory, web_login: Any
) -> None:
    d = await daemon_factory(services=[lambda rt: _Broken()])
    web = await web_login(d)
    for _ in range(100):
        _, data = await web.get_json("/pane/alerts_recovery")
        if data["alerts"]:
            break
        await asyncio.sleep(0.02)
    [alert] = data["alerts"]
    assert alert["source"] == "service broken" and alert["state"] == "failed"
    assert "cannot reach its relay" in alert["what"] and "autopilotctl logs" in alert["do"]
    assert data["earning"]["possible"] is False
    _, html = await web.get("/pane/alerts_recovery")
    assert "cannot reach its relay" in html and "What to do:" in html
    _, hud = await web.get_json("/pane/hud")
    assert hud["alerts"] == 1


async def test_the_starter_jobs_pane_shows_the_lease_and_the_markers_show_the_source() -> None:
    ui = WebUI(None, WebAuth(1))  # rendering needs no runtime
    now = 1_800_000_000.0
    starter = {
        **dataclasses.asdict(StarterSection()),
        "state": "leased",
        "reason": "starter job delivered: waiting for the Nexus to pay 21 sats",
        "nexus_url": "http://nexus.example:8420",
        "nexus_pubkey": "ab" * 32,
        "session": {"session_id": "sess_1", "opened_at": now - 60, "expires_at": now + 3600},
        "eligible": True,
        "offer": {
            "offer_id": "starter-000001",
            "status": "running",
            "kind": 5050,
            "price_sats": 21,
            "request_id": "cd" * 32,
            "job_stage": "delivered",
            "start_confirm_by": now - 10,
            "execution_expires_at": now + 60,
            "next_heartbeat_due_at": now + 25,
            "last_heartbeat_at": now - 5,
        },
        "budget": {
            "reserve_cap_sats": 5000,
            "reserved_sats": 21,
            "daily_cap_sats": 50000,
            "paid_24h_sats": 100,
        },
        "jobs_done": 3,
        "sats_earned": 63,
    }
    snapshot = {"seq": 1, "starter": starter, "provider": {"state": "online"}}
    pane = BY_NAME["starter_jobs"]
    data = await pane.load(View(None, snapshot))
    assert data["budget_left_sats"] == 4979 and data["offer"]["status"] == "running"
    text = html_lib.unescape(TAG_RE.sub(" ", ui.block(pane, data)))
    for words in ("LEASED", "http://nexus.example:8420", "yes", "starter-000001", "job delivered"):
        assert words in text, words
    html = ui.block(pane, data)
    assert f'data-until="{now + 25}"' in html and f'data-until="{now + 60}"' in html
    assert "4\u2009979 sats" in text and "63" in text and "Deadlines are the Nexus" in text
    ineligible = {**starter, "state": "ineligible", "eligible": False, "offer": None}
    ineligible["eligibility_reason"] = "starter_demand_requires_provider_presence_on_this_relay"
    data = await pane.load(View(None, {**snapshot, "starter": ineligible}))
    text = html_lib.unescape(TAG_RE.sub(" ", ui.block(pane, data)))
    assert "starter demand requires provider presence on this relay" in text
    assert "No offer held" in text
    row = {"request_id": "ef" * 32, "kind": 5050, "source": "starter", "stage": "paid"}
    history = BY_NAME["job_history"]
    html = ui.block(
        history,
        {
            "jobs": [{**row, "received_at": now, "price_sats": 21, "paid_at": now, "reason": None}],
            "next_before": None,
            "before": None,
            "restored": [],
        },
    )
    assert "starter · Nexus" in html
