"""Loopback UDP ports: a free one, and whether one is taken."""

from __future__ import annotations

import socket
from pathlib import Path


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_udp_port(host: str = "127.0.0.1", *, pair: bool = False) -> int:
    """A UDP port free on ``host`` (IPv4 or IPv6 by its spelling).

    With ``pair``, one whose successor is free too (servers that bind two ports).
    """
    family = _family(host)
    for _ in range(200):
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
            if not pair:
                return port
            if port >= 65535:
                continue
            if not udp_port_in_use(host, port + 1):
                return port
    raise RuntimeError(f"no free UDP port found on {host}")


def udp_port_in_use(host: str, port: int) -> bool:
    """Whether ``host:port`` cannot be bound (a probe: for a port nobody is about to take)."""
    with socket.socket(_family(host), socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def udp_port_bound(port: int) -> bool:
    """Whether any socket has UDP ``port`` bound, read from /proc.

    Unlike :func:`udp_port_in_use` this never binds, so it cannot steal the port
    from a server that is about to bind it.
    """
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 1 and int(parts[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False
