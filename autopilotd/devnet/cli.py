"""`autopilotd devnet ...`: manage the offline regtest network from a shell.

autopilotd devnet up | down | status | mine N | fund ADDRESS SATS
                  | open-channel NODE_ID ADDRESS SATS [--push SATS]
                  | invoice AMOUNT_MSAT | pay BOLT11          [--dir DIR] [--json]
"""

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import platformdirs

from autopilotd.devnet.client import DevnetClient, DevnetError
from autopilotd.devnet.network import Devnet

logger = logging.getLogger(__name__)


def default_dir() -> Path:
    """`AUTOPILOTD_DEVNET_DIR`, else a `devnet` folder in the user's data directory."""
    configured = os.environ.get("AUTOPILOTD_DEVNET_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path(platformdirs.user_data_dir("autopilotd")) / "devnet"


def _common_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """--dir, --json, -v: accepted before and after the subcommand."""
    default: dict[str, Any] = {} if defaults else {"default": argparse.SUPPRESS}
    parser.add_argument("--dir", type=Path, help="devnet directory", **default)
    parser.add_argument("--json", action="store_true", help="print JSON", **default)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress", **default)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autopilotd devnet", description="The offline regtest Bitcoin + Lightning network."
    )
    _common_options(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common, defaults=False)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "up", parents=[common], help="start btcd, the shim and the hub (returns when ready)"
    )
    commands.add_parser("down", parents=[common], help="stop everything the devnet started")
    commands.add_parser("status", parents=[common], help="height, hub node, balances, channels")
    mine = commands.add_parser("mine", parents=[common], help="mine N blocks")
    mine.add_argument("blocks", type=int)
    reorg = commands.add_parser(
        "reorg", parents=[common], help="replace the last DEPTH blocks with a longer branch"
    )
    reorg.add_argument("depth", type=int)
    fund = commands.add_parser(
        "fund", parents=[common], help="send SATS on chain to ADDRESS and confirm"
    )
    fund.add_argument("address")
    fund.add_argument("sats", type=int)
    fund.add_argument("--confirmations", type=int, default=1)
    channel = commands.add_parser(
        "open-channel", parents=[common], help="open a channel from the hub to a node"
    )
    channel.add_argument("node_id")
    channel.add_argument("address", help="the node's P2P address, host:port")
    channel.add_argument("sats", type=int, help="channel size")
    channel.add_argument("--push", type=int, default=0, help="sats that start on the node's side")
    invoice = commands.add_parser("invoice", parents=[common], help="an invoice made by the hub")
    invoice.add_argument("amount_msat", type=int)
    pay = commands.add_parser("pay", parents=[common], help="the hub pays an invoice")
    pay.add_argument("bolt11")
    return parser


def _print(result: Any, as_json: bool) -> None:
    if as_json or not isinstance(result, str):
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(result)


async def _run(args: argparse.Namespace) -> int:
    net = Devnet(args.dir or default_dir())
    command: str = args.command
    if command == "up":
        info = await net.up()
        if args.json:
            _print(info.to_json(), True)
        else:
            print(f"devnet up in {net.layout.root}")
            print(f"  bitcoind RPC (shim): {info.shim_url} user {info.shim_user}")
            print(f"  hub node:            {info.hub_node_id}@{info.hub_address}")
            print(f"  control API:         {info.control_url}")
        return 0
    if command == "down":
        await net.down()
        print("devnet down")
        return 0
    info_or_none = net.status()
    if info_or_none is None:
        print(f"no devnet is running in {net.layout.root}", file=sys.stderr)
        return 1
    client = net.client
    actions: dict[str, Callable[[], Awaitable[Any]]] = {
        "status": client.status,
        "reorg": lambda: client.reorg(args.depth),
        "mine": lambda: _with_height(client, "hashes", client.mine(args.blocks)),
        "fund": lambda: _with_height(
            client, "txid", client.fund(args.address, args.sats, args.confirmations)
        ),
        "open-channel": lambda: _opened(
            client.open_channel(args.node_id, args.address, args.sats, args.push)
        ),
        "invoice": lambda: client.hub_invoice(args.amount_msat),
        "pay": lambda: client.hub_pay(args.bolt11),
    }
    _print(await actions[command](), args.json)
    return 0


async def _with_height(client: DevnetClient, name: str, pending: Awaitable[Any]) -> Any:
    result = await pending
    return {name: result, "height": (await client.status())["height"]}


async def _opened(pending: Awaitable[Any]) -> dict[str, Any]:
    opened = await pending
    return dict(vars(opened))


def main(argv: list[str]) -> int:
    """Run one devnet command; returns the exit status."""
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        level = logging.INFO if args.verbose else logging.WARNING
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(_run(args))
    except DevnetError as exc:
        print(f"devnet: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
