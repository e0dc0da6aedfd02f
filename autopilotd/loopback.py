"""Loopback addresses and free ports, chosen at run time (the daemon, devnet and relay)."""

import socket

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on `host` (loopback) that nothing listens on right now.

    The kernel picks it; there is a small window before the caller binds it, which is
    acceptable for local services and avoids fixed ports that collide between parallel runs.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
