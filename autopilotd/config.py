"""Configuration, declared once: a frozen dataclass loaded from TOML plus environment overrides.

The file is `config.toml` in the config directory; every field can be overridden by an
environment variable `AUTOPILOTD_<FIELD>` (upper case). The result is passed explicitly to
whoever needs it; there are no module-global settings.

`network_profile` names a set of defaults (profiles.py): each setting that neither the file nor
the environment sets takes its value from the profile, so a set value always wins.

A few fields are editable while the daemon runs (`settings.update`); each one declares in its
metadata whether a new value applies now or when autopilotd restarts. `Config.updated` checks a
change by the same rules as loading, and `save_settings` writes it into `config.toml` keeping
the user's other keys and comments (tomlkit), atomically and 0600.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import tomlkit
import tomlkit.exceptions

from autopilotd.codec import CodecError, from_text
from autopilotd.errors import UserError
from autopilotd.paths import Paths, private_dir, write_private_atomic
from autopilotd.profiles import PROFILES

ENV_PREFIX = "AUTOPILOTD_"
MAX_INFLIGHT = 32  # jobs at once: more only queue inside psionic

Applies = Literal["now", "restart"]
"""When a setting saved while the daemon runs takes effect."""


def _editable(default: Any, applies: Applies) -> Any:
    return field(default=default, metadata={"applies": applies})


@dataclass(frozen=True)
class Config:
    """Everything the daemon can be told. Defaults are what a new user should get."""

    paths: Paths = field(metadata={"internal": True})
    # Control plane (JSON-RPC and web UI on one loopback server).
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    call_timeout_s: float = 30.0
    max_body_bytes: int = 1 << 20
    max_batch: int = 20
    # Shutdown: how long services get to stop after cancellation.
    stop_timeout_s: float = 10.0
    # Session logs: how many sessions and bytes to keep.
    log_keep_sessions: int = 20
    log_keep_bytes: int = 64 << 20
    log_level: str = "INFO"
    # Network profile: regtest, signet, mutinynet or bitcoin ("" = none) fills the wallet, Nexus
    # and relay settings left unset here (profiles.py, docs/onboarding.md).
    network_profile: str = ""
    # Wallet: "off", or the Bitcoin network its Lightning node runs on.
    wallet_network: str = _editable("off", "restart")
    # Its chain source, one of three: bitcoind RPC, Esplora or Electrum.
    wallet_bitcoind_rpc_url: str = ""  # regtest/devnet: http://user:password@host:port
    wallet_esplora_url: str = ""  # signet/bitcoin: https://host/api
    wallet_electrum_url: str = ""  # signet/bitcoin: ssl://host:port or tcp://host:port
    wallet_rgs_url: str = ""  # rapid gossip sync server; "" learns the graph from peers
    wallet_listen_port: int = 0  # Lightning peer port on loopback; 0 picks a free one
    wallet_trusted_peers_no_reserve: str = ""  # comma-separated node ids (an LSP, the devnet hub)
    wallet_peers: str = ""  # node_id@host:port, comma-separated: kept connected (LSP, devnet hub)
    # Inbound liquidity: an LSPS2 provider (node_id@host:port) that opens a just-in-time
    # channel when a payment cannot reach the wallet over its channels, for a fee it skims.
    wallet_lsp: str = ""
    wallet_lsp_token: str = ""  # the LSP's access token, if it asks for one
    wallet_lsp_trusted: bool = True  # take its channel without the on-chain reserve
    wallet_jit_max_fee_sats: int = _editable(100, "now")  # most an LSP may take for a channel
    wallet_default_max_fee_ppm: int = (
        10_000  # max fee when a send names none: 1 %, at least 10 sats
    )
    wallet_pay_wait_s: float = 20.0  # how long wallet.pay waits for the outcome before answering
    # The earn loop: relays, price and capacity.
    relays: str = _editable("", "now")  # ws:// URLs, comma-separated
    provider_price_sats: int = _editable(10, "now")  # the ask per job; bids below it are refused
    provider_max_inflight: int = _editable(1, "now")  # jobs run at once (1 to 32)
    provider_model: str = _editable("", "now")  # chat model for jobs naming none; "" = psionic's
    provider_queue_size: int = 8  # accepted jobs waiting to run; more are refused as busy
    provider_max_tokens: int = 256  # cap on a text-generation job's max_tokens
    # Requests one buyer may send per minute, sustained, after a burst of 5 s of it (at least 5);
    # more are dropped unanswered and counted (`rate-limited`), so one buyer cannot fill the
    # queue.
    provider_buyer_rate_per_min: int = 12
    provider_payment_timeout_s: float = 300.0  # after this a delivered job ends delivered_unpaid
    # Sandbox jobs (docs/sandbox.md): the most a job may ask, and what it gets when it names
    # nothing; and the ask for one sold over NIP-90 (kind 5720).
    sandbox_timeout_s: float = 30.0  # wall clock; then the whole run is killed
    sandbox_cpu_s: int = 30
    sandbox_memory_mb: int = 512  # address space
    sandbox_processes: int = 64
    sandbox_file_size_mb: int = 64
    sandbox_dir: str = ""  # "" = <data>/sandbox (as root: /var/lib/autopilotd/sandbox/<id>)
    provider_sandbox_price_sats: int = 10  # per started 10 CPU-seconds a job asks
    # Autopilot Chat (docs/chat.md): how long an approval waits before it expires (a decline),
    # and the most one thread may approve spending on the network in all (its /buy budgets).
    # A chat's commands run with the sandbox_* limits above.
    chat_approval_timeout_s: float = 600.0
    chat_spend_ceiling_sats: int = 1000
    # Which engine answers new chat threads' words (lines starting with / always go to the
    # command lane): "auto" (local when the runtime is on, else the command lane alone),
    # "local" (a model on psionic, which needs the local runtime), "codex" (the Codex
    # app-server, when its program is found) or "commands" (the command lane alone).
    chat_engine: str = "auto"
    # The local engine's model: "" is psionic's first chat model (the packaged one), else a
    # model id psionic serves, or a local .gguf file or model folder (with runtime_mode =
    # "spawn" psionic loads it too).
    chat_model: str = ""
    # The local engine's bounds: steps (completions) per turn, tokens per completion; and
    # whether its first step must call a tool ("required"), for a model too small to call
    # one of its own accord, or may answer in words ("auto").
    chat_max_steps: int = 8
    chat_max_tokens: int = 400
    chat_tool_choice: str = "auto"
    # The Codex engine: `codex_bin` "" = the one `make codex` installs, else `codex` on PATH;
    # `codex_model` "" = Codex's default; `codex_base_url` "" = Codex's own provider (sign in
    # with `codex login`), else a Responses API server of your own (e.g. http://127.0.0.1:PORT/v1).
    codex_bin: str = ""
    codex_model: str = ""
    codex_base_url: str = ""
    # Fine-tuning (docs/finetune.md): the tenant API (OpenAI's fine-tuning API for tenants'
    # keys) listens on finetune_api_host:finetune_api_port (0 picks a free port, -1 turns it
    # off); a file's size cap; the longest example in tokens; the eval gate's margin (a
    # checkpoint is promoted only if its holdout loss beats the base's by this share, and its
    # pass rate is not below the base's); whether a job that succeeded promotes its best
    # checkpoint that passes the gate by itself; how often running jobs are followed; and
    # a new tenant's quotas (finetune.quota.set changes one tenant's).
    finetune_api_host: str = "127.0.0.1"
    finetune_api_port: int = 0
    finetune_file_max_bytes: int = 16 << 20
    finetune_max_seq_len: int = 512
    finetune_gate_margin: float = 0.02
    finetune_auto_promote: bool = True
    finetune_poll_s: float = 2.0
    finetune_quota_active_jobs: int = 1
    finetune_quota_jobs: int = 20
    finetune_quota_training_tokens: int = 5_000_000
    finetune_quota_storage_bytes: int = 256 << 20
    # The ask for a fine-tuning job sold over NIP-90 (kind 5740): per started 4 KiB of training
    # data (a dataset named by digest counts its size as kept), per epoch.
    provider_finetune_price_sats: int = 10
    # Starter demand: the Nexus whose starter jobs this provider takes while online ("" = none).
    # Its relay (the same address, ws://) joins `relays` by itself.
    nexus_url: str = _editable("", "now")
    # Local inference (psionic): "off", "spawn" (the daemon runs and supervises it) or "url".
    runtime_mode: str = "off"
    runtime_url: str = ""  # with runtime_mode = "url": where psionic answers (loopback)
    runtime_port: int = 0  # with "spawn": the port to give it; 0 picks a free one
    runtime_args: str = ""  # with "spawn": extra arguments for `psionic serve`

    def public(self) -> dict[str, Any]:
        """The settings as JSON, for status and docs (no secrets live here)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.metadata.get("internal"):
                continue
            out[f.name] = getattr(self, f.name)
        return out

    def wallet_chain(self) -> str:
        """The chain the wallet's money lives on: `wallet_network`, except under the mutinynet
        profile, a signet of its own (ldk-node runs it as signet, but its chain is another)."""
        profile = PROFILES.get(self.network_profile)
        if profile is not None and profile.network == self.wallet_network:
            return profile.name
        return self.wallet_network

    def relay_urls(self) -> tuple[str, ...]:
        """The relays the daemon uses: `relays`, then the Nexus's own relay if there is one."""
        urls = split_list(self.relays)
        if self.nexus_url:
            nexus_relay = nexus_relay_url(self.nexus_url)
            if nexus_relay not in urls:
                urls = (*urls, nexus_relay)
        return urls

    def updated(self, changes: Mapping[str, Any], source: str) -> Config:
        """This config with `changes`, coerced and validated exactly as `load_config` does."""
        values = _coerced(changes, source)
        if "relays" in values:  # one spelling, so an unchanged list compares equal
            values["relays"] = ", ".join(dict.fromkeys(split_list(values["relays"])))
        config = dataclasses.replace(self, **values)
        _validate(config)
        return config


CHAIN_SOURCES = {
    "bitcoind_rpc": "wallet_bitcoind_rpc_url",
    "esplora": "wallet_esplora_url",
    "electrum": "wallet_electrum_url",
}
"""The chain source settings, by the kind of source each names."""


def split_list(value: str) -> tuple[str, ...]:
    """A comma-separated setting (relays, peers …) as its non-empty, trimmed items."""
    return tuple(item.strip() for item in value.split(",") if item.strip())


def nexus_relay_url(nexus_url: str) -> str:
    """A Nexus serves its relay on its own address: http://host:port → ws://host:port."""
    parts = urlsplit(nexus_url.rstrip("/"))
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path}"


def editable_settings() -> dict[str, Applies]:
    """The settings `settings.update` may change, each with when a new value applies."""
    return {
        f.name: f.metadata["applies"] for f in dataclasses.fields(Config) if "applies" in f.metadata
    }


def env_name(setting: str) -> str:
    return ENV_PREFIX + setting.upper()


def env_overrides(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Settings fixed by an `AUTOPILOTD_*` variable, each with the variable's name."""
    env = os.environ if env is None else env
    return {name: env_name(name) for name in _settable_fields() if env_name(name) in env}


def save_settings(path: Path, values: Mapping[str, Any]) -> None:
    """Set `values` in the TOML file at `path`, keeping its other keys and comments.

    The file is replaced atomically (temp file, fsync, rename) with mode 0600. A file that is
    not valid TOML is left alone: the user has to fix it first.
    """
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    try:
        doc = tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise UserError(f"{path}: not valid TOML ({exc}); fix it before saving settings") from None
    for name, value in values.items():
        doc[name] = value
    private_dir(path.parent)
    write_private_atomic(path, tomlkit.dumps(doc).encode("utf-8"))


def _coerced(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """`values` as the fields' types; an unknown setting or a wrong type says where it came from."""
    fields = _settable_fields()
    hints = typing.get_type_hints(Config)
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name not in fields:
            raise UserError(f"{source}: unknown setting '{name}'")
        out[name] = _coerce(name, hints[name], value, source)
    return out


def _settable_fields() -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(Config) if not f.metadata.get("internal")}


def _coerce(name: str, kind: Any, value: Any, source: str) -> Any:
    """Turn a TOML or environment value into the field's type, or say clearly why not.

    Text (an environment variable) is read by the one codec (codec.py) that autopilotctl and
    the web forms use too; a TOML value must already have the field's type.
    """
    if isinstance(kind, str):  # postponed annotations
        kind = {"str": str, "int": int, "float": float, "bool": bool}.get(kind, kind)
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    wanted = _KINDS.get(kind)
    if isinstance(value, str) and wanted not in (None, "string"):
        try:
            return from_text(wanted, value)
        except CodecError:
            pass
    elif kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    elif isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise UserError(f"{source}: setting '{name}' must be a {getattr(kind, '__name__', kind)}")


_KINDS: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def load_config(paths: Paths, env: Mapping[str, str] | None = None) -> Config:
    """Read `config.toml` (if any), apply `AUTOPILOTD_*` overrides, validate, return a Config."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    if paths.config_file.exists():
        try:
            data = tomllib.loads(paths.config_file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"{paths.config_file}: not valid TOML ({exc})") from None
        values.update(_coerced(data, str(paths.config_file)))
    for name in _settable_fields():
        raw = env.get(env_name(name))
        if raw is not None:
            values.update(_coerced({name: raw}, env_name(name)))
    config = Config(paths=paths, **_with_profile(values))
    _validate(config)
    return config


def _with_profile(values: dict[str, Any]) -> dict[str, Any]:
    """`values`, the settings set explicitly, completed from their network profile.

    A set value always wins. The chain source is one choice in three settings: if any of them
    is set, the profile's source is not used at all; likewise a set `wallet_lsp` keeps the
    profile's LSP token out (a token belongs to its LSP).
    """
    profile = PROFILES.get(values.get("network_profile", ""))
    if profile is None:
        return values  # none, or unknown: _validate says which names there are
    defaults: dict[str, Any] = {
        "wallet_network": profile.network,
        "wallet_rgs_url": profile.rgs_url,
        "nexus_url": profile.nexus_url,
        "relays": ", ".join(profile.relays),
    }
    if not any(name in values for name in CHAIN_SOURCES.values()):
        defaults[CHAIN_SOURCES[profile.chain_kind]] = profile.chain_url
    if "wallet_lsp" not in values:
        defaults.update(wallet_lsp=profile.lsp, wallet_lsp_token=profile.lsp_token)
    return defaults | values


def _validate(config: Config) -> None:
    if config.listen_host not in ("127.0.0.1", "::1", "localhost"):
        raise UserError("listen_host must be a loopback address (127.0.0.1, ::1 or localhost)")
    if not 0 <= config.listen_port <= 65535:
        raise UserError("listen_port must be between 0 and 65535 (0 picks a free port)")
    for name in ("call_timeout_s", "stop_timeout_s"):
        if getattr(config, name) <= 0:
            raise UserError(f"{name} must be positive")
    for name in ("max_body_bytes", "max_batch", "log_keep_sessions", "log_keep_bytes"):
        if getattr(config, name) < 1:
            raise UserError(f"{name} must be at least 1")
    _validate_wallet(config)
    wallet_on = config.wallet_network != "off"
    if config.wallet_jit_max_fee_sats < 0:
        raise UserError("wallet_jit_max_fee_sats must not be negative")
    if wallet_on and not 0 < config.wallet_pay_wait_s < config.call_timeout_s:
        raise UserError("wallet_pay_wait_s must be positive and below call_timeout_s")
    if config.runtime_mode not in ("off", "spawn", "url"):
        raise UserError("runtime_mode must be one of off, spawn, url")
    if config.chat_engine not in ("auto", "commands", "local", "codex"):
        raise UserError("chat_engine must be one of auto, commands, local, codex")
    if config.chat_engine == "local" and config.runtime_mode == "off":
        raise UserError('chat_engine = "local" needs the local runtime: set runtime_mode')
    if config.chat_tool_choice not in ("auto", "required"):
        raise UserError("chat_tool_choice must be auto or required")
    if config.chat_max_steps < 1 or config.chat_max_tokens < 1:
        raise UserError("chat_max_steps and chat_max_tokens must be at least 1")
    if config.runtime_mode == "url" and not config.runtime_url.startswith("http://"):
        raise UserError("runtime_mode = url needs runtime_url = http://127.0.0.1:PORT")
    for url in split_list(config.relays):
        if not url.startswith(("ws://", "wss://")) or not _has_host(url):
            raise UserError(f"relay '{url}' must be a ws:// or wss:// URL")
    if config.nexus_url and (
        not config.nexus_url.startswith(("http://", "https://"))
        or not _has_host(config.nexus_url)
        or urlsplit(config.nexus_url).query
    ):
        raise UserError(f"nexus_url '{config.nexus_url}' must be an http:// or https:// URL")
    if config.provider_price_sats < 1 or config.provider_max_inflight < 1:
        raise UserError("provider_price_sats and provider_max_inflight must be at least 1")
    for name in (
        "sandbox_timeout_s",
        "sandbox_cpu_s",
        "sandbox_memory_mb",
        "sandbox_processes",
        "sandbox_file_size_mb",
        "provider_sandbox_price_sats",
        "provider_finetune_price_sats",
    ):
        if getattr(config, name) <= 0:
            raise UserError(f"{name} must be positive")
    if not 1 <= config.provider_buyer_rate_per_min <= 6000:
        raise UserError("provider_buyer_rate_per_min must be 1 to 6000")
    if config.provider_max_inflight > MAX_INFLIGHT:
        raise UserError(f"provider_max_inflight must be at most {MAX_INFLIGHT}")
    base_url = config.codex_base_url
    if base_url and not (base_url.startswith(("http://", "https://")) and _has_host(base_url)):
        raise UserError(f"codex_base_url '{config.codex_base_url}' must be an http(s):// URL")
    if not -1 <= config.finetune_api_port <= 65535:
        raise UserError("finetune_api_port must be -1 (off), 0 (a free port) or a port number")
    if not 0 <= config.finetune_gate_margin < 1:
        raise UserError("finetune_gate_margin must be at least 0 and below 1")
    for name in ("finetune_file_max_bytes", "finetune_max_seq_len", "finetune_poll_s"):
        if getattr(config, name) <= 0:
            raise UserError(f"{name} must be positive")
    for name in (
        "finetune_quota_active_jobs",
        "finetune_quota_jobs",
        "finetune_quota_training_tokens",
        "finetune_quota_storage_bytes",
    ):
        if getattr(config, name) < 0:
            raise UserError(f"{name} must not be negative")
    if config.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise UserError("log_level must be one of DEBUG, INFO, WARNING, ERROR")


def _validate_wallet(config: Config) -> None:
    if config.network_profile and config.network_profile not in PROFILES:
        raise UserError(
            f"network_profile '{config.network_profile}' is not one of "
            f"{', '.join(PROFILES)} (or empty for none)"
        )
    if config.wallet_network not in ("off", "regtest", "signet", "bitcoin"):
        raise UserError("wallet_network must be one of off, regtest, signet, bitcoin")
    profile = PROFILES.get(config.network_profile)
    if profile is not None and config.wallet_network not in ("off", profile.network):
        raise UserError(
            f"wallet_network = {config.wallet_network} contradicts network_profile = "
            f"{profile.name} (a {profile.network} network): change or remove one of them"
        )
    sources = [name for name in CHAIN_SOURCES.values() if getattr(config, name)]
    if len(sources) > 1:
        raise UserError(f"set one chain source, not {' and '.join(sources)}")
    if config.wallet_network == "regtest" and not config.wallet_bitcoind_rpc_url:
        raise UserError(
            "wallet_network = regtest needs wallet_bitcoind_rpc_url (the devnet's shim)"
        )
    if config.wallet_network in ("signet", "bitcoin") and not (
        config.wallet_esplora_url or config.wallet_electrum_url
    ):
        raise UserError(
            f"wallet_network = {config.wallet_network} needs wallet_esplora_url "
            "or wallet_electrum_url"
        )
    electrum = config.wallet_electrum_url
    if electrum and (
        urlsplit(electrum).scheme not in ("ssl", "tcp")
        or not _has_host(electrum)
        or urlsplit(electrum).port is None
    ):
        raise UserError(
            f"wallet_electrum_url '{electrum}' must be ssl://host:port or tcp://host:port"
        )
    for name in ("wallet_esplora_url", "wallet_rgs_url"):
        url = getattr(config, name)
        if url and (not url.startswith(("http://", "https://")) or not _has_host(url)):
            raise UserError(f"{name} '{url}' must be an http:// or https:// URL")
    for entry in split_list(config.wallet_peers):
        _check_node_address(entry, f"wallet_peers entry '{entry}'")
    if config.wallet_lsp:
        _check_node_address(config.wallet_lsp, f"wallet_lsp '{config.wallet_lsp}'")


def _check_node_address(entry: str, what: str) -> None:
    """A Lightning peer's address: its node id (66 hex digits) @ host:port."""
    node_id, _, address = entry.partition("@")
    host, _, port = address.rpartition(":")
    if not re.fullmatch(r"[0-9a-fA-F]{66}", node_id) or not host or not port.isdigit():
        raise UserError(f"{what} must be node_id@host:port (a node id of 66 hex digits)")


def _has_host(url: str) -> bool:
    """A host name or address, and a port if any: `ws://"><b>` is no relay."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    host = parts.hostname or ""
    return re.fullmatch(r"[a-z0-9._:%-]+", host) is not None
