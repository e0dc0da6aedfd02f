"""Tailnet status: what `tailscale status --json` says, when tailscale is installed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from typing import Any

TIMEOUT_S = 3.0
MAX_PEERS = 100


async def tailnet_status(binary: str = "tailscale", timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """Devices on this machine's tailnet, or why there are none to show."""
    path = shutil.which(binary)
    if path is None:
        return {"installed": False, "error": None, "backend_state": None, "devices": []}
    proc = await asyncio.create_subprocess_exec(
        path,
        "status",
        "--json",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, _ = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return _failed(f"tailscale did not answer within {timeout_s:g} s")
    if proc.returncode != 0:
        return _failed(f"tailscale status exited with code {proc.returncode} (is tailscaled up?)")
    try:
        data = json.loads(out)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _failed("tailscale status printed something that is not JSON")
    if not isinstance(data, dict):
        return _failed("tailscale status printed an unexpected answer")
    devices = [_device(data.get("Self"), me=True)]
    peers = data.get("Peer") or {}
    if isinstance(peers, dict):
        devices += [_device(p, me=False) for p in list(peers.values())[:MAX_PEERS]]
    return {
        "installed": True,
        "error": None,
        "backend_state": str(data.get("BackendState", "")),
        "devices": [d for d in devices if d is not None],
    }


def _failed(reason: str) -> dict[str, Any]:
    return {"installed": True, "error": reason, "backend_state": None, "devices": []}


def _device(raw: Any, *, me: bool) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    ips = raw.get("TailscaleIPs") or []
    return {
        "name": str(raw.get("HostName", "")),
        "dns_name": str(raw.get("DNSName", "")).rstrip("."),
        "os": str(raw.get("OS", "")),
        "ips": [str(ip) for ip in ips] if isinstance(ips, list) else [],
        "online": bool(raw.get("Online", False)),
        "self": me,
    }
