"""First run ("set up your rig") through the registry commands: the explicit needs_setup
state, the words shown once and two of them confirmed, restoring one's own words, choosing a
network profile, and the restart into it (a real process re-executing itself)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from embit import bip39
from support import DaemonFactory, DaemonProcess

from autopilotd.client import RpcError
from autopilotd.commands.wallet import REVEAL_CONFIRMATION
from autopilotd.nostr.identity import identity_from_mnemonic

WORDS = bip39.mnemonic_from_bytes(bytes(range(32)))


def _step(status: dict[str, Any], step: str) -> dict[str, Any]:
    return next(s for s in status["steps"] if s["id"] == step)


async def test_a_first_run_needs_setup_and_says_how(daemon_factory: DaemonFactory) -> None:
    d = await daemon_factory()
    snapshot = await d.call("status")
    assert snapshot["wallet"]["state"] == "needs_setup"  # explicit, not an error
    assert "setup.status" in snapshot["wallet"]["next_step"]
    assert not any(a["source"] == "wallet" for a in snapshot["facts"]["alerts"])
    status = await d.call("setup.status")
    assert status["state"] == "needs_setup"
    assert not _step(status, "words")["done"] and not _step(status, "network")["done"]
    assert {p["name"] for p in status["profiles"]} == {"regtest", "signet", "mutinynet", "bitcoin"}
    with pytest.raises(RpcError) as refused:
        await d.call("provider.online")
    assert "the wallet is not set up yet: back up its words" in refused.value.message


async def test_the_words_are_shown_once_and_two_confirmed(daemon_factory: DaemonFactory) -> None:
    d = await daemon_factory()
    with pytest.raises(RpcError):
        await d.call("setup.confirm_words", {"first": "a", "second": "b"})  # nothing shown yet
    with pytest.raises(RpcError) as refused:
        await d.call("setup.reveal_words", {"confirm": "yes"})
    assert REVEAL_CONFIRMATION in refused.value.message
    shown = await d.call("setup.reveal_words", {"confirm": REVEAL_CONFIRMATION})
    words = shown["mnemonic"].split()
    first, second = shown["confirm_positions"]
    assert len(words) == 24 and 1 <= first < second <= 24
    with pytest.raises(RpcError) as wrong:
        await d.call("setup.confirm_words", {"first": words[first - 1], "second": "zoo-wrong"})
    assert f"word {second} does not match" in wrong.value.message
    assert not _step(await d.call("setup.status"), "words")["done"]
    status = await d.call(
        "setup.confirm_words", {"first": words[first - 1], "second": words[second - 1].upper()}
    )
    assert _step(status, "words")["done"]
    with pytest.raises(RpcError) as again:
        await d.call("setup.reveal_words", {"confirm": REVEAL_CONFIRMATION})
    assert "wallet.reveal_mnemonic" in again.value.message
    with pytest.raises(RpcError) as kept:  # words backed up are the wallet's: never replaced
        await d.call("setup.restore_wallet", {"words": WORDS})
    assert "kept" in kept.value.message


async def test_choosing_a_profile_is_saved_for_the_next_start(
    daemon_factory: DaemonFactory,
) -> None:
    d = await daemon_factory()
    config_file = d.paths.config_file
    before = config_file.read_text() if config_file.exists() else None
    with pytest.raises(RpcError) as unknown:
        await d.call("setup.choose_profile", {"profile": "moon"})
    assert "mutinynet" in unknown.value.message
    with pytest.raises(RpcError) as unusable:  # the devnet's shim is known only at run time
        await d.call("setup.choose_profile", {"profile": "regtest"})
    assert "wallet_bitcoind_rpc_url" in unusable.value.message
    assert (config_file.read_text() if config_file.exists() else None) == before
    chosen = await d.call("setup.choose_profile", {"profile": "signet"})
    assert chosen["network"] == "signet" and chosen["runtime_mode"] == "spawn"
    assert chosen["relays"] and chosen["applies"] == "restart"
    status = await d.call("setup.status")
    assert _step(status, "network")["done"] and status["state"] == "needs_setup"  # words next
    with pytest.raises(RpcError) as early:
        await d.call("setup.finish")
    assert "words" in early.value.message
    assert (await d.call("status"))["wallet"]["state"] == "needs_setup"  # nothing runs yet


def _wait(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except (AssertionError, json.JSONDecodeError, KeyError):
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def _json(d: DaemonProcess, *args: str) -> Any:
    r = d.ctl("--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_restore_then_choose_then_finish_restarts_into_the_network(
    daemon_process: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    d = daemon_process(tmp_path / "rig")
    first_start = _json(d, "status")["daemon"]["started_at"]
    restored = _json(d, "setup.restore_wallet", "--words", WORDS)
    npub = identity_from_mnemonic(WORDS).public().npub
    assert restored["npub"] == npub and restored["restarting"]

    def restarted() -> bool:
        snapshot = _json(d, "status")
        return (
            snapshot["daemon"]["started_at"] != first_start
            and snapshot["daemon"]["state"] == "ready"
        )

    _wait(restarted, "the daemon did not start again after the restore")
    assert d.proc.poll() is None  # the same process, started again
    assert _json(d, "identity.show")["npub"] == npub  # the identity is the restored words'
    replaced = list((d.paths.data_dir / "wallet").glob("wallet.mnemonic.unused-*"))
    assert len(replaced) == 1  # the new, never-used words are kept aside, not deleted
    status = _json(d, "setup.status")
    assert _step(status, "words")["done"] and status["state"] == "needs_setup"
    _json(d, "setup.choose_profile", "--profile", "signet")
    assert _json(d, "setup.status")["state"] == "restart_needed"
    second_start = _json(d, "status")["daemon"]["started_at"]
    assert _json(d, "setup.finish")["restarting"]

    def on_signet() -> bool:
        snapshot = _json(d, "status")
        return (
            snapshot["daemon"]["started_at"] != second_start
            and snapshot["wallet"]["network"] == "signet"
        )

    _wait(on_signet, "the wallet did not start on the chosen network")
    assert _json(d, "setup.status")["state"] == "done"
    d.ctl("daemon.stop")
    assert d.wait_exit() == 0


async def test_a_restored_wallet_says_its_channels_did_not_come_back(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    from web.conftest import login

    from autopilotd.paths import Paths
    from autopilotd.wallet.setup import replace_unused_seed

    replace_unused_seed(Paths.for_home(tmp_path / "restored").data_dir, WORDS)
    for home, restored in (("restored", True), ("new", False)):
        d = await daemon_factory(home=tmp_path / home)
        assert ((await d.call("wallet.status"))["restored_at"] is not None) is restored
        web = await login(d)
        try:
            _, html = await web.get("/pane/wallet")
        finally:
            await web.session.close()
        assert ("Channel balances from before the restore are not in the words" in html) is restored


async def test_a_restore_over_a_wallet_that_has_run_is_refused(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    from autopilotd.paths import Paths
    from autopilotd.wallet.seed import read_seed, seed_path

    data = Paths.for_home(tmp_path / "used").data_dir
    (data / "wallet" / "ldk").mkdir(parents=True)  # its Lightning node has run on this seed
    d = await daemon_factory(home=tmp_path / "used")
    own = read_seed(seed_path(data))
    with pytest.raises(RpcError) as refused:
        await d.call("setup.restore_wallet", {"words": WORDS})
    assert "already run" in refused.value.message and "new home" in refused.value.message
    assert read_seed(seed_path(data)) == own  # nothing replaced
