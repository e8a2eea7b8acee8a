"""Where a device is: an address as typed, parsed, and resolved to what to try."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

from ..const import DEFAULT_COAPS_PORT
from ..errors import ClientError, UnknownDevice


@dataclass(frozen=True, slots=True)
class DeviceAddress:
    host: str
    port: int = DEFAULT_COAPS_PORT

    @property
    def hostinfo(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def uri_base(self) -> str:
        return f"coaps://{self.hostinfo}"

    @property
    def is_literal(self) -> bool:
        """The host is an IP address (not a name to resolve)."""
        try:
            ipaddress.ip_address(self.host.split("%", 1)[0])
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return self.uri_base


def parse_address(text: str) -> tuple[DeviceAddress, str]:
    """``coaps://host[:port][/path]`` or ``host[:port][/path]`` → (address, path).

    IPv6 literals go in brackets: ``[fe80::1%eth0]:5684``.
    """
    rest = text.strip()
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        if scheme.lower() != "coaps":
            raise ClientError(f"{text}: only coaps:// is spoken here (got {scheme}://)")
    hostport, slash, path = rest.partition("/")
    path = "/" + path if slash else "/"
    host, port_text = _split_hostport(text, hostport)
    if not host:
        raise ClientError(f"{text}: no host given")
    port = DEFAULT_COAPS_PORT
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ClientError(f"{text}: invalid port {port_text!r}")
        port = int(port_text)
    return DeviceAddress(host, port), path


def _split_hostport(text: str, hostport: str) -> tuple[str, str]:
    """(host, port text) of ``host[:port]``, ``[v6][:port]`` or a bare IPv6 address."""
    if hostport.startswith("["):
        host, bracket, after = hostport[1:].partition("]")
        if not bracket:
            raise ClientError(f"{text}: unclosed '[' in IPv6 address")
        if after and not after.startswith(":"):
            raise ClientError(f"{text}: unexpected text after ']'")
        return host, after[1:]
    if hostport.count(":") > 1:
        return hostport, ""  # a bare IPv6 address
    host, _, port_text = hostport.partition(":")
    return host, port_text


async def resolve_address(address: DeviceAddress, what: str = "") -> list[DeviceAddress]:
    """The IP addresses to try for ``address``: itself if literal, else all of its name's."""
    if address.is_literal:
        return [address]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(address.host, address.port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        prefix = f"{what}: " if what else ""
        raise UnknownDevice(f"{prefix}cannot resolve {address.host}: {exc.strerror}") from None
    found: list[DeviceAddress] = []
    for family, _, _, _, sockaddr in infos:
        host = str(sockaddr[0])
        if family == socket.AF_INET6 and len(sockaddr) > 3 and sockaddr[3]:
            host = f"{host}%{sockaddr[3]}"
        candidate = DeviceAddress(host, address.port)
        if candidate not in found:
            found.append(candidate)
    return found or [address]
