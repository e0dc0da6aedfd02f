"""`autopilotd`: run the daemon, the demo, the MCP server, service units and the devnet."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from autopilotd import __version__
from autopilotd.config import load_config
from autopilotd.errors import AutopilotError, StartupCheckFailed
from autopilotd.paths import Paths

EXIT_USAGE = 2
EXIT_CONFIG = 78


def _configure_logging(level: str) -> None:
    """Plain lines to stderr (journald stamps them under systemd); the only handler set-up."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autopilotd", description=__doc__)
    p.add_argument("--version", action="version", version=f"autopilotd {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--home", help="keep config, data, runtime files and logs under DIR")

    demo = sub.add_parser("demo", help="the embedded default: start everything, print the web URL")
    demo.add_argument("--home", default=".demo", help="demo directory (default: ./.demo)")
    demo.add_argument(
        "--smoke",
        type=int,
        default=0,
        metavar="N",
        help="go online, have the buyer pay N jobs, exit 0 only if all N were paid",
    )

    mcp = sub.add_parser("mcp", help="an MCP stdio server over the command registry")
    mcp.add_argument("--home")
    mcp.add_argument("--manifest")
    mcp.add_argument(
        "--allow-control", action="store_true", help="also expose state-changing commands"
    )
    mcp.add_argument(
        "--allow-spend",
        action="store_true",
        help="also expose money-moving commands; each call still waits for a person's approval",
    )

    svc = sub.add_parser("service", help="install, remove or inspect the user service")
    svc.add_argument("action", choices=["install", "uninstall", "status", "print"])
    svc.add_argument("--home", help="run the service with this --home")
    svc.add_argument("--dry-run", action="store_true", help="show what would be done")

    wallet = sub.add_parser("wallet", help="wallet set-up that happens before the daemon runs")
    wallet.add_argument("action", choices=["import"], help="import: restore from a mnemonic")
    wallet.add_argument("--home")

    # These two parse their own arguments (see PASSTHROUGH); listed here for --help.
    sub.add_parser("devnet", help="the offline regtest network: up, down, status, mine, fund …")
    sub.add_parser("relay", help="a local Nostr relay on loopback (for tests and the demo)")
    sub.add_parser("buyer", help="a headless loop that buys jobs with a running daemon's wallet")
    sub.add_parser("nexus", help="a Nexus: relay, provider sessions, starter jobs, treasury")
    return p


PASSTHROUGH = {
    "devnet": ("autopilotd.devnet.cli", "the devnet"),
    "relay": ("autopilotd.adapters.local_relay", "the local relay"),
    "buyer": ("autopilotd.ctl.buyer", "the buying loop"),
    "nexus": ("autopilotd.nexus.cli", "the Nexus"),
}


def _passthrough(name: str, argv: list[str]) -> int:
    """Hand the rest of the command line, untouched, to a sub-tool with its own parser."""
    import importlib

    module, what = PASSTHROUGH[name]
    try:
        entry = importlib.import_module(module).main
    except ImportError as exc:
        print(f"autopilotd: {what} is not available ({exc})", file=sys.stderr)
        return EXIT_USAGE
    return int(entry(argv))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in PASSTHROUGH:
        sys.exit(_passthrough(argv[0], argv[1:]))
    args = _parser().parse_args(argv)
    try:
        code = _dispatch(args)
    except StartupCheckFailed as exc:
        print(f"autopilotd: refusing to start: {exc.message}", file=sys.stderr)
        code = EXIT_CONFIG
    except AutopilotError as exc:
        print(f"autopilotd: {exc.message}", file=sys.stderr)
        code = EXIT_CONFIG
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _wallet_import(paths: Paths) -> int:
    """Install an existing BIP-39 mnemonic, read from standard input (never from argv)."""
    from autopilotd.wallet.seed import import_seed

    if sys.stdin.isatty():
        print("Type or paste the 12 to 24 words, then press Enter:", file=sys.stderr)
    words = sys.stdin.readline()
    path = import_seed(paths.data_dir, words)
    print(
        f"wallet seed restored to {path}; start the daemon with: autopilotd run"
        + (f" --home {paths.home}" if paths.home else "")
    )
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.cmd == "run":
        paths = Paths.resolve(args.home)
        config = load_config(paths)
        _configure_logging(config.log_level)
        from autopilotd.daemon import EXIT_RESTART, run_daemon

        code = asyncio.run(run_daemon(config))
        if code == EXIT_RESTART:  # the same process starts again, with the same arguments
            sys.stdout.flush()
            sys.stderr.flush()
            os.execv(sys.executable, [sys.executable, "-m", "autopilotd", *sys.argv[1:]])
        return code
    if args.cmd == "demo":
        _configure_logging("INFO")
        from autopilotd.demo import run_demo

        return asyncio.run(run_demo(Path(args.home), smoke=args.smoke))
    if args.cmd == "mcp":
        _configure_logging("WARNING")
        from autopilotd.mcp.server import serve_stdio

        return asyncio.run(
            serve_stdio(
                home=args.home,
                manifest=args.manifest,
                allow_control=args.allow_control,
                allow_spend=args.allow_spend,
            )
        )
    if args.cmd == "service":
        from autopilotd.service.units import service_main

        return service_main(args.action, home=args.home, dry_run=args.dry_run)
    if args.cmd == "wallet":
        return _wallet_import(Paths.resolve(args.home))
    return EXIT_USAGE
