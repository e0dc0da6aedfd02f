"""`autopilotd demo`: the embedded default, everything real, on this machine only.

It starts, in a fresh demo folder: the offline regtest network (btcd, the shim, a hub
Lightning node, an LSPS2 LSP), a local Nostr relay, a Nexus (`autopilotd nexus`: its relay,
starter jobs, a treasury wallet), your provider daemon (a new ldk-node wallet with no coins
and no channel, the LSP as its `wallet_lsp`; psionic with the packaged models; the Nexus as
its `nexus_url`) and a second daemon on the open relay that sends a paid job every few
seconds and also sells text generation (on your psionic), so Autopilot Chat's /buy has a
seller. The payers' channels come from the LSP, with funds pushed to them. It prints the web
UI's login link: click Go Online and watch the sats arrive, first from a starter job whose
payment opens your wallet's first channel (the LSP takes its fee), then from the buyer too.
Once that channel is open, the second daemon pays your wallet SPENDING_MONEY_SATS once, an
ordinary payment (not earnings), so that /buy can spend: a wallet cannot spend the reserve its
channel keeps (1,000 sats), and a few jobs' earnings are less than that.
`--smoke N` goes online by itself and exits 0 only if the buyer's N jobs and at least one
starter job were paid, and the chat thread listed its folder and bought a job.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from autopilotd.children import die_with_parent
from autopilotd.client import RpcClient, RpcError, locate
from autopilotd.ctl import buyer as buyer_loop
from autopilotd.devnet import Devnet
from autopilotd.devnet.state import DevnetInfo
from autopilotd.errors import AutopilotError, DaemonNotRunning, UserError
from autopilotd.nexus.cli import operator_call
from autopilotd.nexus.operator import NexusFile
from autopilotd.paths import Paths

BIN = Path(sys.executable).parent
PRICE_SATS = 10
READY_TIMEOUT_S = 300.0
TREASURY_CHANNEL_SATS, TREASURY_PUSH_SATS = 1_000_000, 400_000
STARTER_TIMEOUT_S = 180.0
SPENDING_MONEY_SATS = 2_000
CHAT_BUY_BUDGET_SATS = PRICE_SATS * 2


class Processes:
    """The demo's child processes, each logging to a file in the demo folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[asyncio.subprocess.Process] = []
        self.logs: list[IO[bytes]] = []

    async def start(
        self, name: str, *args: str, env: dict[str, str] | None = None, pipe: bool = False
    ) -> asyncio.subprocess.Process:
        log = (self.root / f"{name}.log").open("ab")
        self.logs.append(log)
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if pipe else log,
            stderr=log,
            env={**os.environ, **(env or {})},
            preexec_fn=die_with_parent,  # a killed demo leaves no daemon or relay behind
        )
        self.procs.append(proc)
        return proc

    async def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for log in self.logs:
            log.close()


async def _call(home: Path, method: str, params: dict[str, Any] | None = None) -> Any:
    async with RpcClient(locate(home=str(home))) as client:
        return await client.call(method, params or {})


async def _wait_condition(home: Path, condition: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if (await _call(home, "wait.until", {"condition": condition, "timeout_s": 10}))["met"]:
                return
        except DaemonNotRunning:
            await asyncio.sleep(0.5)
    raise UserError(
        f"{home.name}: '{condition}' not reached in {timeout:.0f} s; see {home.name}.log"
    )


async def _wait_usable(home: Path) -> None:
    for _ in range(240):
        balance = await _call(home, "wallet.balance")
        if balance["spendable_sats"] > 0 and balance["receivable_sats"] > 0:
            return
        await asyncio.sleep(0.5)
    raise UserError(f"{home.name}: its channel did not become usable")


async def _go_online(home: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            await _call(home, "provider.online")
            return
        except RpcError as exc:
            if time.monotonic() > deadline:
                raise UserError(f"could not go online: {exc.message}") from None
            await asyncio.sleep(1)


async def _starter_jobs(home: Path, at_least: int, timeout: float) -> int:
    """Starter jobs paid to the provider (the wallet's own count), once at least `at_least`."""
    deadline = time.monotonic() + timeout
    while True:
        done = int((await _call(home, "starter.status"))["jobs_done"])
        if done >= at_least or time.monotonic() > deadline:
            return done
        await asyncio.sleep(1)


async def _start_nexus(
    procs: Processes, devnet: Devnet, home: Path, env: dict[str, str]
) -> NexusFile:
    """The Nexus, serving, its treasury funded over a channel from the LSP."""
    nexus = await procs.start(
        "nexus", str(BIN / "autopilotd"), "nexus", "--home", str(home), "--print-url",
        env=env, pipe=True,
    )  # fmt: skip
    assert nexus.stdout is not None
    try:
        url = (await asyncio.wait_for(nexus.stdout.readline(), READY_TIMEOUT_S)).decode().strip()
    except TimeoutError:
        url = ""
    if not url.startswith("http://"):
        raise UserError("the Nexus did not start; see nexus.log")
    found = NexusFile.read(Paths.for_home(home).runtime_dir)
    treasury, _ = await operator_call(found, "GET", "/operator/treasury")
    await devnet.client.lsp_open_channel(
        treasury["node_id"], treasury["listening"], TREASURY_CHANNEL_SATS, TREASURY_PUSH_SATS
    )
    for _ in range(240):
        treasury, _ = await operator_call(found, "GET", "/operator/treasury")
        if (treasury.get("balance") or {}).get("spendable_sats", 0) > 0:
            return found
        await asyncio.sleep(0.5)
    raise UserError("the Nexus's treasury channel did not become usable; see nexus.log")


@dataclass
class DemoNetwork:
    """Everything the demo runs, up and wired: use it as `async with demo_network(root)`."""

    root: Path
    devnet: Devnet
    procs: Processes
    relay_url: str
    nexus: NexusFile
    provider: Path
    buyer: Path


async def start_relay(procs: Processes) -> str:
    """A local relay as a child process (`autopilotd relay`); its ws:// URL."""
    relay = await procs.start(
        "relay", str(BIN / "autopilotd"), "relay", "--port", "0", "--print-url", pipe=True
    )
    assert relay.stdout is not None
    relay_url = (await asyncio.wait_for(relay.stdout.readline(), 60)).decode().strip()
    if not relay_url.startswith("ws://"):
        raise UserError("the local relay did not start; see relay.log")
    return relay_url


def devnet_env(info: DevnetInfo) -> dict[str, str]:
    """The settings every daemon on the devnet gets: its profile and its chain source."""
    return {
        "AUTOPILOTD_NETWORK_PROFILE": "regtest",  # the devnet's profile
        "AUTOPILOTD_WALLET_BITCOIND_RPC_URL": (
            f"http://{info.shim_user}:{info.shim_password}@{info.shim_host}:{info.shim_port}"
        ),
    }


def payer_env(info: DevnetInfo, common: dict[str, str]) -> dict[str, str]:
    """`common` for a daemon that pays: kept connected to the devnet's LSP, trusted for its
    channels without a reserve."""
    return {
        **common,
        "AUTOPILOTD_WALLET_TRUSTED_PEERS_NO_RESERVE": info.lsp_node_id,
        "AUTOPILOTD_WALLET_PEERS": info.lsp,
    }


@contextlib.asynccontextmanager
async def demo_network(
    root: Path, provider_env: dict[str, str] | None = None
) -> AsyncIterator[DemoNetwork]:
    """A fresh devnet, relay, Nexus, provider (a new wallet + psionic) and buyer (selling too,
    online, on the provider's psionic), the payers' channels open. `provider_env` adds
    settings to the provider's (benchmarks)."""
    if root.exists():
        shutil.rmtree(root)  # every devnet starts a fresh chain; so does the demo
    root.mkdir(parents=True, mode=0o700)
    procs = Processes(root)
    provider, buyer = root / "provider", root / "buyer"
    try:
        async with Devnet(root / "devnet") as devnet:
            relay_url = await start_relay(procs)
            info = devnet.info
            common = devnet_env(info)
            payers = payer_env(info, common)
            print("starting the Nexus and funding its treasury …", flush=True)
            nexus = await _start_nexus(procs, devnet, root / "nexus", payers)
            common["AUTOPILOTD_RELAYS"] = payers["AUTOPILOTD_RELAYS"] = relay_url
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
                    "AUTOPILOTD_PROVIDER_PRICE_SATS": str(PRICE_SATS),
                    "AUTOPILOTD_PROVIDER_MAX_TOKENS": "128",
                    "AUTOPILOTD_NEXUS_URL": nexus.url,
                    **(provider_env or {}),
                },
            )
            print("loading the models …", flush=True)
            await _wait_condition(provider, "wallet-ready", READY_TIMEOUT_S)
            await _wait_condition(provider, "runtime-ready", READY_TIMEOUT_S)
            runtime_url = (await _call(provider, "runtime.status"))["url"]
            await procs.start(
                "buyer",
                str(BIN / "autopilotd"),
                "run",
                "--home",
                str(buyer),
                env={
                    **payers,
                    # it sells too (Autopilot Chat's /buy needs a seller), on your psionic
                    "AUTOPILOTD_RUNTIME_MODE": "url",
                    "AUTOPILOTD_RUNTIME_URL": runtime_url,
                    "AUTOPILOTD_PROVIDER_PRICE_SATS": str(PRICE_SATS),
                    "AUTOPILOTD_PROVIDER_MAX_TOKENS": "128",
                },
            )
            print("waiting for the buyer's wallet …", flush=True)
            await _wait_condition(buyer, "wallet-ready", READY_TIMEOUT_S)
            print("opening the buyer's channel from the LSP …", flush=True)
            status = await _call(buyer, "wallet.status")
            await devnet.client.lsp_open_channel(
                status["node_id"], status["listening"], 1_000_000, 600_000
            )
            await _wait_usable(buyer)
            await _go_online(buyer)
            yield DemoNetwork(root, devnet, procs, relay_url, nexus, provider, buyer)
    finally:
        await procs.stop()


DEMO_FILES = {
    "README.md": "# A folder for Autopilot Chat\n\nTry /ls, /read hello.py, /run python3 hello.py,"
    " and a /patch of notes.txt (then Revert it).\n",
    "hello.py": "print('hello from the sandbox')\n",
    "notes.txt": "first line\nsecond line\n",
}


async def _chat_thread(provider: Path, folder: Path) -> dict[str, Any]:
    """A folder of sample files and an Autopilot Chat thread about it, for a newcomer to try."""
    folder.mkdir(exist_ok=True)
    for name, text in DEMO_FILES.items():
        (folder / name).write_text(text)
    thread: dict[str, Any] = await _call(
        provider, "thread.start", {"workspace": str(folder), "title": "demo folder"}
    )
    return thread


async def _spending_money(provider: Path, buyer: Path, timeout: float) -> bool:
    """Once the provider's wallet has a channel with room for it, the buyer pays it
    SPENDING_MONEY_SATS over an ordinary invoice (a receive, never earnings). Whether it did."""
    deadline = time.monotonic() + timeout
    while (await _call(provider, "wallet.balance"))["receivable_sats"] < SPENDING_MONEY_SATS:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(2)
    invoice = await _call(
        provider,
        "wallet.receive",
        {"amount_sats": SPENDING_MONEY_SATS, "description": "demo: spending money for /buy"},
    )
    paid = await _call(buyer, "wallet.pay", {"bolt11": invoice["bolt11"]})
    for _ in range(60):
        if paid.get("settled"):
            break
        await asyncio.sleep(1)
        paid = await _call(buyer, "wallet.payment", {"payment_hash": invoice["payment_hash"]})
    return bool(paid.get("settled"))


async def _spending_money_later(provider: Path, buyer: Path) -> None:
    """The interactive demo's spending money, paid whenever the first channel opens."""
    try:
        paid = await _spending_money(provider, buyer, float("inf"))
    except AutopilotError as exc:
        print(f"the spending money was not paid: {exc.message}", flush=True)
        return
    if paid:
        print(
            f"\nThe buyer paid your wallet {SPENDING_MONEY_SATS:,} sats of spending money: "
            "Autopilot Chat's /buy can spend now.",
            flush=True,
        )
    else:
        print("the spending money is not settled yet; see the wallet's history", flush=True)


async def _chat_buy(provider: Path, thread_id: str) -> dict[str, Any]:
    """A /buy in the chat thread, its spend approved by the owner; the bought item."""
    turn = await _call(
        provider,
        "turn.start",
        {"thread_id": thread_id, "input": f"/buy {CHAT_BUY_BUDGET_SATS} Say hello in five words."},
    )
    deadline = time.monotonic() + 60
    while True:
        now = await _call(provider, "turn.wait", {"turn_id": turn["id"], "timeout_s": 0})
        item: dict[str, Any] = now["items"][-1]
        if item["body"].get("approval", {}).get("status") == "pending":
            break
        if now["status"] != "running" or time.monotonic() > deadline:
            return item
        await asyncio.sleep(0.2)
    await _call(provider, "approval.answer_spend", {"item_id": item["id"], "decision": "approve"})
    deadline = time.monotonic() + 180
    while now["status"] == "running" and time.monotonic() < deadline:
        now = await _call(provider, "turn.wait", {"turn_id": turn["id"], "timeout_s": 20})
    bought: dict[str, Any] = now["items"][-1]
    return bought


async def run_demo(home: Path, *, smoke: int = 0) -> int:
    root = home.expanduser().resolve()
    print(f"starting the demo in {root} (logs: {root}/*.log)", flush=True)
    try:
        async with demo_network(root) as net:
            provider, buyer, procs = net.provider, net.buyer, net.procs
            thread = await _chat_thread(provider, root / "chat-folder")
            if smoke:
                await _go_online(provider)
                args = argparse.Namespace(
                    home=str(buyer),
                    manifest=None,
                    budget_sats=PRICE_SATS * 2,
                    count=smoke,
                    interval=0.5,
                    timeout=90.0,
                    max_tokens=16,
                    prompt=None,
                    fail_fast=True,
                )
                rc = await buyer_loop.run(args)
                starter = await _starter_jobs(provider, 1, STARTER_TIMEOUT_S)
                earnings = (await _call(provider, "provider.status"))["earnings"]
                jobs, sats = earnings["lifetime_jobs"] - starter, earnings["lifetime_sats"]
                print(
                    f"smoke: open-network jobs paid: {jobs}, starter jobs paid: {starter}, "
                    f"sats earned: {sats}",
                    flush=True,
                )
                turn = await _call(
                    provider,
                    "turn.start",
                    {"thread_id": thread["id"], "input": "/ls", "wait": True},
                )
                listed = len(turn["items"][-1]["body"].get("entries", []))
                print(f"smoke: chat thread {turn['status']}, {listed} files listed", flush=True)
                chat_ok = turn["status"] == "completed" and listed == len(DEMO_FILES)
                if not await _spending_money(provider, buyer, 60):
                    print("smoke: the spending money was not paid", flush=True)
                    return 1
                bought = await _chat_buy(provider, thread["id"])
                body = bought["body"]
                print(
                    f"smoke: chat bought a job: {bought['status']}, "
                    f"payment {str(body.get('payment_hash'))[:12]}, result: {body.get('result')}",
                    flush=True,
                )
                chat_ok = chat_ok and bought["status"] == "completed" and bool(body.get("result"))
                return 0 if rc == 0 and jobs == smoke and starter >= 1 and chat_ok else 1
            login = (await _call(provider, "web.login_url"))["url"]
            await procs.start(
                "buyer-loop",
                str(BIN / "autopilotd"),
                "buyer",
                "--home",
                str(buyer),
                "--budget-sats",
                str(PRICE_SATS * 2),
                "--interval",
                "5",
                "--timeout",
                "20",
            )
            endpoint = locate(home=str(provider))
            print(
                "\nautopilotd demo is running\n"
                f"  web UI     {login}\n"
                f"             (a one-time login link; later: autopilotctl --home {provider} web)\n"
                f"  JSON-RPC   {endpoint.rpc_url}\n"
                f"  Nexus      {net.nexus.url}  (stats: {net.nexus.url}/stats)\n"
                f"  try        autopilotctl --home {provider} provider online\n"
                f"             autopilotctl --home {provider} status\n"
                "\nClick Go Online: the Nexus offers a starter job at once, and a buyer sends a\n"
                "paid job every 5 s. Watch the sats arrive (Starter Jobs shows the Nexus's side).\n"
                f"Autopilot Chat has a thread about {root / 'chat-folder'}: try /ls, then\n"
                "/run python3 hello.py and approve it (docs/chat.md). Once your first channel\n"
                f"is open, the buyer pays your wallet {SPENDING_MONEY_SATS:,} sats of spending"
                " money (not\nearnings): then /buy 20 Write a haiku buys a job from the buyer.\n"
                "Press Ctrl-C to stop.",
                flush=True,
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            async with asyncio.TaskGroup() as tg:
                gift = tg.create_task(_spending_money_later(provider, buyer))
                await stop.wait()
                gift.cancel()
            return 0
    except (AutopilotError, TimeoutError) as exc:
        message = exc.message if isinstance(exc, AutopilotError) else "a step timed out"
        print(f"autopilotd demo: {message}", file=sys.stderr)
        return 1
