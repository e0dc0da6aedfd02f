"""Service units: the repo's files are what gets installed, and they are valid."""

from __future__ import annotations

import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import BIN

from autopilotd.service.units import render_launchd_plist, render_systemd_unit

ROOT = Path(__file__).resolve().parents[2]


def test_repository_units_match_the_renderers() -> None:
    assert (ROOT / "systemd" / "autopilotd.service").read_text() == render_systemd_unit(
        "%h/.local/bin/autopilotd"
    )
    assert (ROOT / "launchd" / "dev.autopilotd.daemon.plist").read_bytes() == render_launchd_plist(
        "/usr/local/bin/autopilotd", "/Users/you"
    )


def test_systemd_unit_contents() -> None:
    unit = render_systemd_unit("/opt/bin/autopilotd", home="/srv/ap home")
    lines = unit.splitlines()
    for required in (
        "Type=notify",
        "Restart=on-failure",
        "RuntimeDirectory=autopilotd",
        "RuntimeDirectoryMode=0700",
        "UMask=0077",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
    ):
        assert required in lines, required
    assert "ExecStart=/opt/bin/autopilotd run --home '/srv/ap home'" in lines
    # Every hardening directive is preceded by a comment saying why.
    service = unit.split("[Service]")[1].split("[Install]")[0].strip().splitlines()
    for i, line in enumerate(service):
        if line and not line.startswith("#"):
            assert any(prev.startswith("#") for prev in service[max(0, i - 6) : i]), line


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    exe = tmp_path / "autopilotd"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    unit = tmp_path / "autopilotd.service"
    unit.write_text(render_systemd_unit(str(exe)))
    r = subprocess.run(
        ["systemd-analyze", "verify", "--user", str(unit)], capture_output=True, text=True
    )
    assert "autopilotd.service" not in r.stderr or r.returncode == 0, r.stderr


def test_launchd_plist_parses() -> None:
    plist = plistlib.loads(
        render_launchd_plist("/usr/local/bin/autopilotd", "/Users/a", "/Users/a/ap")
    )
    assert plist["Label"] == "dev.autopilotd.daemon"
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False, "Crashed": True}
    assert plist["ProgramArguments"] == [
        "/usr/local/bin/autopilotd",
        "run",
        "--home",
        "/Users/a/ap",
    ]
    assert plist["StandardErrorPath"].startswith("/Users/a/Library/Logs/autopilotd/")
    assert plist["Umask"] == 0o077


def test_install_and_uninstall_say_what_they_do(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "PATH": "/nonexistent"}
    cmd = [sys.executable, "-m", "autopilotd", "service"]
    r = subprocess.run([*cmd, "install", "--dry-run"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "systemctl --user enable --now autopilotd.service" in r.stdout
    assert not (tmp_path / "cfg" / "systemd" / "user" / "autopilotd.service").exists()
    r = subprocess.run(
        [*cmd, "install", "--home", str(tmp_path / "h")], capture_output=True, text=True, env=env
    )
    unit = tmp_path / "cfg" / "systemd" / "user" / "autopilotd.service"
    assert r.returncode == 0 and unit.exists(), r.stdout + r.stderr
    assert f"--home {tmp_path / 'h'}" in unit.read_text()
    assert str(BIN / "autopilotd") in unit.read_text()
    r = subprocess.run([*cmd, "status"], capture_output=True, text=True, env=env)
    assert "installed" in r.stdout
    r = subprocess.run([*cmd, "uninstall"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and not unit.exists()
