"""Finding a device by what a user types, and a client that follows it when it moves."""

from __future__ import annotations

import asyncio
import getpass
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..const import DEFAULT_COAPS_PORT
from ..errors import UnknownDevice
from .address import DeviceAddress, parse_address
from .credentials import Credentials
from .response import escape_text
from .session import Client


def default_client_name() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "user"
    return f"{user}@{socket.gethostname()}"[:64]


@dataclass
class Located:
    """Where a device named by address, mDNS name or id was found."""

    address: DeviceAddress
    #: Known when mDNS (or a QR code) told: the device's id and advertised name.
    device_id: str = ""
    name: str = ""
    #: Every address the device advertised, best first.
    addresses: list[DeviceAddress] = field(default_factory=list)


async def locate(
    ref: str | None,
    *,
    device_id: str | None = None,
    port: int | None = None,
    timeout_s: float = 3.0,
) -> Located:
    """Find a device by ``HOST[:PORT]``, ``coaps://`` URI, mDNS name or id.

    An address is taken as it is (``port`` fills in a missing port, as a QR
    code's port does); anything else is looked up over mDNS for up to
    ``timeout_s``, then tried as a host name.  ``device_id`` (from a QR code)
    is searched for when ``ref`` is empty.
    """
    from ..discovery import can_resolve, find, looks_like_address

    if ref and looks_like_address(ref):
        address, _ = parse_address(ref)
        if port and not _has_port(ref):
            address = DeviceAddress(address.host, port)
        return Located(address)
    wanted = ref or device_id
    if not wanted:
        raise UnknownDevice("name the device: HOST[:PORT], its mDNS name or its id")
    found = await find(wanted, seconds=timeout_s)
    if found is not None:
        addresses = [DeviceAddress(a, found.port) for a in found.ranked_addresses()]
        return Located(addresses[0], found.device_id, found.name, addresses)
    if ref and await asyncio.to_thread(can_resolve, ref):
        return Located(DeviceAddress(ref, port or DEFAULT_COAPS_PORT))
    raise UnknownDevice(
        f"no device {escape_text(wanted)!r} answered on mDNS within {timeout_s:g} s "
        "(and it is not a host name); give its address"
    )


def _has_port(ref: str) -> bool:
    hostport = ref.split("://", 1)[-1].split("/", 1)[0]
    return ":" in hostport.rsplit("]", 1)[-1]


def following_client(
    credentials: Credentials,
    *,
    save: Callable[[Credentials], None],
    on_moved: Callable[[Credentials], None] | None = None,
    **kwargs: Any,
) -> Client:
    """A Client for a known device that finds it again by id when it moved.

    Once the device answered at a new address, ``on_moved(new)`` is told
    first and then ``save(new)`` keeps the new address (with the old one as
    an alias), so the next run goes straight there.  ``kwargs`` are the
    Client's other options (``timeout_s``, ``trace``, ...).
    """

    def moved(new: Credentials) -> None:
        if on_moved is not None:
            on_moved(new)
        save(new)

    return Client(credentials, rediscover=True, on_moved=moved, **kwargs)
