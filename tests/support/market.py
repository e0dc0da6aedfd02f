"""A market in one process: real providers and buyers (the composition root's own wiring),
with fakes only at the port boundary: an in-memory relay network, in-memory Lightning nodes,
a fake psionic, and a clock the test moves. Fast (no control plane, no processes)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autopilotd.adapters.fake_inference import FakeInference
from autopilotd.adapters.fake_lightning import FakeNetwork as FakeLightning
from autopilotd.adapters.fake_lightning import FakeNode
from autopilotd.adapters.fake_relays import FakeNetwork as FakeRelays
from autopilotd.app import Adapters, App, build
from autopilotd.config import Config
from autopilotd.paths import Paths, private_dir
from autopilotd.ports.finetune import Trainer
from autopilotd.ports.nexus import NexusFactory
from autopilotd.runtime.clock import ManualClock
from autopilotd.runtime.sections import RuntimeState, ServiceState, WalletState
from autopilotd.runtime.sessionlog import SessionLog
from autopilotd.runtime.snapshot import Snapshot
from autopilotd.runtime.supervisor import Supervisor
from autopilotd.store import Store

PRICE_SATS = 21


@dataclass
class Peer:
    name: str
    app: App
    node: FakeNode

    def service(self, name: str) -> Any:
        return next(s for s in self.app.services if s.name == name)

    @property
    def snapshot(self) -> Snapshot:
        return self.app.rt.state.current

    async def call(self, command: str, params: dict[str, Any] | None = None) -> Any:
        return await self.app.rt.registry.call(command, params or {}, scope="owner")

    async def until(self, predicate: Callable[[Snapshot], bool], timeout: float = 5.0) -> Snapshot:
        """The first snapshot for which `predicate` holds (fails after `timeout` seconds)."""
        snapshot = self.snapshot
        async with asyncio.timeout(timeout):
            while not predicate(snapshot):
                snapshot = await self.app.rt.state.wait_for_change(snapshot.seq)
        return snapshot

    async def job(self, request_id: str) -> dict[str, Any] | None:
        found = await self.app.rt.registry.call("jobs.history", {"limit": 500}, scope="owner")
        return next((j for j in found["jobs"] if j["request_id"] == request_id), None)

    async def job_until(self, request_id: str, stage: str, timeout: float = 5.0) -> dict[str, Any]:
        """The job once it reaches `stage` (each jobs-section change is a chance to look)."""
        async with asyncio.timeout(timeout):
            snapshot = self.snapshot
            while True:
                job = await self.job(request_id)
                if job is not None and job["stage"] == stage:
                    return job
                snapshot = await self.app.rt.state.wait_for_change(snapshot.seq)

    def events(self, name: str) -> list[dict[str, Any]]:
        found, _ = self.app.rt.events.since(0, 100_000)
        return [e.fields for e in found if e.name == name]


class Market:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.lightning = FakeLightning()
        self.relays = FakeRelays()
        self.clock = ManualClock(time.time())

    @contextlib.asynccontextmanager
    async def peer(
        self,
        name: str,
        *,
        balance_msat: int = 0,
        node: FakeNode | None = None,
        real_relays: bool = False,
        inference: FakeInference | None = None,
        nexus: NexusFactory | None = None,
        trainer: Trainer | None = None,
        **settings: Any,
    ) -> AsyncIterator[Peer]:
        """A daemon's services, running until the block ends (same name: same home).

        With `real_relays` it uses the real relay pool on the relays its settings name (a
        Nexus's relay, through `nexus_url`) instead of the market's fake relays."""
        paths = Paths.for_home(self.root / name)
        for directory in (paths.config_dir, paths.data_dir, paths.runtime_dir, paths.log_dir):
            private_dir(directory)
        config = Config(
            paths=paths,
            wallet_network="regtest",
            wallet_bitcoind_rpc_url="http://u:p@127.0.0.1:1",
            runtime_mode="url",
            runtime_url="http://fake-psionic",
            **{
                "relays": "" if real_relays else ", ".join(self.relays.relays),
                "provider_price_sats": PRICE_SATS,
                **settings,
            },
        )
        log = SessionLog(paths.log_dir, name, 5, 1 << 20)
        log.open()
        store = await Store.open(paths.database_file)
        node = node or FakeNode(self.lightning, name, balance_msat)
        app = build(
            config,
            log,
            store,
            adapters=Adapters(
                node_factory=lambda mnemonic: node,
                inference=FakeInference if inference is None else lambda url: inference,
                relay_pool=None if real_relays else self.relays.pool(),
                nexus=nexus,
                clock=self.clock,
                trainer=trainer,
            ),
        )
        supervisor = Supervisor(app.rt.state.writer("services"), app.rt.events, self.clock)
        peer = Peer(name, app, node)
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(supervisor.supervise(s)) for s in app.services]
                try:
                    await peer.until(
                        lambda s: (
                            s.wallet.state is WalletState.READY
                            and s.local_runtime.state is RuntimeState.READY
                            and len(s.services) == len(tasks)
                            and all(x.state is ServiceState.RUNNING for x in s.services)
                        )
                    )
                    yield peer
                finally:
                    for task in tasks:
                        task.cancel()
        finally:
            await store.close()
            log.close()

    async def buy(
        self, buyer: Peer, prompt: str = "Say hi.", budget_sats: int = 30, **params: Any
    ) -> str:
        row = await buyer.call(
            "buy.submit", {"prompt": prompt, "budget_sats": budget_sats, **params}
        )
        return str(row["request_id"])
