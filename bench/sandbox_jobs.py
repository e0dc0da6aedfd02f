"""Paid sandbox jobs (kind 5720) per minute on the devnet and a local relay, everything real.

    .venv/bin/python bench/sandbox_jobs.py [--jobs 20] [--rounds 2] [--buyers 4] [--window 8]

Brings up the devnet (btcd, the hub, the LSPS2 LSP), a local relay, a provider daemon (a new
ldk-node wallet whose first payment opens a just-in-time channel from the LSP; psionic, which
going online needs; the bubblewrap sandbox) and buyer daemons with channels from the LSP. No
Nexus: its starter jobs would take the provider's one job slot in the middle of the runs.
After one untimed job (it opens the provider's channel), `--rounds` rounds of four runs of
`--jobs` jobs each, every job a real request → sandbox run → result → invoice → payment →
`success`:

- the baseline, `print(1)`: the same paid flow with a trivial script;
- the job, hash 1 MiB: the script makes 1 MiB (`bytes(range(256)) * 4096`; a request carries
  at most ~45 KiB of files), sha256s it and writes digest.txt; every result's digest is checked;

each sequential (submit, wait until `done`, next) and then concurrent (at most `--window`
requests open at once: the provider's queue holds 8 and drops more as busy); the second round
runs the hash first. Prints each run, then each variant over all rounds (jobs per minute =
jobs / the runs' summed wall time; p50 and p95 of request → `done` per job), and where a job's
time goes from the daemons' domain events. A job asks `cpu_s` 10 and is priced 10 sats
(provider_sandbox_price_sats); `done` means the buyer's wallet settled the payment and the
provider confirmed it. The provider admits at most 5 requests at once per buyer, then one every
5 s (nostr/intake.py), and drops the rest unanswered: jobs go round robin to the buyer with
allowance left, a run starts with full allowances, and the wait for allowance inside a run is
printed (0 when `--jobs` ≤ 5 × `--buyers`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from figures import latency_row

from autopilotd.demo import (
    BIN,
    READY_TIMEOUT_S,
    Processes,
    _call,
    _go_online,
    _wait_condition,
    _wait_usable,
    devnet_env,
    payer_env,
    start_relay,
)
from autopilotd.devnet import Devnet
from autopilotd.nostr.intake import IntakePolicy
from autopilotd.nostr.nip90 import KIND_SANDBOX

PRICE_SATS = 10  # provider_sandbox_price_sats for one step of 10 CPU-seconds
PARAMS = {"cpu_s": "10"}
BASELINE = "print(1)\n"
HASH = (
    "import hashlib\n"
    "data = bytes(range(256)) * 4096\n"
    "open('digest.txt', 'w').write(hashlib.sha256(data).hexdigest())\n"
    "print('hashed', len(data))\n"
)
DIGEST = hashlib.sha256(bytes(range(256)) * 4096).hexdigest()
BUYER_CHANNEL_SATS, BUYER_PUSH_SATS = 300_000, 150_000
POLICY = IntakePolicy()


@dataclass
class Network:
    root: Path
    provider: Path
    buyers: list[Path]


@contextlib.asynccontextmanager
async def network(root: Path, buyers: int) -> AsyncIterator[Network]:
    """The devnet, a relay, the provider (psionic, the LSP as its `wallet_lsp`) and `buyers`
    buyer daemons, each with a channel from the LSP; the provider online, 5720 served."""
    root.mkdir(parents=True, mode=0o700)
    procs = Processes(root)
    provider = root / "provider"
    homes = [root / f"buyer{i}" for i in range(buyers)]
    try:
        async with Devnet(root / "devnet") as devnet:
            relay_url = await start_relay(procs)
            info = devnet.info
            common = {**devnet_env(info), "AUTOPILOTD_RELAYS": relay_url}
            await procs.start(
                "provider",
                str(BIN / "autopilotd"),
                "run",
                "--home",
                str(provider),
                env={
                    **common,
                    "AUTOPILOTD_WALLET_LSP": info.lsp,
                    "AUTOPILOTD_RUNTIME_MODE": "spawn",
                    "AUTOPILOTD_PROVIDER_MAX_TOKENS": "16",
                },
            )
            payers = payer_env(info, common)
            for home in homes:
                await procs.start(
                    home.name, str(BIN / "autopilotd"), "run", "--home", str(home), env=payers
                )
            print(f"waiting for {1 + buyers} wallets …", flush=True)
            for daemon in (provider, *homes):
                await _wait_condition(daemon, "wallet-ready", READY_TIMEOUT_S)
            print("opening the buyers' channels from the LSP …", flush=True)
            for home in homes:
                status = await _call(home, "wallet.status")
                await devnet.client.lsp_open_channel(
                    status["node_id"], status["listening"], BUYER_CHANNEL_SATS, BUYER_PUSH_SATS
                )
            for home in homes:
                await _wait_usable(home)
            print("loading the models, going online …", flush=True)
            await _wait_condition(provider, "runtime-ready", READY_TIMEOUT_S)
            await _go_online(provider)
            deadline = time.monotonic() + 60
            while (await _call(provider, "sandbox.status"))["state"] != "ready":
                if time.monotonic() > deadline:
                    raise SystemExit(f"no sandbox: {await _call(provider, 'sandbox.status')}")
                await asyncio.sleep(0.2)
            served = (await _call(provider, "provider.status"))["provider"]["served_kinds"]
            if KIND_SANDBOX not in served:
                raise SystemExit(f"the provider does not serve {KIND_SANDBOX}: {served}")
            yield Network(root, provider, homes)
    finally:
        await procs.stop()


@dataclass
class Allowance:
    """The provider's token bucket for one buyer, as this side can tell it."""

    tokens: float = float(POLICY.buyer_burst)
    at: float = field(default_factory=time.monotonic)

    def _now(self) -> float:
        return min(
            POLICY.buyer_burst,
            self.tokens + (time.monotonic() - self.at) * POLICY.buyer_refill_per_s,
        )

    def wait_s(self, need: float = 1.1) -> float:  # a tenth of a token for clock skew
        return max(0.0, (need - self._now()) / POLICY.buyer_refill_per_s)

    def take(self) -> None:
        self.tokens, self.at = self._now() - 1, time.monotonic()


@dataclass
class Job:
    buyer: Path
    request_id: str
    seconds: float
    done_at: float  # time.time(), as the daemons' logs stamp their events
    row: dict[str, Any]


class Buyers:
    def __init__(self, homes: list[Path]) -> None:
        self.homes = homes
        self.allowances = [Allowance() for _ in homes]
        self.next = 0
        self.lock = asyncio.Lock()
        self.waited = 0.0

    async def refill(self) -> None:
        """Until every buyer may send a full burst again (between runs, untimed)."""
        await asyncio.sleep(max(a.wait_s(POLICY.buyer_burst) for a in self.allowances))

    async def pick(self) -> Path:
        """The next buyer round robin that may send now, waiting for one if none may."""
        async with self.lock:
            order = [(self.next + k) % len(self.homes) for k in range(len(self.homes))]
            ready = [k for k in order if self.allowances[k].wait_s() == 0]
            i = ready[0] if ready else min(order, key=lambda k: self.allowances[k].wait_s())
            if (wait := self.allowances[i].wait_s()) > 0:
                self.waited += wait
                await asyncio.sleep(wait)
            self.allowances[i].take()
            self.next = (i + 1) % len(self.homes)
            return self.homes[i]


async def one_job(buyers: Buyers, script: str, i: int) -> Job:
    home = await buyers.pick()
    t0 = time.perf_counter()
    req = await _call(
        home,
        "buy.submit",
        {
            "kind": KIND_SANDBOX,
            "prompt": f"# job {i}\n{script}",  # every request distinct
            "params": PARAMS,
            "budget_sats": PRICE_SATS,
            "timeout_s": 120,
        },
    )
    rid = req["request_id"]
    while True:
        row: dict[str, Any] = await _call(home, "buy.wait", {"request_id": rid, "timeout_s": 20})
        if row["status"] in ("done", "failed", "expired"):
            return Job(home, rid, time.perf_counter() - t0, time.time(), row)


def check(job: Job, script: str) -> str | None:
    """Why this job's answer is wrong, or None."""
    if job.row["status"] != "done":
        return f"{job.request_id}: {job.row['status']} ({job.row.get('reason')})"
    result = json.loads(job.row["result"])
    if result["outcome"] != "succeeded":
        return f"{job.request_id}: {result['outcome']} {result.get('stderr', '')[:200]}"
    if script == BASELINE:
        return None if result["stdout"] == "1\n" else f"{job.request_id}: {result['stdout']!r}"
    digest = [a for a in result["artifacts"] if a["path"] == "digest.txt"]
    got = base64.b64decode(digest[0]["data_b64"]).decode() if digest else None
    return None if got == DIGEST else f"{job.request_id}: digest {got!r}, expected {DIGEST}"


@dataclass
class Run:
    name: str
    jobs: list[Job]
    wall_s: float
    waited_s: float

    def row(self) -> dict[str, Any]:
        xs = sorted(j.seconds for j in self.jobs)
        return {
            "measure": self.name,
            "jobs": len(xs),
            "wall_s": round(self.wall_s, 2),
            "jobs_per_min": round(60 * len(xs) / self.wall_s, 1),
            "p50_ms": round(statistics.median(xs) * 1000, 1),
            "p95_ms": round(xs[math.ceil(0.95 * len(xs)) - 1] * 1000, 1),
            "allowance_wait_s": round(self.waited_s, 2),
        }


async def run(buyers: Buyers, name: str, script: str, jobs: int, window: int) -> Run:
    await buyers.refill()
    buyers.waited = 0.0
    t0 = time.perf_counter()
    if window <= 1:
        done = [await one_job(buyers, script, i) for i in range(jobs)]
    else:
        slots = asyncio.Semaphore(window)

        async def slot(i: int) -> Job:
            async with slots:
                return await one_job(buyers, script, i)

        done = list(await asyncio.gather(*(slot(i) for i in range(jobs))))
    result = Run(name, done, time.perf_counter() - t0, buyers.waited)
    wrong = [w for w in (check(j, script) for j in done) if w is not None]
    if wrong:
        raise SystemExit(f"{name}: {len(wrong)} of {jobs} jobs wrong:\n  " + "\n  ".join(wrong))
    print(json.dumps(result.row(), ensure_ascii=False), flush=True)
    return result


def events(home: Path) -> list[dict[str, Any]]:
    lines = (home / "logs" / "latest.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "domain_event" in r]


def stages(net: Network, result: Run) -> list[dict[str, Any]]:
    """Where a job's time goes: the daemons' own domain events (one machine, one clock)."""
    at: dict[tuple[str, str], float] = {}
    for home in (net.provider, *net.buyers):
        for e in events(home):
            key = (e["domain_event"], e.get("request_id", ""))
            at.setdefault(key, e.get("sent_at", e["ts"]))
    for j in result.jobs:
        at["done", j.request_id] = j.done_at
    steps = (
        ("request published → provider running", "buyer.request_published", "provider.running"),
        ("running → result published", "provider.running", "provider.result_published"),
        ("result → invoice published", "provider.result_published", "provider.payment_requested"),
        ("invoice published → buyer pays", "provider.payment_requested", "buyer.payment_sent"),
        ("buyer pays → provider credits it", "buyer.payment_sent", "provider.settlement_confirmed"),
        ("buyer pays → buyer's wallet: settled", "buyer.payment_sent", "buyer.payment_settled"),
        ("buyer's wallet: settled → buyer: done", "buyer.payment_settled", "done"),
        ("job slot: accepted → invoiced", "provider.accepted", "provider.payment_requested"),
    )  # fmt: skip
    rows = []
    for label, start, end in steps:
        xs = [
            at[end, j.request_id] - at[start, j.request_id]
            for j in result.jobs
            if (start, j.request_id) in at and (end, j.request_id) in at
        ]
        if xs:
            rows.append(latency_row(f"{result.name}: {label}", xs))
    walls = [json.loads(j.row["result"])["wall_s"] for j in result.jobs]
    rows.append(latency_row(f"{result.name}: the script's own run (result wall_s)", walls))
    return rows


def merged(runs: list[Run], name: str) -> Run:
    """All rounds of one variant as one: their jobs, and their wall times added up."""
    mine = [r for r in runs if r.name == name]
    return Run(
        name,
        [j for r in mine for j in r.jobs],
        sum(r.wall_s for r in mine),
        sum(r.waited_s for r in mine),
    )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=20, help="jobs per run")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the four runs")
    ap.add_argument("--buyers", type=int, default=4, help="buyer daemons")
    ap.add_argument("--window", type=int, default=8, help="open requests in the concurrent runs")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="autopilotd-bench-")) / "net"
    started, load0 = time.perf_counter(), os.getloadavg()
    variants = [
        (f"{what}, {mode}", script, window)
        for mode, window in (("sequential", 1), (f"concurrent, {args.window} open", args.window))
        for what, script in (("print(1), baseline", BASELINE), ("hash 1 MiB", HASH))
    ]
    async with network(root, args.buyers) as net:
        print(f"up in {time.perf_counter() - started:.0f} s (logs: {root}/*.log)", flush=True)
        buyers = Buyers(net.buyers)
        warm = await one_job(buyers, BASELINE, -1)  # opens the provider's channel: untimed
        if (why := check(warm, BASELINE)) is not None:
            raise SystemExit(f"warm-up job: {why}")
        print(f"warm-up job (opens the provider's channel): {warm.seconds:.2f} s", flush=True)
        before = (await _call(net.provider, "provider.status"))["earnings"]
        runs = []
        for r in range(args.rounds):  # baseline first, then hash first: neither always leads
            order = variants if r % 2 == 0 else [variants[i] for i in (1, 0, 3, 2)]
            for name, script, window in order:
                runs.append(await run(buyers, name, script, args.jobs, window))
        after = (await _call(net.provider, "provider.status"))["earnings"]
        totals = [merged(runs, name) for name, _, _ in variants]
        breakdown = [row for r in totals for row in stages(net, r)]
    print(f"all {args.rounds} rounds:")
    for total in totals:
        print(json.dumps(total.row(), ensure_ascii=False))
    for row in breakdown:
        print(json.dumps(row, ensure_ascii=False))
    jobs = after["lifetime_jobs"] - before["lifetime_jobs"]
    sats = after["lifetime_sats"] - before["lifetime_sats"]
    expected = len(runs) * args.jobs
    print(
        json.dumps(
            {
                "measure": "provider earnings during the runs",
                "jobs_paid": jobs,
                "sats": sats,
                "expected_jobs": expected,
                "expected_sats": expected * PRICE_SATS,
            },
            ensure_ascii=False,
        )
    )
    for base, hashed in ((totals[0], totals[1]), (totals[2], totals[3])):
        a, b = base.row(), hashed.row()
        print(
            f"{hashed.name} against {base.name}: {b['jobs_per_min']} against "
            f"{a['jobs_per_min']} jobs/min (x{b['jobs_per_min'] / a['jobs_per_min']:.2f}), "
            f"p50 {b['p50_ms'] - a['p50_ms']:+.0f} ms"
        )
    print(f"load average at the start and the end: {load0} / {os.getloadavg()}")
    if jobs != expected or sats != expected * PRICE_SATS:
        raise SystemExit("not every job was paid as priced")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
