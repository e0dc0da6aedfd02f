"""The layering is a contract: the import contracts (pyproject.toml, `lint-imports`) hold on
the package, and a wrong-way import, even one made only for type checking, breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support import BIN

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "lint-imports"), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_import_contracts_hold() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "line"),
    [
        ("autopilotd/runtime/state.py", "import autopilotd.provider.service  # wrong way\n"),
        (
            "autopilotd/registry.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from autopilotd.web.views import WebUI  # noqa: F401\n",
        ),
        ("autopilotd/provider/flow.py", "import autopilotd.adapters.relay_pool  # wrong way\n"),
        ("autopilotd/buyer/service.py", "import autopilotd.wallet.service  # a sibling\n"),
    ],
)
def test_a_wrong_way_import_breaks_them(tmp_path: Path, module: str, line: str) -> None:
    for package in ("autopilotd", "psionic"):
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + "\n" + line)
    result = lint_imports(tmp_path)
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout
