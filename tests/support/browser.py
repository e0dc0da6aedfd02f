"""Headless Chromium from Debian, driven by Playwright; never a downloaded browser.

Every page's console errors and uncaught script errors are collected, and a browser session
that saw any fails when it closes, with the messages in the assertion: an htmx selector that
matched nothing or a script error is a bug of the page, even when the test's clicks still work.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "web"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

async_api = pytest.importorskip("playwright.async_api", reason="the test extra installs playwright")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (make chromium)", allow_module_level=True)


@contextlib.asynccontextmanager
async def chromium(
    *extra_flags: str,
    errors_expected_from: tuple[str, ...] = (),
    errors_expected: tuple[str, ...] = (),
) -> AsyncIterator[async_api.BrowserContext]:
    """A fresh profile in a temporary directory, thrown away afterwards.

    Fails on leaving if a page logged a console error or threw an uncaught error, except on
    pages whose address starts with one of `errors_expected_from` (an attacker's page, whose
    blocked requests are the point of its test) and errors that match (`re.search`) one of
    `errors_expected`, each error written as "<page address>: <what>".
    """
    errors: list[str] = []

    def watch(page: async_api.Page) -> None:
        def record(what: str) -> None:
            if errors_expected_from and page.url.startswith(errors_expected_from):
                return
            error = f"{page.url}: {what}"
            if not any(re.search(pattern, error) for pattern in errors_expected):
                errors.append(error)

        def console(msg: async_api.ConsoleMessage) -> None:
            if msg.type == "error":
                where = msg.location.get("url", "")
                record(f"console error: {msg.text}" + (f" (at {where})" if where else ""))

        def page_error(exc: async_api.Error) -> None:
            record(f"uncaught {exc.name}: {exc.message}")

        page.on("console", console)
        page.on("pageerror", page_error)

    with tempfile.TemporaryDirectory(prefix="autopilotd-chromium-") as profile:
        async with async_api.async_playwright() as pw:
            context = await pw.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                headless=True,
                args=[*FLAGS, *extra_flags],
                viewport={"width": 1440, "height": 900},
            )
            for page in context.pages:
                watch(page)
            context.on("page", watch)
            try:
                yield context
            finally:
                await context.close()
    assert not errors, "the browser reported errors:\n" + "\n".join(errors)


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name
