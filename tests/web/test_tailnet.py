"""Tailnet Status reads `tailscale status --json`, and says so when it cannot."""

from __future__ import annotations

import json
from pathlib import Path

from autopilotd.web import tailnet

STATUS = {
    "BackendState": "Running",
    "Self": {
        "HostName": "box",
        "DNSName": "box.tail1.ts.net.",
        "OS": "linux",
        "TailscaleIPs": ["100.64.0.1"],
        "Online": True,
    },
    "Peer": {
        "k1": {
            "HostName": "<b>laptop</b>",
            "DNSName": "laptop.tail1.ts.net.",
            "OS": "macOS",
            "TailscaleIPs": ["100.64.0.2"],
            "Online": False,
        }
    },
}


def _fake(tmp_path: Path, body: str) -> str:
    path = tmp_path / "tailscale"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


async def test_devices_from_status_json(tmp_path: Path) -> None:
    binary = _fake(tmp_path, f"cat <<'EOF'\n{json.dumps(STATUS)}\nEOF")
    result = await tailnet.tailnet_status(binary)
    assert result["installed"] and result["error"] is None
    assert result["backend_state"] == "Running"
    assert [(d["name"], d["self"], d["online"]) for d in result["devices"]] == [
        ("box", True, True),
        ("<b>laptop</b>", False, False),
    ]
    assert result["devices"][0]["dns_name"] == "box.tail1.ts.net"


async def test_not_installed_fails_and_hangs_are_said_in_words(tmp_path: Path) -> None:
    missing = await tailnet.tailnet_status(str(tmp_path / "no-such-tailscale"))
    assert missing == {"installed": False, "error": None, "backend_state": None, "devices": []}
    failing = await tailnet.tailnet_status(_fake(tmp_path, "exit 1"))
    assert "exited with code 1" in failing["error"]
    garbage = await tailnet.tailnet_status(_fake(tmp_path, "echo not json"))
    assert "not JSON" in garbage["error"]
    hung = await tailnet.tailnet_status(_fake(tmp_path, "exec sleep 30"), timeout_s=0.2)
    assert "did not answer" in hung["error"]
