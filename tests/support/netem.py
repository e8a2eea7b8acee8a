"""A UDP relay on loopback that can cut the network: a test's stand-in for a flaky link.

Clients talk to ``proxy.port``; each client source address gets its own
upstream socket to the real server, so the server sees one peer per client
(as it would through a NAT).  ``block()`` drops every datagram in both
directions until ``unblock()``.  Runs in the test's event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay, client_addr: Any) -> None:
        self.relay = relay
        self.client_addr = client_addr
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        relay = self.relay
        if relay.blocked:
            relay.dropped += 1
            return
        if relay.front is not None:
            relay.front.sendto(data, self.client_addr)

    def error_received(self, exc: Exception) -> None:
        pass


class UdpRelay(asyncio.DatagramProtocol):
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.front: asyncio.DatagramTransport | None = None
        self.port = 0
        self.blocked = False
        self.dropped = 0
        self.relayed = 0
        self._upstreams: dict[Any, _Upstream] = {}
        self._pending: dict[Any, list[bytes]] = {}

    @classmethod
    async def start(cls, target: tuple[str, int], host: str = "127.0.0.1") -> UdpRelay:
        loop = asyncio.get_running_loop()
        relay = cls(target)
        await loop.create_datagram_endpoint(lambda: relay, local_addr=(host, 0))
        return relay

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.front = transport  # type: ignore[assignment]
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.blocked:
            self.dropped += 1
            return
        self.relayed += 1
        upstream = self._upstreams.get(addr)
        if upstream is not None and upstream.transport is not None:
            upstream.transport.sendto(data)
            return
        if addr in self._pending:
            self._pending[addr].append(data)
            return
        self._pending[addr] = [data]
        asyncio.get_running_loop().create_task(self._connect(addr))

    async def _connect(self, addr: Any) -> None:
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_datagram_endpoint(
            lambda: _Upstream(self, addr), remote_addr=self.target
        )
        self._upstreams[addr] = upstream
        for data in self._pending.pop(addr, []):
            upstream.transport.sendto(data)

    def error_received(self, exc: Exception) -> None:
        pass

    def block(self) -> None:
        self.blocked = True

    def unblock(self) -> None:
        self.blocked = False

    def close(self) -> None:
        for upstream in self._upstreams.values():
            if upstream.transport is not None:
                upstream.transport.close()
        self._upstreams.clear()
        if self.front is not None:
            self.front.close()
            self.front = None
