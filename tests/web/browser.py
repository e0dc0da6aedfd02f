"""Headless Chromium from Debian, driven by Playwright; never a downloaded browser."""

from __future__ import annotations

import contextlib
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
async def chromium(*extra_flags: str) -> AsyncIterator[async_api.BrowserContext]:
    """A fresh profile in a temporary directory, thrown away afterwards."""
    with tempfile.TemporaryDirectory(prefix="autopilotd-chromium-") as profile:
        async with async_api.async_playwright() as pw:
            context = await pw.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                headless=True,
                args=[*FLAGS, *extra_flags],
                viewport={"width": 1440, "height": 900},
            )
            try:
                yield context
            finally:
                await context.close()


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name
