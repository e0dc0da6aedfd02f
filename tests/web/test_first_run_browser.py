"""The first run in headless Chromium, on a real daemon process: the page opens on Set Up Your
Rig; the words are shown once and two of them typed back; a network profile is chosen; Start
my wallet restarts the daemon into it, and the next login opens on Go Online."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import DaemonProcess
from support.browser import artifact, chromium

pytestmark = pytest.mark.timeout(120)


def _json(d: DaemonProcess, *args: str) -> Any:
    r = d.ctl("--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


async def _open(page: Any, d: DaemonProcess) -> None:
    await page.goto(_json(d, "web.login_url")["url"])
    await page.wait_for_selector("#live[data-state=live]", timeout=15_000)


async def test_a_newcomer_sets_up_the_rig_in_the_browser(
    daemon_process: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    d = daemon_process(tmp_path / "rig")
    # The first page loses its daemon when it restarts: its reconnects fail, as they should.
    gone = (r"ERR_CONNECTION_REFUSED", r"htmx:(afterRequest|sendError)")
    async with chromium(errors_expected=gone) as ctx:
        page = await ctx.new_page()
        await _open(page, d)
        setup = page.locator("#pane-setup")
        await setup.wait_for(state="visible")  # a first run opens here
        await setup.locator("input[name=confirm]").check()
        await setup.locator("[data-testid=reveal-words]").click()
        await setup.locator("[data-testid=mnemonic]").wait_for()
        words = await setup.locator("[data-testid=mnemonic] li").all_inner_texts()
        assert len(words) == 24
        await page.screenshot(path=artifact("first-run-words.png"))
        labels = await setup.locator("form label").all_inner_texts()
        first, second = (int(n) for n in re.findall(r"Word (\d+)", " ".join(labels)))
        await setup.locator("input[name=first]").fill(words[first - 1])
        await setup.locator("input[name=second]").fill(words[second - 1])
        await setup.locator("[data-testid=confirm-words]").click()
        await setup.locator("[data-testid=setup-step-words].done").wait_for()
        assert await setup.locator("[data-testid=mnemonic]").count() == 0  # shown once
        await setup.locator("select[name=profile]").select_option("signet")
        await setup.locator("button:has-text('Use this network')").click()
        await setup.locator("[data-testid=setup-finish]").wait_for()
        started = _json(d, "status")["daemon"]["started_at"]
        await setup.locator("[data-testid=setup-finish]").click()
        await setup.locator("[data-testid=setup-restarting]").wait_for()
        await page.screenshot(path=artifact("first-run-restarting.png"))
        deadline = time.monotonic() + 60
        while True:  # the same process starts again, on the chosen network
            r = d.ctl("--json", "status")
            if r.returncode == 0:
                snapshot = json.loads(r.stdout)
                if snapshot["daemon"]["started_at"] != started and snapshot["wallet"]["network"]:
                    break
            assert time.monotonic() < deadline, "the daemon did not start again"
            await page.wait_for_timeout(200)
        assert snapshot["wallet"]["network"] == "signet"
        assert _json(d, "setup.status")["state"] == "done"
        again = await ctx.new_page()
        await _open(again, d)
        await again.locator("#pane-go_online").wait_for(state="visible")
        await again.screenshot(path=artifact("first-run-done.png"))
        await page.close()  # its live connection went with the old process
    d.ctl("daemon.stop")
    assert d.wait_exit() == 0
