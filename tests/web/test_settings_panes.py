"""The Settings pane saves through settings.update; Relay Connections adds and removes relays."""

from __future__ import annotations

import tomllib
from typing import Any

from support import DaemonFactory

FORM = {
    "relays": "",
    "provider_price_sats": "10",
    "provider_max_inflight": "1",
    "wallet_network": "off",
}


async def test_settings_pane_is_a_form_that_says_when_each_setting_applies(
    daemon_factory: DaemonFactory, web_login: Any
) -> None:
    d = await daemon_factory(
        wallet_bitcoind_rpc_url="http://user:secret@127.0.0.1:1", wallet_lsp_token="lsp-secret"
    )
    web = await web_login(d)
    status, html = await web.get("/pane/settings")
    assert status == 200
    assert 'hx-post="/do/settings.update?pane=settings"' in html
    assert 'name="provider_price_sats"' in html and 'name="wallet_network"' in html
    assert html.count("applies now") == 6 and html.count("applies at restart") == 1
    assert 'name="nexus_url"' in html and 'name="wallet_jit_max_fee_sats"' in html
    assert 'name="provider_model"' in html and "psionic's default" in html
    assert "secret" not in html and "//•••@127.0.0.1:1" in html  # read-only, redacted
    assert "log_level" in html


async def test_saving_applies_now_or_says_it_waits_for_a_restart(
    daemon_factory: DaemonFactory, web_login: Any
) -> None:
    d = await daemon_factory(wallet_bitcoind_rpc_url="http://u:p@127.0.0.1:1")
    web = await web_login(d)
    form = {**FORM, "provider_price_sats": "33", "wallet_network": "regtest"}
    status, html = await web.do("settings.update", form, pane="settings")
    assert status == 200, html
    assert "Saved ✓" in html and "applied now: provider_price_sats" in html
    assert "saved; applies when autopilotd restarts: wallet_network" in html
    assert 'data-testid="pending-wallet_network"' in html
    assert "running now: <code>off</code>" in html  # the running value stays visible
    assert 'value="regtest" selected' in html and 'value="33"' in html
    saved = tomllib.loads(d.paths.config_file.read_text())
    assert saved == {"provider_price_sats": 33, "wallet_network": "regtest"}
    assert (await d.call("status"))["provider"]["price_sats"] == 33
    _, again = await web.get("/pane/settings")
    assert 'data-testid="pending-wallet_network"' in again  # pending until restart


async def test_a_bad_value_is_shown_in_words_and_nothing_is_saved(
    daemon_factory: DaemonFactory, web_login: Any
) -> None:
    d = await daemon_factory()
    web = await web_login(d)
    form = {**FORM, "provider_price_sats": "0"}
    status, html = await web.do("settings.update", form, pane="settings")
    assert status == 200  # the pane is re-rendered with the error in it
    assert "Not saved: provider_price_sats and provider_max_inflight must be at least 1" in html
    assert 'name="provider_price_sats" value="0"' in html  # what was typed, to correct it
    form = {**FORM, "relays": 'ws://x"><b>bold</b>'}
    status, html = await web.do("settings.update", form, pane="settings")
    assert "Not saved: relay" in html and "must be a ws:// or wss:// URL" in html
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html  # escaped
    assert "Saved ✓" not in html and not d.paths.config_file.exists()


async def test_relays_are_listed_added_and_removed_from_the_pane(
    daemon_factory: DaemonFactory, web_login: Any
) -> None:
    d = await daemon_factory()
    web = await web_login(d)
    status, html = await web.get("/pane/relay_connections")
    assert status == 200 and "No relays" in html
    assert 'hx-post="/do/relays.add?pane=relay_connections"' in html

    url = "ws://127.0.0.1:9"
    status, html = await web.do("relays.add", {"url": url}, pane="relay_connections")
    assert status == 200, html
    assert "Relay added" in html and f'<td class="mono" hx-disable>{url}</td>' in html
    assert 'hx-post="/do/relays.remove?pane=relay_connections"' in html
    assert f'<input type="hidden" name="url" value="{url}">' in html
    assert tomllib.loads(d.paths.config_file.read_text())["relays"] == url
    _, data = await web.get_json("/pane/relay_connections")
    [row] = data["relays"]
    assert row["url"] == url and row["state"] in ("connecting", "disconnected")
    assert {"last_seen", "last_error", "events_in", "publish_accepted"} <= set(row)

    status, html = await web.do("relays.add", {"url": "<i>x</i>"}, pane="relay_connections")
    assert status == 200 and "must be a ws:// or wss:// URL" in html
    assert "<i>x</i>" not in html and "&lt;i&gt;x&lt;/i&gt;" in html

    status, html = await web.do("relays.remove", {"url": url}, pane="relay_connections")
    assert status == 200 and "Relay removed" in html and "No relays" in html
    assert (await d.call("status"))["relays"] == []
