"""What onboarding yields: the identity, key and addresses for one device."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace

from ..const import KeyFormat
from ..errors import ClientError
from .address import DeviceAddress, parse_address


@dataclass
class Credentials:
    """What onboarding yields: everything needed to talk to one device."""

    device_id: str
    address: DeviceAddress
    identity: str
    key: bytes
    client_id: str = ""
    name: str = ""
    role: str = ""
    key_format: KeyFormat = KeyFormat.BYTES
    onboarded: float = field(default_factory=time.time)
    #: The device's own name (as advertised over mDNS), if known.
    device_name: str = ""
    #: Other ``host:port`` spellings the device is known at: the address it
    #: was onboarded with, and addresses it answered from after it moved.
    aliases: list[str] = field(default_factory=list)

    def __repr__(self) -> str:  # never print a key by accident
        return (
            f"Credentials(device_id={self.device_id!r}, address={self.address}, "
            f"identity={self.identity!r}, name={self.name!r}, role={self.role!r})"
        )

    def known_at(self) -> list[DeviceAddress]:
        """Every address this device is known at, the current one first."""
        seen = [self.address]
        for alias in self.aliases:
            with contextlib.suppress(ClientError):
                address, _ = parse_address(alias)
                if address not in seen:
                    seen.append(address)
        return seen

    def with_alias(self, address: DeviceAddress) -> Credentials:
        """A copy that also remembers ``address``."""
        aliases = list(self.aliases)
        if address != self.address and address.hostinfo not in aliases:
            aliases.append(address.hostinfo)
        return replace(self, aliases=aliases)
