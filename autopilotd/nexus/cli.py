"""`autopilotd nexus [serve] [--host H] [--port N] [--home DIR] [--network NET] [--print-url]
[--reserve-cap-sats N] [--daily-cap-sats N]`, and the operator's
`autopilotd nexus treasury|receive --sats N|address [--home DIR]`.

The treasury wallet's chain source and peers come from the home's config.toml or the
`AUTOPILOTD_WALLET_*` variables, as for a daemon (docs/config.md); `--network` sets
`wallet_network`. With `--print-url` the Nexus prints its URL on stdout, one line, once it
serves (the demo reads it). The operator commands talk to the running Nexus of that home
(its `nexus.json`, operator.py) and print JSON. Exit codes: 0 ok, 1 the Nexus refused,
2 usage, 78 refused to start (or no Nexus runs there).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp

from autopilotd.config import load_config
from autopilotd.errors import AutopilotError
from autopilotd.nexus.app import Nexus, NexusSettings, nexus_paths, run_nexus
from autopilotd.nexus.desk import DeskSettings
from autopilotd.nexus.operator import NexusFile

EXIT_REFUSED, EXIT_USAGE, EXIT_CONFIG = 1, 2, 78
ACTIONS = ("serve", "treasury", "receive", "address")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autopilotd nexus", description=__doc__.split("\n\n")[0])
    p.add_argument("action", nargs="?", choices=ACTIONS, default="serve")
    p.add_argument("--host", default="127.0.0.1", help="address of the public port")
    p.add_argument("--port", type=int, default=0, help="public port (0: a free one)")
    p.add_argument("--relay-port", type=int, default=0, help="the relay's own loopback port")
    p.add_argument("--home", help="keep the Nexus's files under DIR")
    p.add_argument("--network", choices=["regtest", "signet", "bitcoin"], default=None)
    p.add_argument("--print-url", action="store_true", help="print the URL once serving")
    p.add_argument("--sats", type=int, help="receive: the invoice's amount")
    p.add_argument(
        "--reserve-cap-sats", type=int, default=None, help="sats in flight at most (5000)"
    )
    p.add_argument(
        "--daily-cap-sats", type=int, default=None, help="sats paid per 24 h at most (50000)"
    )
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        paths = nexus_paths(Path(args.home) if args.home else None)
        if args.action != "serve":
            return asyncio.run(_operate(args, NexusFile.read(paths.runtime_dir)))
        config = load_config(paths)
        if args.network:
            config = dataclasses.replace(config, wallet_network=args.network)
        caps = {
            name: value
            for name, value in (
                ("reserve_cap_sats", args.reserve_cap_sats),
                ("daily_cap_sats", args.daily_cap_sats),
            )
            if value is not None
        }
        if any(value < 0 for value in caps.values()):
            print("autopilotd nexus: the caps must be 0 or more sats", file=sys.stderr)
            return EXIT_USAGE
        settings = NexusSettings(
            host=args.host,
            port=args.port,
            relay_port=args.relay_port,
            desk=dataclasses.replace(DeskSettings(), **caps),
        )

        def started(nexus: Nexus) -> None:
            if args.print_url:
                print(nexus.url, flush=True)
            else:
                print(f"nexus serving at {nexus.url}", file=sys.stderr, flush=True)

        return asyncio.run(run_nexus(config, settings, started=started))
    except AutopilotError as exc:
        print(f"autopilotd nexus: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


async def _operate(args: argparse.Namespace, found: NexusFile) -> int:
    if args.action == "receive" and not args.sats:
        print("autopilotd nexus receive: --sats N is required", file=sys.stderr)
        return EXIT_USAGE
    method, path, body = {
        "treasury": ("GET", "/operator/treasury", None),
        "receive": ("POST", "/operator/receive", {"amount_sats": args.sats}),
        "address": ("POST", "/operator/address", {}),
    }[args.action]
    answer, status = await operator_call(found, method, path, body)
    print(json.dumps(answer, indent=2))
    return 0 if status == 200 else EXIT_REFUSED


async def operator_call(
    found: NexusFile, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[Any, int]:
    """One operator call to a running Nexus: (its JSON answer, the HTTP status)."""
    headers = {"Authorization": f"Bearer {found.operator_token}"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        http.request(method, found.url + path, json=body, headers=headers) as resp,
    ):
        return await resp.json(), resp.status
