"""The finetune_* settings: defaults, and a clear refusal of a value that cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopilotd.config import load_config
from autopilotd.errors import UserError
from autopilotd.paths import Paths


def _load(tmp_path: Path, text: str) -> object:
    paths = Paths.for_home(tmp_path)
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    paths.config_file.write_text(text)
    return load_config(paths, env={})


def test_the_defaults(tmp_path: Path) -> None:
    config = load_config(Paths.for_home(tmp_path), env={})
    assert (config.finetune_api_host, config.finetune_api_port) == ("127.0.0.1", 0)
    assert config.finetune_gate_margin == 0.02 and config.finetune_auto_promote
    assert config.finetune_quota_active_jobs == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("finetune_api_port = -2", "finetune_api_port must be -1"),
        ("finetune_gate_margin = 1.0", "finetune_gate_margin must be at least 0 and below 1"),
        ("finetune_file_max_bytes = 0", "finetune_file_max_bytes must be positive"),
        ("finetune_quota_jobs = -1", "finetune_quota_jobs must not be negative"),
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        _load(tmp_path, text)
