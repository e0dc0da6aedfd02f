"""settings.update, relays.add/remove: checked like config.toml, saved keeping the file, applied."""

from __future__ import annotations

import stat
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import DaemonFactory, InProcessDaemon

from autopilotd.client import RpcError
from autopilotd.config import Config, load_config, save_settings
from autopilotd.errors import UserError
from autopilotd.paths import Paths

USER_FILE = """# my autopilotd settings
log_level = "DEBUG"  # keep this comment
provider_price_sats = 10
"""


async def until(d: InProcessDaemon, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    status: dict[str, Any] = await d.call("status")
    for _ in range(100):
        if check(status):
            return status
        status = await d.call("status.wait", {"after_seq": status["seq"], "timeout_s": 0.2})
    raise AssertionError(f"never met: {status}")


def shown(result: dict[str, Any], name: str) -> dict[str, Any]:
    row: dict[str, Any] = next(e for e in result["editable"] if e["name"] == name)
    return row


def test_save_settings_keeps_other_keys_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "config" / "config.toml"
    path.parent.mkdir()
    path.write_text(USER_FILE)
    save_settings(path, {"provider_price_sats": 25, "relays": "ws://a:1"})
    text = path.read_text()
    assert "# my autopilotd settings" in text and "# keep this comment" in text
    assert tomllib.loads(text) == {
        "log_level": "DEBUG",
        "provider_price_sats": 25,
        "relays": "ws://a:1",
    }
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cfg = load_config(Paths.for_home(tmp_path), env={})
    assert cfg.provider_price_sats == 25 and cfg.relays == "ws://a:1"


def test_save_settings_refuses_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("relays = [unclosed")
    with pytest.raises(UserError, match="not valid TOML"):
        save_settings(path, {"provider_price_sats": 25})
    assert path.read_text() == "relays = [unclosed"


def test_updated_checks_like_load_config(tmp_path: Path) -> None:
    cfg = Config(paths=Paths.for_home(tmp_path))
    assert cfg.updated({"relays": "ws://a:1, ws://a:1,wss://b"}, "t").relays == "ws://a:1, wss://b"
    with pytest.raises(UserError, match="must be a ws:// or wss:// URL"):
        cfg.updated({"relays": "http://a"}, "t")
    with pytest.raises(UserError, match="at least 1"):
        cfg.updated({"provider_price_sats": 0}, "t")
    with pytest.raises(UserError, match="regtest needs wallet_bitcoind_rpc_url"):
        cfg.updated({"wallet_network": "regtest"}, "t")


async def test_price_applies_now_and_is_saved(daemon_factory: DaemonFactory) -> None:
    d = await daemon_factory()
    config_file = d.paths.config_file
    config_file.write_text(USER_FILE)
    result = await d.call("settings.update", {"provider_price_sats": 42})
    assert result == {
        "changed": ["provider_price_sats"],
        "applied": ["provider_price_sats"],
        "restart": [],
    }
    text = config_file.read_text()
    assert "# keep this comment" in text and tomllib.loads(text)["provider_price_sats"] == 42
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    await until(d, lambda s: s["provider"]["price_sats"] == 42)
    assert shown(await d.call("settings.show"), "provider_price_sats")["value"] == 42
    events = await d.call("events.wait", {"after": 0, "timeout_s": 0, "limit": 1000})
    [changed] = [e for e in events["events"] if e["name"] == "settings.changed"]
    assert changed["fields"]["applied"] == ["provider_price_sats"]
    again = await d.call("settings.update", {"provider_price_sats": 42})
    assert again["changed"] == []  # the same value again changes nothing


async def test_a_restart_setting_stays_pending_and_the_running_value_is_kept(
    daemon_factory: DaemonFactory,
) -> None:
    d = await daemon_factory(wallet_bitcoind_rpc_url="http://u:p@127.0.0.1:1")
    result = await d.call("settings.update", {"wallet_network": "regtest"})
    assert result["restart"] == ["wallet_network"] and result["applied"] == []
    row = shown(await d.call("settings.show"), "wallet_network")
    assert row == {
        "name": "wallet_network",
        "value": "off",
        "applies": "restart",
        "pending": True,
        "saved": "regtest",
        "locked_by": None,
    }
    assert tomllib.loads(d.paths.config_file.read_text())["wallet_network"] == "regtest"
    status = await d.call("status")
    assert status["wallet"]["state"] == "needs_setup"  # the running wallet is untouched
    back = await d.call("settings.update", {"wallet_network": "off"})
    assert back["restart"] == []
    assert not shown(await d.call("settings.show"), "wallet_network")["pending"]


async def test_max_inflight_applies_now_within_its_bounds(daemon_factory: DaemonFactory) -> None:
    d = await daemon_factory()
    result = await d.call("settings.update", {"provider_max_inflight": 3})
    assert result["applied"] == ["provider_max_inflight"] and result["restart"] == []
    await until(d, lambda s: s["provider"]["max_inflight"] == 3)
    with pytest.raises(RpcError, match="at most 32"):
        await d.call("settings.update", {"provider_max_inflight": 33})


async def test_a_bad_value_is_refused_and_nothing_is_written(daemon_factory: DaemonFactory) -> None:
    d = await daemon_factory()
    with pytest.raises(RpcError) as refused:
        await d.call("settings.update", {"provider_price_sats": 5, "relays": "http://nope"})
    assert refused.value.message == "relay 'http://nope' must be a ws:// or wss:// URL"
    with pytest.raises(RpcError, match="wallet_network must be one of"):
        await d.call("settings.update", {"wallet_network": "moon"})
    assert not d.paths.config_file.exists()
    assert shown(await d.call("settings.show"), "provider_price_sats")["value"] == 10


async def test_a_setting_from_the_environment_is_not_saved(
    daemon_factory: DaemonFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = await daemon_factory()
    monkeypatch.setenv("AUTOPILOTD_PROVIDER_PRICE_SATS", "10")
    with pytest.raises(RpcError, match="AUTOPILOTD_PROVIDER_PRICE_SATS"):
        await d.call("settings.update", {"provider_price_sats": 20})
    assert not d.paths.config_file.exists()
    assert shown(await d.call("settings.show"), "provider_price_sats")["locked_by"] == (
        "AUTOPILOTD_PROVIDER_PRICE_SATS"
    )
    saved = await d.call("settings.update", {"provider_price_sats": 10, "provider_max_inflight": 2})
    assert saved["changed"] == ["provider_max_inflight"]  # the unchanged locked one is fine


async def test_relays_added_and_removed_while_running(daemon_factory: DaemonFactory) -> None:
    d = await daemon_factory()
    services = {s["name"] for s in (await d.call("status"))["services"]}
    assert {"provider", "buyer"} <= services  # they run without relays now
    status = await until(d, lambda s: any(b["id"] == "relays" for b in s["provider"]["blockers"]))
    assert "no relays configured" in str(status["provider"]["blockers"])

    url = "ws://127.0.0.1:9"  # nothing listens: the row shows the relay trying
    result = await d.call("relays.add", {"url": url})
    assert result["applied"] == ["relays"]
    await until(d, lambda s: [r["url"] for r in s["relays"]] == [url])
    assert tomllib.loads(d.paths.config_file.read_text())["relays"] == url
    with pytest.raises(RpcError, match="already in the list"):
        await d.call("relays.add", {"url": url})
    with pytest.raises(RpcError, match="must be a ws:// or wss:// URL"):
        await d.call("relays.add", {"url": "relay.example"})

    await d.call("relays.remove", {"url": url})
    await until(d, lambda s: s["relays"] == [])
    assert tomllib.loads(d.paths.config_file.read_text())["relays"] == ""
    with pytest.raises(RpcError, match="not in the list"):
        await d.call("relays.remove", {"url": url})
    with pytest.raises(RpcError, match="buying needs relays"):
        await d.call(
            "buy.submit", {"prompt": "hi", "budget_sats": 10}
        )  # the buyer follows the same list


async def test_the_model_is_chosen_among_those_psionic_serves(
    daemon_factory: DaemonFactory,
) -> None:
    d = await daemon_factory()  # no local runtime: no chat model to choose
    with pytest.raises(RpcError, match="serves no chat model now") as refused:
        await d.call("settings.update", {"provider_model": "gpt-imaginary"})
    assert "off" in refused.value.message  # and says why: the runtime is off
    assert (
        not d.paths.config_file.exists() or "provider_model" not in d.paths.config_file.read_text()
    )
    result = await d.call("settings.update", {"provider_model": ""})
    assert result["changed"] == []  # psionic's default, as it was
    row = shown(await d.call("settings.show"), "provider_model")
    assert row["applies"] == "now" and row["value"] == ""


async def test_a_nexus_url_is_checked_saved_and_brings_its_relay(
    daemon_factory: DaemonFactory,
) -> None:
    d = await daemon_factory()
    for bad in ("ws://nexus.example", "http://", "http://nexus.example/?a=1", "nexus.example"):
        with pytest.raises(RpcError, match="must be an http:// or https:// URL"):
            await d.call("settings.update", {"nexus_url": bad})
    result = await d.call("settings.update", {"nexus_url": "http://127.0.0.1:9/"})
    assert result["changed"] == ["nexus_url"]
    assert 'nexus_url = "http://127.0.0.1:9/"' in d.paths.config_file.read_text()
    status = await until(
        d,
        lambda s: (
            [r["url"] for r in s["relays"]] == ["ws://127.0.0.1:9"]
            and s["starter"]["nexus_url"] == "http://127.0.0.1:9/"
        ),
    )
    assert status["starter"]["state"] == "idle"  # offline: no session is opened
    await d.call("settings.update", {"nexus_url": ""})
    status = await until(d, lambda s: s["relays"] == [] and s["starter"]["state"] == "off")
