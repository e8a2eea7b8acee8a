"""The UDP socket under the DTLS server: binding, buffers, a batched reader, sending.

Knows nothing of DTLS: datagrams in (to one callback), datagrams out.
(asyncio's datagram transport allocates a 256 KiB buffer per datagram and
wakes the loop once per datagram; this reads a batch per wake-up into one
reused buffer.)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any

from ..budget import host_of

log = logging.getLogger("coapdev.dtls")

#: Receive buffer: a DTLS record of tinydtls is at most 1400 bytes.
RECEIVE_BYTES = 4096
#: Datagrams read per wake-up before other work gets a turn.
READ_BATCH = 64


class DatagramSocket:
    """One non-blocking UDP socket read by the event loop once :meth:`start` named
    who gets every datagram (``on_datagram(data, addr)``; what it raises is
    logged, never re-raised)."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self._sock: socket.socket | None = sock
        self._loop = loop
        self._on_datagram: Callable[[bytes, Any], None] = lambda data, addr: None
        self._stats: collections.Counter = collections.Counter()
        self._buffer = bytearray(RECEIVE_BYTES)
        self._view = memoryview(self._buffer)
        self.family = sock.family
        bound = sock.getsockname()
        self.port: int = bound[1]
        shown = bound[0] if ":" not in bound[0] else f"[{bound[0]}]"
        self.hostinfo_local = f"{shown}:{self.port}"

    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        receive_buffer_bytes: int,
        loop: asyncio.AbstractEventLoop,
    ) -> DatagramSocket:
        sock = bind(host, port)
        set_buffers(sock, receive_buffer_bytes)
        return cls(sock, loop)

    def start(self, on_datagram: Callable[[bytes, Any], None], stats: collections.Counter) -> None:
        """Read from now on; drops (send buffer full) are counted in ``stats``."""
        self._on_datagram = on_datagram
        self._stats = stats
        if self._sock is not None:
            self._loop.add_reader(self._sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        """Read what is waiting, up to a batch, straight into the reused buffer."""
        sock = self._sock
        if sock is None:
            return
        view = self._view
        on_datagram = self._on_datagram
        for _ in range(READ_BATCH):
            try:
                size, addr = sock.recvfrom_into(self._buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP errors reported on the socket
                log.debug("socket error: %s", exc)
                continue
            try:
                on_datagram(bytes(view[:size]), addr)
            except Exception:  # one datagram must never stop the server
                log.exception("handling a datagram from %s failed", host_of(addr))

    def send(self, data: bytes, sockaddr: Any) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sock.sendto(data, sockaddr)
        except (BlockingIOError, InterruptedError):
            self._stats["dropped-send-buffer-full"] += 1
        except OSError as exc:
            log.debug("sending to %s failed: %s", host_of(sockaddr), exc)

    def close(self) -> None:
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None


def bind(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket; ``::`` (or "" or "*") serves IPv4 and IPv6."""
    if host in ("", "::", "*"):
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address: tuple = ("::", port)
    else:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.setblocking(False)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def set_buffers(sock: socket.socket, size: int) -> None:
    """Large socket buffers; as root past the system maximum (the ...FORCE options)."""
    for plain, forced in (("SO_RCVBUF", "SO_RCVBUFFORCE"), ("SO_SNDBUF", "SO_SNDBUFFORCE")):
        force = getattr(socket, forced, None)
        if force is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, size)
                continue
            except OSError:
                pass
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, getattr(socket, plain), size)
