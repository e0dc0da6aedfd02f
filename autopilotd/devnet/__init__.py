"""The offline regtest network: btcd, a bitcoind-compatible shim and a hub Lightning node.

Everything on it is real Bitcoin and real Lightning; only the chain is regtest. Use
`Devnet` (an async context manager) from Python, or `autopilotd devnet ...` from a shell.
"""

from autopilotd.devnet.client import DevnetClient, DevnetError
from autopilotd.devnet.network import Devnet
from autopilotd.devnet.state import DevnetInfo

__all__ = ["Devnet", "DevnetClient", "DevnetError", "DevnetInfo"]
