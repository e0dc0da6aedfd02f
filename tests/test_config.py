from __future__ import annotations

from pathlib import Path

import pytest

from autopilotd.config import load_config
from autopilotd.errors import UserError
from autopilotd.paths import Paths


def test_home_puts_everything_under_one_directory(tmp_path: Path) -> None:
    paths = Paths.resolve(str(tmp_path / "h"))
    for d in (paths.config_dir, paths.data_dir, paths.runtime_dir, paths.log_dir):
        assert d.is_relative_to(tmp_path / "h")


def test_default_paths_follow_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AUTOPILOTD_HOME", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    paths = Paths.resolve(None)
    assert paths.config_dir == tmp_path / "cfg" / "autopilotd"
    assert paths.data_dir == tmp_path / "data" / "autopilotd"
    assert paths.runtime_dir == tmp_path / "run" / "autopilotd"


def test_toml_then_environment(tmp_path: Path) -> None:
    paths = Paths.for_home(tmp_path)
    paths.config_dir.mkdir(parents=True)
    paths.config_file.write_text('listen_port = 4100\ncall_timeout_s = 5\nlog_level = "DEBUG"\n')
    cfg = load_config(paths, env={})
    assert (cfg.listen_port, cfg.call_timeout_s, cfg.log_level) == (4100, 5.0, "DEBUG")
    cfg = load_config(paths, env={"AUTOPILOTD_LISTEN_PORT": "4200"})
    assert cfg.listen_port == 4200
    assert "paths" not in cfg.public()


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("listen_port = 'x'\n", {}, "listen_port"),
        ("nonsense = 1\n", {}, "unknown setting"),
        ("listen_host = '0.0.0.0'\n", {}, "loopback"),
        ("[broken\n", {}, "not valid TOML"),
        ("", {"AUTOPILOTD_MAX_BATCH": "many"}, "max_batch"),
        ("", {"AUTOPILOTD_CALL_TIMEOUT_S": "0"}, "positive"),
    ],
)
def test_bad_settings_get_clear_errors(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    paths = Paths.for_home(tmp_path)
    paths.config_dir.mkdir(parents=True)
    paths.config_file.write_text(text)
    with pytest.raises(UserError, match=message):
        load_config(paths, env=env)
