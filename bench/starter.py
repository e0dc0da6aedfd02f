"""Starter demand on the devnet, everything real: the demo network (devnet, relay, a Nexus with
its ldk-node treasury, the provider with psionic), real Lightning payments.

    .venv/bin/python bench/starter.py [--runs 3] [--browser] [--providers 3 --minutes 2]

1. Go Online → first starter sat, split by the provider's own domain events (one machine, one
   clock): session (Go Online → session open), poll wait (→ offer), ack and request (→ the
   Nexus's request received: it publishes before it answers the ack), inference (→ result
   published), invoice (→ payment-required published), payment (→ the wallet's payment
   received), settlement (→ credited). Each run goes offline first and waits out the Nexus's
   dispatch interval; runs after the first reuse the open session.
2. `--browser`: as a user sees it in `make demo`: the demo's buyer loop runs (a job every 5 s),
   and in the web UI (headless Chromium) Go Online is clicked; until the HUD's balance rises.
   Side by side in the same run: first with the Nexus stopped (the baseline: the open-network
   buyer alone, as the demo was before starter jobs), then with it running again.
3. `--providers N`: paid starter jobs per minute with N providers (the others share the first
   one's psionic), each paid by the treasury over a channel from the devnet's LSP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from autopilotd.demo import BIN, PRICE_SATS, DemoNetwork, _call, _go_online, demo_network
from autopilotd.nexus.operator import NexusFile
from autopilotd.paths import Paths

STEPS = (
    ("session", "starter.session_opened"),
    ("poll wait", "starter.offered"),
    ("ack and request", "provider.request_received"),  # the Nexus publishes, then answers
    ("inference", "provider.result_published"),  # from the request: queue, run, publish
    ("invoice", "provider.payment_requested"),
    ("payment", "wallet.payment_received"),
    ("settlement", "provider.settlement_confirmed"),
)
DISPATCH_INTERVAL_S = 12.0


def events(home: Path, since: float) -> list[dict[str, Any]]:
    lines = (home / "logs" / "latest.jsonl").read_text().splitlines()
    found = [r for r in map(json.loads, lines) if "domain_event" in r]
    return [e for e in found if e["ts"] >= since]


def at(evts: list[dict[str, Any]], name: str, **match: Any) -> float | None:
    for e in evts:
        if e["domain_event"] == name and all(e.get(k) == v for k, v in match.items()):
            return float(e["ts"])
    return None


async def first_starter_sat(net: DemoNetwork) -> dict[str, Any]:
    """Go Online, until the first starter job is credited; the steps from the event log."""
    home = net.provider
    done = (await _call(home, "starter.status"))["jobs_done"]
    started = time.time()
    await _go_online(home)
    while (await _call(home, "starter.status"))["jobs_done"] <= done:
        await asyncio.sleep(0.1)
    total = time.time() - started
    evts = events(home, started)
    acked = next(e for e in evts if e["domain_event"] == "starter.acked")
    rid = acked["request_id"]
    paid = at(evts, "provider.payment_requested", request_id=rid)
    payment_hash = next(
        e["payment_hash"]
        for e in evts
        if e["domain_event"] == "provider.payment_requested" and e.get("request_id") == rid
    )
    moments = {
        "starter.session_opened": at(evts, "starter.session_opened"),
        "starter.offered": at(evts, "starter.offered"),
        "starter.acked": acked["ts"],
        "provider.request_received": at(evts, "provider.request_received", request_id=rid),
        "provider.accepted": at(evts, "provider.accepted", request_id=rid),
        "provider.result_published": at(evts, "provider.result_published", request_id=rid),
        "provider.payment_requested": paid,
        "wallet.payment_received": at(evts, "wallet.payment_received", payment_hash=payment_hash),
        "provider.settlement_confirmed": at(evts, "provider.settlement_confirmed", request_id=rid),
    }
    steps: dict[str, float | None] = {}
    last = started
    for label, name in STEPS:
        when = moments[name]
        steps[label] = None if when is None else round(when - last, 3)
        last = when if when is not None else last
    return {"total_s": round(total, 2), "steps_s": steps}


async def offline(home: Path) -> None:
    await _call(home, "provider.offline")
    while (await _call(home, "starter.status"))["offer"] is not None:
        await asyncio.sleep(0.2)


async def browser_first_sat(net: DemoNetwork) -> float:
    """The demo as a user sees it: its buyer loop runs; click Go Online; the HUD's sats rise."""
    from playwright.async_api import async_playwright  # the test extra installs it

    loop = await net.procs.start(
        "buyer-loop",
        str(BIN / "autopilotd"),
        "buyer",
        "--home",
        str(net.buyer),
        "--budget-sats",
        str(PRICE_SATS * 2),
        "--interval",
        "5",
        "--timeout",
        "20",
    )
    try:
        await asyncio.sleep(6)  # as in the demo: the buyer's first request waits, unseen
        login = (await _call(net.provider, "web.login_url"))["url"]
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path="/usr/bin/chromium", args=["--no-sandbox", "--headless"]
            )
            page = await browser.new_page()
            await page.goto(login)
            before = await page.inner_text("[data-testid=hud-balance]")
            button = page.locator("#hud [data-testid=go-online]")
            started = time.perf_counter()
            await button.click()
            while await page.inner_text("[data-testid=hud-balance]") == before:
                await page.wait_for_timeout(50)
            seconds = time.perf_counter() - started
            await browser.close()
        return seconds
    finally:
        loop.terminate()
        await loop.wait()


def wallet_env(net: DemoNetwork) -> dict[str, str]:
    info = net.devnet.info
    return {
        "AUTOPILOTD_WALLET_NETWORK": "regtest",
        "AUTOPILOTD_WALLET_BITCOIND_RPC_URL": (
            f"http://{info.shim_user}:{info.shim_password}@{info.shim_host}:{info.shim_port}"
        ),
        "AUTOPILOTD_WALLET_TRUSTED_PEERS_NO_RESERVE": info.lsp_node_id,
        "AUTOPILOTD_WALLET_PEERS": info.lsp,
    }


async def stop_nexus(net: DemoNetwork) -> None:
    os.kill(net.nexus.pid, signal.SIGTERM)
    while Path(f"/proc/{net.nexus.pid}").exists():
        await asyncio.sleep(0.1)


async def start_nexus(net: DemoNetwork) -> None:
    """The same Nexus again (same home, same port: the provider's `nexus_url` holds)."""
    port = str(urlsplit(net.nexus.url).port)
    home = net.root / "nexus"
    proc = await net.procs.start(
        "nexus-again", str(BIN / "autopilotd"), "nexus", "--home", str(home),
        "--port", port, "--print-url", env=wallet_env(net), pipe=True,
    )  # fmt: skip
    assert proc.stdout is not None
    await proc.stdout.readline()
    net.nexus = NexusFile.read(Paths.for_home(home).runtime_dir)


async def providers_per_minute(net: DemoNetwork, n: int, minutes: float) -> dict[str, Any]:
    """N providers online at once (the first one's psionic shared), starter jobs paid per
    minute over `minutes`."""
    runtime_url = (await _call(net.provider, "status"))["local_runtime"]["url"]
    env = {
        **wallet_env(net),
        "AUTOPILOTD_RELAYS": net.relay_url,
        "AUTOPILOTD_NEXUS_URL": net.nexus.url,
        "AUTOPILOTD_RUNTIME_MODE": "url",
        "AUTOPILOTD_RUNTIME_URL": runtime_url,
    }
    homes = [net.provider]
    for k in range(1, n):
        home = net.root / f"provider-{k}"
        await net.procs.start(
            f"provider-{k}", str(BIN / "autopilotd"), "run", "--home", str(home), env=env
        )
        homes.append(home)
    for home in homes[1:]:
        while not (await _call_soon(home, "wait.until", {"condition": "wallet-ready"}))["met"]:
            pass
        status = await _call(home, "wallet.status")
        await net.devnet.client.lsp_open_channel(status["node_id"], status["listening"], 500_000, 0)
        while (await _call(home, "wallet.balance"))["receivable_sats"] <= 0:
            await asyncio.sleep(0.5)
    for home in homes:
        await _go_online(home)
    await asyncio.sleep(DISPATCH_INTERVAL_S)  # every provider past its first offer
    before = [(await _call(h, "starter.status"))["jobs_done"] for h in homes]
    await asyncio.sleep(minutes * 60)
    after = [(await _call(h, "starter.status"))["jobs_done"] for h in homes]
    paid = sum(a - b for a, b in zip(after, before, strict=True))
    return {
        "providers": n,
        "minutes": minutes,
        "paid": paid,
        "per_minute": round(paid / minutes, 1),
        "per_provider": [a - b for a, b in zip(after, before, strict=True)],
    }


async def _call_soon(home: Path, method: str, params: dict[str, Any]) -> Any:
    """A call to a daemon that may still be starting."""
    for _ in range(600):
        try:
            return await _call(home, method, {**params, "timeout_s": 10})
        except Exception:  # not up yet
            await asyncio.sleep(0.5)
    raise TimeoutError(f"{home.name} did not answer")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--browser", action="store_true")
    ap.add_argument("--providers", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=2.0)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="autopilotd-bench-")) / "net"
    async with demo_network(root) as net:
        await asyncio.sleep(2)
        for run in range(args.runs):
            if run:
                await offline(net.provider)
                await asyncio.sleep(DISPATCH_INTERVAL_S)
            result = await first_starter_sat(net)
            print(
                json.dumps({"measure": f"Go Online → first starter sat, run {run + 1}", **result})
            )
        if args.browser:
            await offline(net.provider)
            await stop_nexus(net)
            baseline = await browser_first_sat(net)
            await offline(net.provider)
            await start_nexus(net)
            await asyncio.sleep(DISPATCH_INTERVAL_S)
            seconds = await browser_first_sat(net)
            for label, value in (("without the Nexus (baseline)", baseline), ("", seconds)):
                print(
                    json.dumps(
                        {
                            "measure": f"demo web UI: Go Online click → HUD sats rise {label}",
                            "seconds": round(value, 2),
                        }
                    )
                )
        if args.providers:
            await offline(net.provider)
            result = await providers_per_minute(net, args.providers, args.minutes)
            print(json.dumps({"measure": "paid starter jobs per minute", **result}))


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
