"""The long-lived devnet process: btcd (child), the shim, the hub, the LSP and the control API.

`autopilotd devnet up` must return while the network keeps running, so the pieces live in
this process, started detached (`--detach` forks into a new session) and stopped with
SIGTERM by `down`. It publishes `devnet.json` only once everything answers, and removes it
on the way out.

    python -m autopilotd.devnet.supervisor --dir DIR [--detach] [--owner PID]
                                           [--lsp-client-trusts-lsp]

With `--owner`, it also stops once that process is gone (a test or demo that was killed).
`--lsp-client-trusts-lsp` runs the LSP in bLIP-52's "client trusts LSP" model (it broadcasts
a JIT channel's funding only once the client claimed the payment); by default the LSP trusts
the client (it broadcasts at once).
"""

import argparse
import asyncio
import fcntl
import logging
import os
import secrets
import shutil
import signal
import sys
from pathlib import Path

from autopilotd.children import owner_gone
from autopilotd.devnet.btcd import BtcdConfig, BtcdProcess
from autopilotd.devnet.coins import Faucet, MinerKey
from autopilotd.devnet.control import serve_control
from autopilotd.devnet.hub import HubNode
from autopilotd.devnet.ldk import ChainSource, ldk_node_module
from autopilotd.devnet.lsp import LspProcess, LspTerms, find_lsp_bin
from autopilotd.devnet.operations import INITIAL_BLOCKS, DevnetOperations
from autopilotd.devnet.shim import BitcoindShim, serve_shim
from autopilotd.devnet.state import DevnetInfo, DevnetLayout, write_info, write_pid
from autopilotd.loopback import LOOPBACK, free_port

logger = logging.getLogger(__name__)


async def run(
    layout: DevnetLayout, owner: int | None = None, lsp_terms: LspTerms | None = None
) -> None:
    """Run the devnet until SIGTERM or SIGINT, or `owner` exits (each cancels it)."""
    ldk_node_module()  # fail before starting anything when the native parts are missing
    find_lsp_bin()
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, main.cancel)
    async with asyncio.TaskGroup() as tg:
        serving = tg.create_task(_run(layout, lsp_terms or LspTerms()))
        if owner is not None:
            tg.create_task(_stop_when_gone(owner, serving))


async def _stop_when_gone(owner: int, serving: asyncio.Task[None]) -> None:
    await owner_gone(owner)
    logger.info("the devnet's owner (pid %d) is gone", owner)
    serving.cancel()


async def _run(layout: DevnetLayout, lsp_terms: LspTerms) -> None:
    forget_previous_chain(layout)

    key = MinerKey.load_or_create(layout.miner_key_file)
    btcd_config = BtcdConfig(
        home=layout.btcd_home,
        rpc_port=free_port(),
        rpc_user="devnet",
        rpc_password=secrets.token_hex(16),
        mining_address=key.address,
    )
    chain = ChainSource(LOOPBACK, free_port(), "ldk", secrets.token_hex(16))
    control_token = secrets.token_hex(32)
    try:
        btcd_process = BtcdProcess(btcd_config, pid_file=layout.btcd_pid_file)
        async with btcd_process as btcd, btcd_config.rpc() as rpc:
            height: int = await rpc.call("getblockcount")
            if height < INITIAL_BLOCKS:
                await rpc.call("generate", INITIAL_BLOCKS - height)
            shim = BitcoindShim(rpc, chain.user, chain.password)
            async with serve_shim(shim, chain.port):
                hub = HubNode(layout.hub_storage, free_port(), chain)
                lsp = LspProcess(layout.lsp_storage, free_port(), free_port(), chain, lsp_terms)
                await hub.start()
                try:
                    await lsp.start()
                    ops = DevnetOperations(rpc, Faucet(rpc, key), hub, lsp)
                    async with asyncio.TaskGroup() as tasks:
                        events = tasks.create_task(hub.run_events())
                        await ops.ensure_hub_funds()
                        await ops.ensure_lsp_funds()
                        async with serve_control(ops, control_token, free_port()) as url:
                            info = DevnetInfo(
                                supervisor_pid=os.getpid(),
                                btcd_pid=btcd.pid,
                                btcd_rpc_port=btcd_config.rpc_port,
                                btcd_rpc_user=btcd_config.rpc_user,
                                btcd_rpc_password=btcd_config.rpc_password,
                                btcd_cert=str(btcd_config.cert_path),
                                shim_host=chain.host,
                                shim_port=chain.port,
                                shim_user=chain.user,
                                shim_password=chain.password,
                                control_url=url,
                                control_token=control_token,
                                hub_node_id=hub.node_id,
                                hub_address=hub.address,
                                miner_address=key.address,
                                lsp_node_id=lsp.node_id,
                                lsp_address=lsp.address,
                                lsp_token=lsp.terms.token or "",
                            )
                            write_info(layout, info)
                            logger.info("devnet up: shim %s, control %s", info.shim_url, url)
                            try:
                                await asyncio.Event().wait()  # until cancelled by a signal
                            finally:
                                logger.info("stopping the devnet")
                                layout.info_file.unlink(missing_ok=True)
                                events.cancel()
                finally:
                    await lsp.stop()
                    await hub.stop()
    finally:
        layout.info_file.unlink(missing_ok=True)
        layout.btcd_pid_file.unlink(missing_ok=True)


def forget_previous_chain(layout: DevnetLayout) -> None:
    """Start from an empty chain: btcd deletes its regtest database at every start anyway.

    A hub or LSP that remembered blocks of the old chain would never sync with the new one,
    so their storage goes too. The miner key stays.
    """
    for path in (layout.btcd_home / "data", layout.hub_storage, layout.lsp_storage):
        if path.exists():
            logger.info("removing %s from the previous run", path)
            shutil.rmtree(path)


def _detach() -> None:
    """Fork into a new session; the parent exits at once so the caller is not tied to us."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the supervisor process."""
    parser = argparse.ArgumentParser(prog="python -m autopilotd.devnet.supervisor")
    parser.add_argument("--dir", type=Path, required=True, help="the devnet directory")
    parser.add_argument("--detach", action="store_true", help="run in a new session")
    parser.add_argument("--owner", type=int, help="stop once this process is gone")
    parser.add_argument(
        "--lsp-client-trusts-lsp", action="store_true", help="the LSP's client-trusts-LSP model"
    )
    args = parser.parse_args(argv)
    layout = DevnetLayout(args.dir.resolve())
    layout.create()
    if args.detach:
        _detach()
    # One supervisor per directory, for as long as this process lives.
    with layout.lock_file.open("a") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"a devnet supervisor already runs in {layout.root}", file=sys.stderr)
            return 1
        return _serve(layout, args.owner, LspTerms(client_trusts_lsp=args.lsp_client_trusts_lsp))


def _serve(layout: DevnetLayout, owner: int | None, lsp_terms: LspTerms) -> int:
    with layout.log_file.open("a") as log:
        os.dup2(log.fileno(), sys.stdout.fileno())
        os.dup2(log.fileno(), sys.stderr.fileno())
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    write_pid(layout.supervisor_pid_file, os.getpid())
    try:
        asyncio.run(run(layout, owner, lsp_terms))
    except asyncio.CancelledError:
        pass
    except Exception:
        logger.exception("the devnet failed")
        return 1
    finally:
        layout.supervisor_pid_file.unlink(missing_ok=True)
        logger.info("devnet down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
