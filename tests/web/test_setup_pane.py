"""The Set Up Your Rig pane: opened first on a first run, each step a form over the setup.*
commands (the same ones autopilotctl, JSON-RPC and MCP see)."""

from __future__ import annotations

import re
from typing import Any

from support import DaemonFactory

from autopilotd.adapters.fake_lightning import FakeNetwork, FakeNode
from autopilotd.app import Adapters


async def test_a_first_run_opens_on_setup_and_walks_the_steps(
    daemon_factory: DaemonFactory, web_login: Any
) -> None:
    d = await daemon_factory()
    web = await web_login(d)
    _, page = await web.get("/")
    assert "<body" in page and 'data-open="setup"' in page.split("<body", 1)[1].split(">", 1)[0]
    status, html = await web.get("/pane/setup")
    assert status == 200 and "first run" in html
    assert 'data-testid="setup-step-words"' in html and 'data-testid="reveal-words"' in html
    status, html = await web.do(
        "setup.reveal_words",
        {"confirm": "I understand this shows my wallet's secret words"},
        pane="setup",
    )
    assert status == 200, html
    words = re.findall(r"<li>([a-z]+)</li>", html.split('data-testid="mnemonic"')[1])
    assert len(words) == 24
    first, second = (int(n) for n in re.findall(r"Word (\d+) <input", html))
    _, html = await web.get("/pane/setup")  # shown once: a reload shows no words
    assert 'data-testid="mnemonic"' not in html and f"Word {first} <input" in html
    status, html = await web.do(
        "setup.confirm_words", {"first": "wrong", "second": words[second - 1]}, pane="setup"
    )
    assert f"word {first} does not match" in html
    status, html = await web.do(
        "setup.confirm_words",
        {"first": words[first - 1], "second": words[second - 1]},
        pane="setup",
    )
    assert 'data-testid="reveal-words"' not in html
    status, html = await web.do("setup.choose_profile", {"profile": "mutinynet"}, pane="setup")
    assert status == 200 and 'data-testid="setup-finish"' in html, html
    assert "ready to start" in html


async def test_a_set_up_daemon_opens_on_go_online(
    daemon_factory: DaemonFactory, web_login: Any
) -> None:
    node = FakeNode(FakeNetwork(), "provider", 0)
    d = await daemon_factory(
        adapters=Adapters(node_factory=lambda m: node),
        wallet_network="regtest",
        wallet_bitcoind_rpc_url="http://u:p@127.0.0.1:1",
    )
    web = await web_login(d)
    _, page = await web.get("/")
    body = page.split("<body", 1)[1].split(">", 1)[0]
    assert 'data-open="go_online"' in body and "Set Up Your Rig" in page  # still in the palette
