"""The docs cannot drift from the registry: the reference is generated, names are checked.

Regenerate the reference with `UPDATE_DOCS=1 pytest tests/test_docs.py`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from autopilotd.ctl.render import render_commands
from autopilotd.runtime.context import Runtime

DOCS = Path(__file__).resolve().parents[1] / "docs"
SURFACES = ["jsonrpc.md", "cli.md", "mcp.md", "service.md"]


@pytest.fixture
def described(runtime: Runtime) -> Any:
    return runtime.registry.describe()


async def test_command_reference_is_generated(described: list[dict[str, Any]]) -> None:
    text = render_commands(described, markdown=True)
    path = DOCS / "commands.md"
    if os.environ.get("UPDATE_DOCS"):
        path.write_text(text)
    assert path.read_text() == text, (
        "docs/commands.md is stale: UPDATE_DOCS=1 pytest tests/test_docs.py"
    )


async def test_surface_pages_name_only_real_commands(described: list[dict[str, Any]]) -> None:
    names = {c["name"] for c in described}
    prefixes = {n.split(".")[0] for n in names}
    for page in SURFACES:
        text = (DOCS / page).read_text()
        assert "commands.md" in text, f"{page} should point to the command reference"
        for found in re.findall(r"`([a-z_]+\.[a-z_.]+)`", text):
            if found.split(".")[0] in prefixes and not found.endswith((".md", ".py", ".json")):
                assert found in names, f"{page} mentions unknown command {found}"
