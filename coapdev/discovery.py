"""Finding devices on the local network: mDNS / DNS-SD (zeroconf).

A gateway advertises ``<name>._coaps._udp.local.`` with TXT records: ``id``
(device id), ``md`` (model), ``pv`` (protocol version), ``ob`` (onboarding
open: 1 or 0).  Clients browse for that type, and find a device again by its
id when its address changed.

``COAPDEV_MDNS_INTERFACES`` (comma-separated addresses, e.g. ``127.0.0.1``)
restricts both sides to those interfaces; tests use it to stay on loopback.
Without it, a gateway bound to one address announces only on the interface
that holds that address, and one bound to the wildcard address announces on
every interface and follows their addresses as they change (DHCP, an IPv4
address lost, IPv6 gained), checked every ``ADDRESS_CHECK_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .const import (
    DEVICE_MODEL,
    MDNS_SERVICE_TYPE,
    PROTOCOL_VERSION,
    TXT_DEVICE_ID,
    TXT_MODEL,
    TXT_ONBOARDING,
    TXT_PROTOCOL,
)

log = logging.getLogger("coapdev.discovery")

ENV_INTERFACES = "COAPDEV_MDNS_INTERFACES"
#: How often an advertiser on the wildcard address looks for changed addresses.
ADDRESS_CHECK_S = 2.0
_WILDCARD_HOSTS = ("", "::", "0.0.0.0", "*")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


def advertising_interfaces(host: str, explicit: list[str] | None = None) -> Any:
    """Where a gateway bound to ``host`` announces itself.

    Explicit interfaces (argument or ``COAPDEV_MDNS_INTERFACES``) win; else
    a specific address announces only on its own interface (a gateway on
    127.0.0.1 does not tell the LAN about 127.0.0.1); else every interface.
    """
    if explicit or os.environ.get(ENV_INTERFACES, "").strip():
        return _interfaces(explicit)
    if host not in _WILDCARD_HOSTS and _is_ip(host):
        return [host]
    return _interfaces(None)


def _interfaces(explicit: list[str] | None = None) -> Any:
    from zeroconf import InterfaceChoice

    if explicit:
        return explicit
    env = os.environ.get(ENV_INTERFACES, "").strip()
    if env:
        return [part.strip() for part in env.split(",") if part.strip()]
    return InterfaceChoice.All


def _ip_version(interfaces: Any) -> Any:
    from zeroconf import IPVersion

    if isinstance(interfaces, list):
        v6 = any(":" in i for i in interfaces)
        v4 = any(":" not in i for i in interfaces)
        if v4 and not v6:
            return IPVersion.V4Only
        if v6 and not v4:
            return IPVersion.V6Only
    return IPVersion.All


@dataclass
class DiscoveredDevice:
    name: str
    device_id: str
    addresses: list[str]
    port: int
    onboarding_open: bool
    model: str = ""
    protocol: str = ""

    @property
    def address(self) -> str:
        """The best address to reach it: IPv4 first, then global IPv6, then link-local."""
        return self.ranked_addresses()[0]

    def ranked_addresses(self) -> list[str]:
        """Every advertised address, best first (IPv4, global IPv6, link-local IPv6)."""

        def rank(a: str) -> tuple[int, str]:
            ip = ipaddress.ip_address(a.split("%", 1)[0])
            return (0 if ip.version == 4 else 2 if ip.is_link_local else 1, a)

        return sorted(self.addresses, key=rank)

    @property
    def hostport(self) -> str:
        host = self.address
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


@dataclass
class Advertiser:
    """Advertise one gateway; keeps the ``ob`` TXT record current; withdraws on stop."""

    name: str
    device_id: str
    port: int
    host: str = "::"
    onboarding_open: Callable[[], bool] = lambda: False
    interfaces: list[str] | None = None
    _zc: Any = None
    _info: Any = None
    _open: bool | None = None
    _addresses: list[str] = field(default_factory=list)
    _interfaces: Any = None

    def _service_info(self, onboarding: bool) -> Any:
        from zeroconf import ServiceInfo

        instance = _dns_label(self.name)
        return ServiceInfo(
            MDNS_SERVICE_TYPE,
            f"{instance}.{MDNS_SERVICE_TYPE}",
            parsed_addresses=self._addresses,
            port=self.port,
            properties={
                TXT_DEVICE_ID: self.device_id,
                TXT_MODEL: DEVICE_MODEL,
                TXT_PROTOCOL: str(PROTOCOL_VERSION),
                TXT_ONBOARDING: "1" if onboarding else "0",
            },
            server=f"{instance}.local.",
        )

    async def start(self) -> None:
        self._interfaces = advertising_interfaces(self.host, self.interfaces)
        self._addresses = _advertised_addresses(self.host, self._interfaces)
        if not self._addresses:
            if self.host in _WILDCARD_HOSTS:
                log.info("no address to advertise yet; announcing once one appears")
                return
            raise OSError("no address to advertise")
        await self._register()

    async def _register(self) -> None:
        from zeroconf.asyncio import AsyncZeroconf

        interfaces = self._interfaces
        if not isinstance(interfaces, list):
            interfaces = _interfaces(None)  # InterfaceChoice.All: enumerated anew
        self._zc = AsyncZeroconf(interfaces=interfaces, ip_version=_ip_version(interfaces))
        self._open = self.onboarding_open()
        name = self._info.name if self._info is not None else None
        self._info = self._service_info(self._open)
        if name is not None:
            self._info.name = name  # keep a name changed by conflict resolution
        await self._zc.async_register_service(self._info, allow_name_change=True)
        log.info("advertising %s on mDNS (%s)", self._info.name, ", ".join(self._addresses))

    async def follow(self, interval_s: float = 1.0) -> None:
        """Keep the announcement current: the onboarding TXT record, and (on the
        wildcard address) the addresses, re-announcing when they change."""
        loop = asyncio.get_running_loop()
        next_address_check = loop.time() + ADDRESS_CHECK_S
        while True:
            await asyncio.sleep(interval_s)
            if self.host in _WILDCARD_HOSTS and loop.time() >= next_address_check:
                next_address_check = loop.time() + ADDRESS_CHECK_S
                try:
                    await self._follow_addresses()
                except Exception as exc:  # never let mDNS trouble stop the gateway
                    log.warning("mDNS: could not re-announce: %s", exc)
            now_open = self.onboarding_open()
            if now_open != self._open and self._zc is not None:
                self._open = now_open
                info = self._service_info(now_open)
                info.name = self._info.name  # keep a name changed by conflict resolution
                self._info = info
                with contextlib.suppress(Exception):
                    await self._zc.async_update_service(info)

    async def _follow_addresses(self) -> None:
        current = _advertised_addresses(self.host, self._interfaces)
        if sorted(current) == sorted(self._addresses):
            return
        log.info(
            "addresses changed (%s -> %s): announcing again",
            ", ".join(self._addresses) or "none",
            ", ".join(current) or "none",
        )
        await self._withdraw()
        self._addresses = current
        if current:
            await self._register()

    async def _withdraw(self) -> None:
        if self._zc is None:
            return
        zc, self._zc = self._zc, None
        with contextlib.suppress(Exception):
            await zc.async_unregister_service(self._info)
        with contextlib.suppress(Exception):
            await zc.async_close()

    async def stop(self) -> None:
        await self._withdraw()


def _dns_label(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c == "-" else "-" for c in name).strip("-")
    return (cleaned or "coapdev")[:63]


def _advertised_addresses(host: str, interfaces: Any) -> list[str]:
    if host not in _WILDCARD_HOSTS:
        return [host]
    if isinstance(interfaces, list):
        return list(interfaces)
    import ifaddr

    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            address = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            parsed = ipaddress.ip_address(address)
            if parsed.is_loopback or (parsed.version == 6 and parsed.is_link_local):
                continue
            if host == "0.0.0.0" and parsed.version == 6:
                continue
            found.append(address)
    return found


async def browse(
    seconds: float = 3.0,
    *,
    interfaces: list[str] | None = None,
    stop_when: Callable[[DiscoveredDevice], bool] | None = None,
) -> list[DiscoveredDevice]:
    """Devices that answer within ``seconds`` (sooner if ``stop_when`` matches one)."""
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

    chosen = _interfaces(interfaces)
    zc = AsyncZeroconf(interfaces=chosen, ip_version=_ip_version(chosen))
    names: asyncio.Queue[str] = asyncio.Queue()

    def on_change(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        if state_change.name in ("Added", "Updated"):
            names.put_nowait(name)

    browser = AsyncServiceBrowser(zc.zeroconf, MDNS_SERVICE_TYPE, handlers=[on_change])
    found: dict[str, DiscoveredDevice] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    try:
        while (remaining := deadline - loop.time()) > 0:
            try:
                name = await asyncio.wait_for(names.get(), remaining)
            except TimeoutError:
                break
            info = AsyncServiceInfo(MDNS_SERVICE_TYPE, name)
            if not await info.async_request(zc.zeroconf, max(100, int(remaining * 1000))):
                continue
            device = _device_from(info)
            if device is None:
                continue
            found[device.device_id] = device
            if stop_when is not None and stop_when(device):
                break
    finally:
        await browser.async_cancel()
        await zc.async_close()
    return sorted(found.values(), key=lambda d: d.name)


def _device_from(info: Any) -> DiscoveredDevice | None:
    props = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in (info.properties or {}).items()
    }
    device_id = props.get(TXT_DEVICE_ID)
    addresses = info.parsed_scoped_addresses()
    if not device_id or not addresses or not info.port:
        return None
    name = info.name.removesuffix("." + MDNS_SERVICE_TYPE)
    return DiscoveredDevice(
        name=name,
        device_id=device_id,
        addresses=addresses,
        port=info.port,
        onboarding_open=props.get(TXT_ONBOARDING) == "1",
        model=props.get(TXT_MODEL) or "",
        protocol=props.get(TXT_PROTOCOL) or "",
    )


async def find(ref: str, seconds: float = 3.0) -> DiscoveredDevice | None:
    """A device by id or advertised name, as soon as it answers."""
    wanted = ref.strip().rstrip(".").lower()

    def matches(d: DiscoveredDevice) -> bool:
        return wanted in (d.device_id.lower(), d.name.lower())

    for device in await browse(seconds, stop_when=matches):
        if matches(device):
            return device
    return None


def looks_like_address(text: str) -> bool:
    """An IP literal, something with a port or scheme: no need to ask mDNS."""
    if "://" in text or text.startswith("["):
        return True
    host = text.rsplit(":", 1)[0] if text.count(":") == 1 else text
    if text.count(":") == 1:
        return True
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def can_resolve(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None)
    except OSError:
        return False
    return True
