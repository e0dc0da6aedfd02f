"""Render, install and inspect the user service for the current platform.

The files in the repository's `systemd/` and `launchd/` folders are renderings of these
functions with example paths; a test keeps them identical, so the documented unit is the one
that gets installed.
"""

from __future__ import annotations

import os
import plistlib
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

SYSTEMD_UNIT_NAME = "autopilotd.service"
LAUNCHD_LABEL = "dev.autopilotd.daemon"
EXIT_REFUSED_TO_START = 78


def render_systemd_unit(exec_path: str, home: str | None = None) -> str:
    """A systemd user unit. Each hardening line says why it is there."""
    command = f"{exec_path} run" + (f" --home {shlex.quote(home)}" if home else "")
    writable = (
        [home]
        if home
        else ["%h/.config/autopilotd", "%h/.local/share/autopilotd", "%h/.local/state/autopilotd"]
    )
    return "\n".join(
        [
            "# autopilotd as a systemd user service: `autopilotd service install` writes this file",
            "# to ~/.config/systemd/user/ and enables it. See systemd/README.md.",
            "[Unit]",
            "Description=autopilotd: sell local compute on Nostr, get paid over Lightning",
            "After=network-online.target",
            "Wants=network-online.target",
            "",
            "[Service]",
            "# READY=1 is sent only after the control plane is bound and the manifest is written.",
            "Type=notify",
            "NotifyAccess=main",
            f"ExecStart={command}",
            "# Restart after a crash, but not when it refused to start (bad config or database):",
            "# restarting would not fix that, and the reason is in the journal.",
            "Restart=on-failure",
            "RestartSec=5s",
            f"RestartPreventExitStatus={EXIT_REFUSED_TO_START}",
            "# Services get this long to stop after SIGTERM before systemd kills them.",
            "TimeoutStopSec=30s",
            "# The manifest (with the control token) lives in a private runtime directory.",
            "RuntimeDirectory=autopilotd",
            "RuntimeDirectoryMode=0700",
            "# Files the daemon creates are private to the user (seed, ledger, manifest, logs).",
            "UMask=0077",
            "# No privilege gain through setuid binaries or file capabilities.",
            "NoNewPrivileges=yes",
            "# A private /tmp: other users' processes cannot plant or read temp files.",
            "PrivateTmp=yes",
            "# The OS is read-only to the daemon; only its own directories are writable.",
            "ProtectSystem=strict",
            "ProtectHome=read-only",
            "ReadWritePaths=" + " ".join(writable),
            "# No access to physical devices (a GPU runtime, if any, runs in psionic's own unit).",
            "PrivateDevices=yes",
            "# Kernel tunables, modules, logs and cgroups are none of its business.",
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectKernelLogs=yes",
            "ProtectControlGroups=yes",
            "# Only the socket families it uses: loopback control plane, relays, Lightning peers.",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
            "# No new namespaces, realtime scheduling, setuid/setgid files or personality changes.",
            "RestrictNamespaces=yes",
            "RestrictRealtime=yes",
            "RestrictSUIDSGID=yes",
            "LockPersonality=yes",
            "# Only native system calls (no 32-bit compat entry points).",
            "SystemCallArchitectures=native",
            "",
            "[Install]",
            "WantedBy=default.target",
            "",
        ]
    )


def render_launchd_plist(exec_path: str, user_home: str, home: str | None = None) -> bytes:
    """A launchd agent: started at login, kept alive after a crash, logs in ~/Library/Logs."""
    args = [exec_path, "run"] + (["--home", home] if home else [])
    logs = f"{user_home}/Library/Logs/autopilotd"
    plist = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": args,
        "RunAtLoad": True,
        # Restart after a crash, not after a clean stop or a refusal to start.
        "KeepAlive": {"SuccessfulExit": False, "Crashed": True},
        "ThrottleInterval": 10,
        "ProcessType": "Background",
        "Umask": 0o077,
        "StandardOutPath": f"{logs}/autopilotd.out.log",
        "StandardErrorPath": f"{logs}/autopilotd.err.log",
    }
    return plistlib.dumps(plist, sort_keys=True)


def _executable() -> str:
    beside = Path(sys.executable).parent / "autopilotd"
    if beside.exists():
        return str(beside)
    found = shutil.which("autopilotd")
    if found:
        return found
    return str(Path(sys.argv[0]).resolve())


def _run(cmd: list[str], dry_run: bool) -> int:
    print("$ " + " ".join(shlex.quote(c) for c in cmd))
    if dry_run:
        return 0
    if shutil.which(cmd[0]) is None:
        print(f"  ({cmd[0]} is not available here; skipped)")
        return 0
    return subprocess.run(cmd, check=False).returncode


def unit_path() -> Path:
    if sys.platform == "darwin":
        return Path.home() / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user" / SYSTEMD_UNIT_NAME


def render_for_platform(home: str | None) -> bytes:
    home = str(Path(home).expanduser().resolve()) if home else None
    if sys.platform == "darwin":
        return render_launchd_plist(_executable(), str(Path.home()), home)
    return render_systemd_unit(_executable(), home).encode()


def service_main(action: str, *, home: str | None, dry_run: bool) -> int:
    """`autopilotd service install | uninstall | status | print`; says what it does."""
    path = unit_path()
    darwin = sys.platform == "darwin"
    if action == "print":
        sys.stdout.write(render_for_platform(home).decode())
        return 0
    if action == "install":
        content = render_for_platform(home)
        print(f"writing {path}")
        if not dry_run:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            if darwin:
                (Path.home() / "Library" / "Logs" / "autopilotd").mkdir(parents=True, exist_ok=True)
        if darwin:
            return _run(["launchctl", "bootstrap", f"gui/{os.getuid()}", str(path)], dry_run)
        rc = _run(["systemctl", "--user", "daemon-reload"], dry_run)
        return rc or _run(["systemctl", "--user", "enable", "--now", SYSTEMD_UNIT_NAME], dry_run)
    if action == "uninstall":
        if darwin:
            _run(["launchctl", "bootout", f"gui/{os.getuid()}/{LAUNCHD_LABEL}"], dry_run)
        else:
            _run(["systemctl", "--user", "disable", "--now", SYSTEMD_UNIT_NAME], dry_run)
        print(f"removing {path}")
        if not dry_run:
            path.unlink(missing_ok=True)
            if not darwin:
                _run(["systemctl", "--user", "daemon-reload"], dry_run)
        return 0
    # status
    print(f"unit file: {path} ({'installed' if path.exists() else 'not installed'})")
    if darwin:
        return _run(["launchctl", "print", f"gui/{os.getuid()}/{LAUNCHD_LABEL}"], dry_run)
    return _run(["systemctl", "--user", "--no-pager", "status", SYSTEMD_UNIT_NAME], dry_run)
