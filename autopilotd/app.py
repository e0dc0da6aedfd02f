"""The composition root: the one module that picks the concrete services and adapters and
wires them together. Everything else gets its collaborators handed in, typed as ports.

    kernel    Runtime: config, state store, event bus, store, registry, clock, log, stop
    adapters  the relay pool (nostr-sdk), the Lightning node (ldk-node), psionic and a Nexus
              over HTTP
    services  relays, wallet, local runtime, provider, buyer, starter, sync, sandbox, chat,
              fine-tuning and its tenant API (each owns its snapshot sections; the starter
              service is also a job source of the provider)
    commands  the registry's commands, each given the service it drives

`Adapters` replaces real adapters in fast tests only; the daemon and the demo never use it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from autopilotd import __version__
from autopilotd.adapters.bitcoind_chain import BitcoindChain
from autopilotd.adapters.bwrap_sandbox import BwrapSandbox
from autopilotd.adapters.codex_engine import CodexEngine, CodexSettings, find_codex
from autopilotd.adapters.ldk_node import ldk_node_factory
from autopilotd.adapters.nexus_http import HttpNexus
from autopilotd.adapters.psionic_http import PsionicClient
from autopilotd.adapters.psionic_train_http import PsionicTrainer
from autopilotd.adapters.relay_pool import PoolConfig, RelayPool
from autopilotd.buyer.service import Buyer
from autopilotd.chat.commands_lane import CommandLane
from autopilotd.chat.local_engine import LocalEngine
from autopilotd.chat.router import EngineRouter
from autopilotd.chat.service import ActionRules, ChatService
from autopilotd.commands import BUILTINS, Registrar
from autopilotd.commands import buyer as buyer_commands
from autopilotd.commands import chat as chat_commands
from autopilotd.commands import finetune as finetune_commands
from autopilotd.commands import provider as provider_commands
from autopilotd.commands import runtime as runtime_commands
from autopilotd.commands import sandbox as sandbox_commands
from autopilotd.commands import sync as sync_commands
from autopilotd.commands import wallet as wallet_commands
from autopilotd.config import Config
from autopilotd.finetune.api import TenantApi
from autopilotd.finetune.nip90 import FinetuneWork
from autopilotd.finetune.service import FinetuneService
from autopilotd.inference.service import ClientFactory, LocalRuntime
from autopilotd.nostr.identity import NostrIdentity, identity_from_mnemonic
from autopilotd.ports.chain import ChainReader
from autopilotd.ports.engine import Engine
from autopilotd.ports.finetune import Trainer
from autopilotd.ports.nexus import NexusClient, NexusFactory
from autopilotd.ports.relays import RelayPoolPort
from autopilotd.ports.sandbox import Sandbox
from autopilotd.provider.service import ProviderService
from autopilotd.provider.work import InferenceWork
from autopilotd.registry import Registry
from autopilotd.relays.service import RelaysService
from autopilotd.runtime.clock import Clock, SystemClock
from autopilotd.runtime.configs import LiveConfig
from autopilotd.runtime.context import Runtime, Service, SnapshotNeeds
from autopilotd.runtime.events import EventBus
from autopilotd.runtime.sections import DaemonSection, IdentitySection
from autopilotd.runtime.sessionlog import SessionLog
from autopilotd.runtime.snapshot import Snapshot
from autopilotd.runtime.state import StateStore
from autopilotd.sandbox import workspace
from autopilotd.sandbox.nip90 import SandboxWork
from autopilotd.sandbox.service import (
    SandboxService,
    python_runtime,
    sandbox_root,
    settings_limits,
)
from autopilotd.starter.service import StarterService
from autopilotd.store import Store
from autopilotd.store.buys import BuyRequests
from autopilotd.store.chat import ChatThreads
from autopilotd.store.finetune import FineTuning
from autopilotd.store.jobs import Jobs
from autopilotd.store.ledger import Ledger
from autopilotd.store.onchain import OnchainSends
from autopilotd.store.recovery import Recoveries
from autopilotd.store.sandbox import SandboxJobs
from autopilotd.store.sync import SyncEvents
from autopilotd.sync.service import SyncService
from autopilotd.wallet.onchain import OnchainWallet
from autopilotd.wallet.recovery import ChannelRecovery
from autopilotd.wallet.runner import NodeFactory, WalletService
from autopilotd.wallet.seed import load_or_create_seed
from autopilotd.wallet.service import Wallet
from autopilotd.wallet.setup import restored_at
from autopilotd.web import commands as web_commands
from autopilotd.web.auth import WebAuth


@dataclass(frozen=True)
class Adapters:
    """Replacements for the real adapters, for fast tests (never used by the daemon itself)."""

    node_factory: NodeFactory | None = None
    inference: ClientFactory | None = None
    relay_pool: RelayPoolPort | None = None
    nexus: NexusFactory | None = None
    clock: Clock | None = None
    chain: ChainReader | None = None
    sandbox: Sandbox | None = None
    engine: Engine | None = None
    trainer: Trainer | None = None


@dataclass
class App:
    """A wired daemon: the kernel, the services to run, and the control plane."""

    rt: Runtime
    services: Sequence[Service]
    auth: WebAuth
    seed_created: bool


def chat_engine(config: Config, commands: CommandLane, local: LocalRuntime) -> Engine:
    """The engine of chat turns (`chat_engine`): a model engine behind the router, which sends
    lines starting with / to the command lane (chat/router.py), or the command lane alone.
    "auto" is the local engine when the local runtime is on; "codex" the Codex app-server (its
    status says whether it is installed and signed in)."""
    if config.chat_engine == "codex":
        cache = Path(
            os.environ.get("AUTOPILOTD_BUILD_CACHE") or Path.home() / ".cache" / "autopilotd"
        )
        codex = CodexEngine(
            CodexSettings(
                binary=find_codex(config.codex_bin, cache),
                home=config.paths.data_dir / "codex",
                model=config.codex_model,
                base_url=config.codex_base_url,
            ),
            commands.actions,
        )
        return EngineRouter(commands, codex)
    if config.chat_engine in ("auto", "local") and config.runtime_mode != "off":
        model = LocalEngine(
            local,
            commands.actions,
            max_steps=config.chat_max_steps,
            max_tokens=config.chat_max_tokens,
            first_tool_choice=config.chat_tool_choice,
        )
        return EngineRouter(commands, model)
    return commands


def load_identity(config: Config) -> tuple[NostrIdentity, bool]:
    """The daemon's Nostr identity from the wallet's one seed (created if there is none)."""
    mnemonic, created = load_or_create_seed(config.paths.data_dir)
    identity = identity_from_mnemonic(mnemonic)
    del mnemonic
    return identity, created


def build(
    config: Config,
    log: SessionLog,
    store: Store,
    *,
    registrars: Iterable[Registrar] = (),
    adapters: Adapters | None = None,
    started_at: float | None = None,
) -> App:
    """Wire one daemon. Nothing runs yet: the daemon (daemon.py) runs `App.services`."""
    adapters = adapters or Adapters()
    clock = adapters.clock or SystemClock()
    identity, seed_created = load_identity(config)
    public = identity.public()
    events = EventBus(sink=log)
    state = StateStore(
        Snapshot(
            seq=0,
            daemon=DaemonSection(
                version=__version__,
                pid=os.getpid(),
                started_at=time.time() if started_at is None else started_at,
                home=config.paths.display_home(),
                session_id=log.session_id,
            ),
            identity=IdentitySection(npub=public.npub, hex=public.hex),
        ),
        events,
        clock,
    )
    live = LiveConfig(config)
    rt = Runtime(
        live=live,
        state=state,
        events=events,
        store=store,
        log=log,
        registry=Registry(SnapshotNeeds(state)),
        clock=clock,
    )
    pool: RelayPoolPort = adapters.relay_pool or RelayPool(
        PoolConfig(relays=config.relay_urls()), identity=identity
    )
    wallet = Wallet(config=live, ledger=Ledger(store), writer=state.writer("wallet"), events=events)
    onchain = OnchainWallet(wallet, OnchainSends(store))
    local = LocalRuntime(
        config=live,
        writer=state.writer("local_runtime"),
        client_factory=adapters.inference or PsionicClient,
    )

    def http_nexus(url: str) -> NexusClient:
        return HttpNexus(url, identity)

    starter = StarterService(
        nexus=adapters.nexus or http_nexus,
        store=store,
        state=state,
        writer=state.writer("starter"),
        config=live,
        events=events,
        clock=clock,
    )
    python = python_runtime()
    prefix = str(Path(python).resolve().parent.parent)
    box = adapters.sandbox or BwrapSandbox(ro_binds=() if prefix.startswith("/usr") else (prefix,))
    sandbox = SandboxService(
        sandbox=box,
        jobs=SandboxJobs(store),
        writer=state.writer("sandbox"),
        events=events,
        config=live,
        root=sandbox_root(config),
        python=python,
    )
    provider_jobs = Jobs(store)  # whether a fine-tuning job sold over NIP-90 was paid
    finetune = FinetuneService(
        trainer=adapters.trainer or PsionicTrainer(lambda: state.current.local_runtime.url),
        records=FineTuning(store),
        writer=state.writer("finetune"),
        events=events,
        config=live,
        job_paid=provider_jobs.paid,
    )
    provider = ProviderService(
        pool=pool,
        payments=wallet,
        works=[
            InferenceWork(local, live),
            SandboxWork(sandbox, live),
            FinetuneWork(finetune, live, clock),
        ],
        identity=identity,
        store=store,
        state=state,
        config=live,
        events=events,
        clock=clock,
        sources=[starter],
    )
    buyer = Buyer(
        pool=pool,
        payer=wallet,
        identity=identity,
        requests=BuyRequests(store),
        writer=state.writer("buyer"),
        events=events,
        clock=clock,
    )
    paths = config.paths
    chat = ChatService(
        threads=ChatThreads(store),
        writer=state.writer("chat"),
        events=events,
        engine=adapters.engine or chat_engine(config, CommandLane(workspace), local),
        private=(paths.config_dir, paths.data_dir, paths.runtime_dir, paths.log_dir),
        sandbox=box,
        files=workspace,
        buying=buyer,
        rules=ActionRules(
            settings_limits(config), config.chat_approval_timeout_s, config.chat_spend_ceiling_sats
        ),
    )
    sync = SyncService(
        pool=pool,
        identity=identity,
        records=SyncEvents(store),
        writer=state.writer("sync"),
        events=events,
        config=live,
    )
    auth = WebAuth()
    for register in BUILTINS:
        register(rt.registry, rt)
    wallet_commands.register(rt.registry, rt, wallet, onchain)
    runtime_commands.register(rt.registry, rt, local)
    provider_commands.register(rt.registry, rt, provider)
    buyer_commands.register(rt.registry, rt, buyer)
    sync_commands.register(rt.registry, rt, sync)
    sandbox_commands.register(rt.registry, rt, sandbox)
    chat_commands.register(rt.registry, rt, chat)
    finetune_commands.register(rt.registry, rt, finetune)
    web_commands.register(rt.registry, auth)
    for register in registrars:
        register(rt.registry, rt)

    services: list[Service] = [RelaysService(pool, state.writer("relays"), live)]
    if config.wallet_network != "off":
        rescan = restored_at(config.paths.data_dir) is not None  # coins the words held before
        node_factory = adapters.node_factory or ldk_node_factory(config, rescan=rescan)
        services.append(WalletService(wallet, node_factory, onchain))
        if rescan and config.wallet_bitcoind_rpc_url:  # the old channels' closes, swept back
            services.append(
                ChannelRecovery(
                    wallet=wallet,
                    chain=adapters.chain or BitcoindChain(config.wallet_bitcoind_rpc_url),
                    recoveries=Recoveries(store),
                    writer=state.writer("recovery"),
                    events=events,
                    data_dir=config.paths.data_dir,
                )
            )
    if config.runtime_mode != "off":
        services.append(local)
    services += [provider, buyer, starter, sync, sandbox, chat, finetune]
    if config.finetune_api_port >= 0:
        services.append(TenantApi(finetune, config.finetune_api_host, config.finetune_api_port))
    return App(rt, services, auth, seed_created)
