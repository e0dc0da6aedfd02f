from __future__ import annotations

from pathlib import Path

import pytest

from autopilotd.config import load_config
from autopilotd.errors import UserError
from autopilotd.paths import Paths
from autopilotd.profiles import PROFILES


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


def write_config(tmp_path: Path, text: str) -> Paths:
    paths = Paths.for_home(tmp_path)
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    paths.config_file.write_text(text)
    return paths


def test_a_profile_fills_only_what_is_not_set(tmp_path: Path) -> None:
    paths = write_config(
        tmp_path,
        'network_profile = "mutinynet"\n'
        'relays = "wss://relay.example"\n'
        'wallet_rgs_url = ""\n'
        'nexus_url = "https://nexus.example"\n',
    )
    cfg = load_config(paths, env={})
    mutinynet = PROFILES["mutinynet"]
    assert cfg.relays == "wss://relay.example"  # the file beats the profile
    assert cfg.wallet_rgs_url == ""  # even when the set value is empty
    assert cfg.nexus_url == "https://nexus.example"
    assert (cfg.wallet_network, cfg.wallet_esplora_url) == ("signet", mutinynet.chain_url)
    assert (cfg.wallet_lsp, cfg.wallet_lsp_token) == (mutinynet.lsp, mutinynet.lsp_token)
    shown = cfg.public()  # settings.show renders this: the values that run
    assert shown["wallet_esplora_url"] == mutinynet.chain_url
    assert shown["wallet_lsp"] == mutinynet.lsp and shown["relays"] == "wss://relay.example"


def test_the_environment_beats_the_profile(tmp_path: Path) -> None:
    paths = write_config(tmp_path, 'network_profile = "bitcoin"\n')
    esplora = "https://mempool.space/api"
    cfg = load_config(
        paths, env={"AUTOPILOTD_WALLET_ESPLORA_URL": esplora, "AUTOPILOTD_RELAYS": ""}
    )
    assert (cfg.wallet_esplora_url, cfg.relays) == (esplora, "")
    assert cfg.wallet_rgs_url == PROFILES["bitcoin"].rgs_url


def test_a_set_lsp_keeps_the_profile_token_out(tmp_path: Path) -> None:
    lsp = "02" + "ab" * 32 + "@lsp.example:9735"
    paths = write_config(tmp_path, f'network_profile = "mutinynet"\nwallet_lsp = "{lsp}"\n')
    cfg = load_config(paths, env={})
    assert (cfg.wallet_lsp, cfg.wallet_lsp_token) == (lsp, "")


def test_without_a_profile_nothing_changes(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, ""), env={})
    assert (cfg.network_profile, cfg.wallet_network, cfg.relays) == ("", "off", "")
    assert (cfg.wallet_lsp, cfg.wallet_rgs_url, cfg.wallet_chain()) == ("", "", "off")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('network_profile = "testnet"\n', "'testnet' is not one of regtest, signet, mutinynet"),
        ('network_profile = "regtest"\n', "regtest needs wallet_bitcoind_rpc_url"),
        (
            'network_profile = "mutinynet"\nwallet_network = "bitcoin"\n',
            "wallet_network = bitcoin contradicts network_profile = mutinynet",
        ),
        ('wallet_lsp = "abc@host:1"\n', "wallet_lsp 'abc@host:1' must be node_id@host:port"),
        (f'wallet_lsp = "{"0" * 66}@host"\n', "must be node_id@host:port"),
        ('wallet_peers = "nothex@host:1"\n', "wallet_peers entry 'nothex@host:1' must be"),
        ('wallet_electrum_url = "https://e.example"\n', "must be ssl://host:port"),
        ('wallet_rgs_url = "ftp://r.example"\n', "wallet_rgs_url 'ftp://r.example' must be"),
        (
            'network_profile = "signet"\nwallet_electrum_url = "ssl://e.example:1"\n'
            'wallet_esplora_url = "https://e.example/api"\n',
            "set one chain source, not wallet_esplora_url and wallet_electrum_url",
        ),
        ('wallet_network = "signet"\n', "needs wallet_esplora_url or wallet_electrum_url"),
    ],
)
def test_bad_profile_settings_get_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_config(write_config(tmp_path, text), env={})


def test_a_profile_may_leave_the_wallet_off(tmp_path: Path) -> None:
    paths = write_config(tmp_path, 'network_profile = "bitcoin"\nwallet_network = "off"\n')
    cfg = load_config(paths, env={})
    assert cfg.wallet_network == "off" and cfg.relays == ", ".join(PROFILES["bitcoin"].relays)
    assert cfg.wallet_chain() == "off"
