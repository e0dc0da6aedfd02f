"""Channel recovery (wallet/recovery.py) against a scripted chain: what it finds, the sweep
recorded before it is sent (a failed send sends the same transaction again, never another),
confirmation counted only from the chain, an output too small for its fee left alone."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from embit import bip39

from autopilotd.ports.chain import ChainError, ChainOutput
from autopilotd.runtime.clock import SystemClock
from autopilotd.runtime.events import EventBus
from autopilotd.runtime.sections import DaemonSection
from autopilotd.runtime.snapshot import Snapshot
from autopilotd.runtime.state import StateStore
from autopilotd.store import Store
from autopilotd.store.recovery import Recoveries
from autopilotd.wallet.recovery import ChannelRecovery
from autopilotd.wallet.seed import seed_path, write_seed_exclusive
from autopilotd.wallet.sweep import payment_scripts

WORDS = bip39.mnemonic_from_bytes(bytes(range(32)))
ADDRESS = "bcrt1q0xcqpzrky6eff2g52qdye53xkk9jxkvrl4xfg5"  # a regtest P2WPKH of the wallet


class Chain:
    """Blocks by height, what was broadcast, and confirmations the test decides."""

    def __init__(self) -> None:
        self.blocks: dict[int, list[ChainOutput]] = {0: []}
        self.sent: list[str] = []
        self.refuse: str | None = None
        self.confirmed: set[str] = set()

    async def tip(self) -> int:
        return max(self.blocks)

    async def outputs(self, height: int) -> list[ChainOutput]:
        return self.blocks.get(height, [])

    async def confirmations(self, txid: str, vout: int) -> int | None:
        return 1 if txid in self.confirmed else 0

    async def broadcast(self, tx_hex: str) -> str:
        self.sent.append(tx_hex)
        if self.refuse:
            raise ChainError(self.refuse)
        return "txid"


@pytest.fixture
async def recovery(tmp_path: Path) -> Any:
    write_seed_exclusive(seed_path(tmp_path), WORDS)
    store = await Store.open(tmp_path / "db.sqlite")
    events = EventBus()
    state = StateStore(
        Snapshot(seq=0, daemon=DaemonSection("t", 1, 0.0, "h", "s")), events, SystemClock()
    )

    async def onchain_address() -> str:
        return ADDRESS

    node = SimpleNamespace(onchain_address=onchain_address)
    wallet = SimpleNamespace(require_node=lambda: node)
    chain = Chain()
    service = ChannelRecovery(
        wallet=wallet,  # type: ignore[arg-type]
        chain=chain,
        recoveries=Recoveries(store),
        writer=state.writer("recovery"),
        events=events,
        data_dir=tmp_path,
        lookback=10,
    )
    service._scripts = payment_scripts(WORDS)
    yield service, chain, state
    await store.close()


def _script(kind: str, index: int) -> str:
    return next(h for h, s in payment_scripts(WORDS).items() if (s.kind, s.index) == (kind, index))


async def test_a_close_output_is_found_swept_once_and_confirmed_by_the_chain(
    recovery: Any,
) -> None:
    service, chain, state = recovery
    other = payment_scripts(bip39.mnemonic_from_bytes(bytes(range(1, 33))))
    chain.blocks[1] = [
        ChainOutput("aa" * 32, 1, 50_042, _script("anchor", 553), 1),
        ChainOutput("bb" * 32, 0, 9_000, next(iter(other)), 1),  # someone else's
        ChainOutput("cc" * 32, 0, 400, _script("static", 2), 1),  # less than its fee leaves
    ]
    chain.refuse = "connection refused"
    await service.step()  # found and signed; the send failed
    rows = {o["outpoint"]: o for o in state.current.recovery.outputs}
    assert set(rows) == {f"{'aa' * 32}:1", f"{'cc' * 32}:0"}
    first = rows[f"{'aa' * 32}:1"]
    assert first["status"] == "sweeping" and "connection refused" in first["error"]
    assert rows[f"{'cc' * 32}:0"]["status"] == "too_small"
    chain.refuse = None
    await service.step()  # the same signed transaction, sent again
    assert len(chain.sent) == 2 and chain.sent[0] == chain.sent[1]
    (row,) = [o for o in state.current.recovery.outputs if o["status"] == "swept"]
    assert row["sent_sats"] == 50_042 - row["fee_sats"]
    assert state.current.recovery.recovered_sats == 0  # not until a block holds it
    chain.confirmed.add(row["sweep_txid"])
    chain.blocks[2] = []
    await service.step()
    assert state.current.recovery.recovered_sats == row["sent_sats"]
    assert state.current.recovery.scanned_height == 2
    assert len(chain.sent) == 2  # nothing sent twice
