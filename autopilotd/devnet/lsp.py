"""The devnet's LSPS2 liquidity provider: `ldk-lsp` (native/ldk-lsp), run by the supervisor.

ldk-node 0.7's Python bindings expose only the LSPS2 *client*; the service role lives in a
small Rust program on the same ldk-node release, built and installed next to the venv's
Python by scripts/build-ldk-node.sh. The supervisor starts it as a child with a pipe on its
standard input (it exits when the pipe closes, so it never outlives the devnet) and drives
it over a loopback line protocol: one request line, one JSON answer line.

The devnet's LSP sells just-in-time channels the way a real one does (bLIP-52): a client
asks for opening fee parameters, puts the LSP's intercept hop in its invoice, and the LSP
opens a channel when the first payment arrives, skimming its fee from that payment. Payers
reach it over channels it opens to them (`open_channel`), like the hub's.
"""

import asyncio
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autopilotd.devnet.buildcache import BinaryNotFound
from autopilotd.devnet.ldk import ChainSource
from autopilotd.loopback import LOOPBACK

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


class LspError(RuntimeError):
    """The LSP refused a request or is not running (the message says which)."""


@dataclass(frozen=True)
class LspTerms:
    """What the devnet's LSP charges and accepts for a just-in-time channel.

    A job pays tens of sats, but LDK will not open a channel under 1,000 sats, and a channel
    the size of one payment would leave no room for the next. The devnet's LSP therefore
    over-provisions: the channel it opens is `over_provisioning_ppm` / 1e6 times the
    forwarded amount larger (4,000x: a 20-sat payment opens an 80,020-sat channel), and it
    takes payments only up to `max_payment_msat`, so a channel never outgrows its funds.
    """

    fee_ppm: int = 10_000  # 1 % of the payment
    min_fee_msat: int = 2_000  # at least 2 sats
    over_provisioning_ppm: int = 4_000_000_000
    min_payment_msat: int = 10_000  # 10 sats
    max_payment_msat: int = 1_000_000  # 1,000 sats
    token: str | None = None
    client_trusts_lsp: bool = False

    def argv(self) -> list[str]:
        out = [
            "--fee-ppm",
            str(self.fee_ppm),
            "--min-fee-msat",
            str(self.min_fee_msat),
            "--over-provisioning-ppm",
            str(self.over_provisioning_ppm),
            "--min-payment-msat",
            str(self.min_payment_msat),
            "--max-payment-msat",
            str(self.max_payment_msat),
        ]
        if self.token:
            out += ["--token", self.token]
        if self.client_trusts_lsp:
            out.append("--client-trusts-lsp")
        return out


def find_lsp_bin() -> Path:
    """`ldk-lsp`, installed next to this Python by scripts/build-ldk-node.sh."""
    candidate = Path(sys.executable).parent / "ldk-lsp"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    raise BinaryNotFound(
        f"ldk-lsp not found in {candidate.parent}: run scripts/build-ldk-node.sh {sys.executable}"
    )


class LspProcess:
    """The running `ldk-lsp` child and its control port."""

    def __init__(
        self,
        storage_dir: Path,
        listen_port: int,
        control_port: int,
        chain: ChainSource,
        terms: LspTerms,
    ) -> None:
        self._storage_dir = storage_dir
        self._listen_port = listen_port
        self._control_port = control_port
        self._chain = chain
        self.terms = terms
        self._process: asyncio.subprocess.Process | None = None
        self.node_id = ""

    @property
    def address(self) -> str:
        """The LSP's P2P address (loopback)."""
        return f"{LOOPBACK}:{self._listen_port}"

    async def start(self) -> None:
        """Start the node; returns once it answers on its control port."""
        self._storage_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        chain = self._chain
        log = (self._storage_dir / "ldk-lsp.stderr").open("ab")
        try:
            self._process = await asyncio.create_subprocess_exec(
                str(find_lsp_bin()),
                "--storage",
                str(self._storage_dir),
                "--listen",
                str(self._listen_port),
                "--control",
                str(self._control_port),
                "--rpc",
                f"{chain.host}:{chain.port}",
                "--rpc-user",
                chain.user,
                "--rpc-password",
                chain.password,
                *self.terms.argv(),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )
        finally:
            log.close()
        assert self._process.stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                line = await self._process.stdout.readline()
        except TimeoutError:
            await self.stop()
            raise LspError("ldk-lsp did not start in time") from None
        if not line:
            code = await self._process.wait()
            raise LspError(f"ldk-lsp exited with {code}; see {self._storage_dir}/ldk-lsp.stderr")
        self.node_id = str(json.loads(line)["node_id"])
        logger.info("LSP node %s listening on %s", self.node_id, self.address)

    async def stop(self) -> None:
        """Stop the node cleanly (closing its stdin); kill it if it does not go."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await process.wait()
        except TimeoutError:
            logger.warning("ldk-lsp did not stop; killing it")
            process.kill()
            await process.wait()
        logger.info("LSP node stopped")

    async def request(self, line: str) -> dict[str, Any]:
        """Send one request line; the answer's fields, or LspError with the node's reason."""
        if self._process is None or self._process.returncode is not None:
            raise LspError("the LSP is not running")
        reader, writer = await asyncio.open_connection(LOOPBACK, self._control_port)
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            answer: dict[str, Any] = json.loads(await reader.readline())
        finally:
            writer.close()
        if not answer.pop("ok", False):
            raise LspError(f"{line.split()[0]}: {answer.get('error', 'failed')}")
        return answer

    async def sync(self) -> None:
        await self.request("sync")

    async def new_onchain_address(self) -> str:
        return str((await self.request("address"))["address"])

    async def balances(self) -> dict[str, int]:
        answer = await self.request("balances")
        return {
            "total_onchain_sats": answer["onchain_sats"],
            "spendable_onchain_sats": answer["spendable_onchain_sats"],
            "lightning_sats": answer["lightning_sats"],
        }

    async def channels(self) -> list[dict[str, Any]]:
        channels: list[dict[str, Any]] = (await self.request("channels"))["channels"]
        return channels

    async def open_channel(self, node_id: str, address: str, sats: int, push_sats: int) -> str:
        """Ask the node to open a channel; returns its user channel id."""
        answer = await self.request(f"open {node_id} {address} {sats} {push_sats * 1000}")
        return str(answer["user_channel_id"])
