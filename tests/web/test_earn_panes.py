"""The earn panes render the provider, jobs and earnings sections in purpose-built layouts."""

from __future__ import annotations

import dataclasses
import html as html_lib
import re
import time
from types import SimpleNamespace
from typing import Any

import pytest
from support import DaemonFactory

from autopilotd.client import RpcError
from autopilotd.runtime.sections import (
    Blocker,
    DaemonSection,
    EarningsSection,
    JobsSection,
    ProviderSection,
    ProviderState,
    WalletSection,
    WalletState,
)
from autopilotd.runtime.snapshot import Snapshot
from autopilotd.web.auth import WebAuth
from autopilotd.web.catalog import BY_NAME, HUD
from autopilotd.web.panes import View
from autopilotd.web.sources import sats_chart
from autopilotd.web.views import WebUI

from .conftest import WebClient

TAG_RE = re.compile(r"<[^>]+>")
NOW = time.time()
HOSTILE = '<script>alert(1)</script><img src=x hx-get="/do/wallet.pay">'


def _job(rid: str, stage: str, **extra: Any) -> dict[str, Any]:
    return {
        "request_id": rid,
        "source": "nostr",
        "buyer_pubkey": "b" * 64,
        "kind": 5050,
        "stage": stage,
        "price_sats": 21,
        "price_msat": 21_000,
        "payment_hash": None,
        "bolt11": None,
        "reason": None,
        "received_at": NOW - 5,
        "updated_at": NOW,
        "pay_deadline_at": None,
        "paid_at": None,
        **extra,
    }


def _snapshot(**sections: Any) -> dict[str, Any]:
    daemon = DaemonSection("0", 1, NOW - 100, "~/.autopilotd", "s1")
    return Snapshot(seq=7, daemon=daemon, **sections).to_json(NOW)


async def _block(name: str, snapshot: dict[str, Any]) -> tuple[dict[str, Any], str]:
    pane = BY_NAME[name]
    rt: Any = SimpleNamespace(clock=SimpleNamespace(now=lambda: NOW))
    data = await pane.load(View(rt, snapshot))
    return data, WebUI(rt, WebAuth(1)).block(pane, data)


async def _render(name: str, snapshot: dict[str, Any]) -> tuple[dict[str, Any], str]:
    data, html = await _block(name, snapshot)
    return data, html_lib.unescape(TAG_RE.sub(" ", html))


async def test_go_online_says_offline_with_what_blocks_and_a_button() -> None:
    provider = ProviderSection(
        blockers=(Blocker("model", "no model ready", "wait for psionic"),),
    )
    _, text = await _render("go_online", _snapshot(provider=provider))
    assert "OFFLINE" in text and "Go Online" in text
    assert "Earning now NO" in " ".join(text.split())
    assert "no model ready" in text and "What to do: wait for psionic" in text


async def test_go_online_says_online_and_the_price() -> None:
    provider = ProviderSection(
        state=ProviderState.ONLINE, reason="online: accepting jobs", price_sats=21
    )
    snap = _snapshot(provider=provider, wallet=WalletSection(state=WalletState.READY))
    _, text = await _render("go_online", snap)
    assert "ONLINE" in text and "Go Offline" in text and "21 sats each" in text


async def test_times_are_rendered_with_their_start_so_the_page_moves_them() -> None:
    """Time online and uptime: today's words, and the absolute start beside them (no heartbeat)."""
    provider = ProviderSection(
        state=ProviderState.ONLINE, reason="online: accepting jobs", online_since=NOW - 65
    )
    snap = _snapshot(provider=provider)
    snap["provider"].pop("heartbeat_at", None)  # the provider does not publish one
    _, html = await _block("provider_status", snap)
    text = " ".join(html_lib.unescape(TAG_RE.sub(" ", html)).split())
    assert "Online for 1 min 5 s" in text and "Heartbeat" not in text
    assert f'<time data-since="{NOW - 65}"' in html
    _, html = await _block(HUD.name, snap)
    assert f'<time data-since="{NOW - 100}" title="since' in html and ">1 min 40 s</time>" in html
    _, html = await _block("earnings_scoreboard", snap)
    assert f'<time data-since="{NOW - 100}" title="since' in html and ">1 min 40 s</time>" in html


async def test_active_job_walks_its_stages_with_the_next_event() -> None:
    jobs = JobsSection(active=(_job("r1", "running"),))
    data, text = await _render("active_job", _snapshot(jobs=jobs))
    assert [(s["name"], s["done"], s["now"]) for s in data["stages"]] == [
        ("received", True, False),
        ("accepted", True, False),
        ("running", False, True),
        ("delivered", False, False),
        ("paid", False, False),
    ]
    assert "Next expected" in text and "result is published" in text
    delivered = JobsSection(active=(_job("r1", "delivered", pay_deadline_at=NOW + 60),))
    data, text = await _render("active_job", _snapshot(jobs=delivered))
    assert "wallet reports it settled" in text and data["stages"][3]["now"]


async def test_the_inbox_marks_offline_rows_as_previews_and_escapes_content() -> None:
    preview = {
        "request_id": "p1",
        "kind": 5050,
        "buyer": "c" * 64,
        "bid_sats": 50,
        "prompt": HOSTILE,
        "received_at": NOW,
        "stage": "preview",
        "claimable": False,
    }
    jobs = JobsSection(inbox=(preview,), rejections={"bid_too_low": 3, "bad_signature": 1})
    pane = BY_NAME["job_inbox"]
    rt: Any = SimpleNamespace(clock=SimpleNamespace(now=lambda: NOW))
    data = await pane.load(View(rt, _snapshot(jobs=jobs)))
    html = WebUI(rt, WebAuth(1)).block(pane, data)
    assert "<script>" not in html and "<img" not in html and "&lt;script&gt;" in html
    text = html_lib.unescape(TAG_RE.sub(" ", html))
    assert "preview" in text and "offline: previews only" in text
    assert data["rejected"] == 4 and data["rejections"][0] == ("bid_too_low", 3)


async def test_scoreboard_chart_milestones_and_the_celebration() -> None:
    earnings = EarningsSection(
        sats_today=42,
        lifetime_sats=42,
        jobs_today=2,
        lifetime_jobs=2,
        series=((NOW - 60, 0), (NOW - 60, 21), (NOW, 42)),
        milestones=(
            {"sats": 10, "reached_at": NOW - 60, "celebrated": True},
            {"sats": 25, "reached_at": NOW, "celebrated": False},
            {"sats": 50, "reached_at": None, "celebrated": False},
            {"sats": 100, "reached_at": None, "celebrated": False},
        ),
    )
    snap = _snapshot(earnings=earnings)
    data, text = await _render("earnings_scoreboard", snap)
    assert data["chart"]["credits"] == 2 and "2 paid jobs shown" in text
    assert "42" in text
    _, hud = await _render(HUD.name, snap)
    assert "25 sats earned!" in hud and "Nice!" in hud and "Earned today" in hud
    seen = tuple({**m, "celebrated": m["reached_at"] is not None} for m in earnings.milestones)
    done = dataclasses.replace(earnings, milestones=seen)
    _, hud = await _render(HUD.name, _snapshot(earnings=done))
    assert "sats earned!" not in hud


def test_the_chart_is_a_step_line_inside_its_box() -> None:
    assert sats_chart([]) is None
    chart = sats_chart([[0.0, 0], [10.0, 5], [20.0, 15]])
    assert chart is not None
    points = [tuple(map(float, p.split(","))) for p in chart["points"].split()]
    assert len(points) == 5  # start, then a rise at each credit (flat, then up)
    assert all(0 <= x <= chart["width"] and 0 <= y <= chart["height"] for x, y in points)
    assert points[0][1] > points[-1][1]  # higher sats are drawn higher (smaller y)


async def test_milestones_can_only_be_marked_once_reached(daemon_factory: DaemonFactory) -> None:
    d = await daemon_factory()
    with pytest.raises(RpcError, match="not reached yet"):
        await d.call("earnings.milestone_seen", {"sats": 10})
    with pytest.raises(RpcError, match="no milestone of 7 sats"):
        await d.call("earnings.milestone_seen", {"sats": 7})


async def test_sync_health_counts_job_events_waiting_for_a_relay(web: WebClient) -> None:
    _, data = await web.get_json("/pane/sync_health")
    assert data["outbox_waiting"] == 0 and data["relays"] == []
    _, html = await web.get("/pane/sync_health")
    assert "every signed job event reached a relay" in html
