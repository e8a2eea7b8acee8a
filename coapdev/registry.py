"""The user's known devices and their credentials: one file, mode 0600, keyed by device id.

Location: ``$COAPDEV_CONFIG_DIR/devices.json`` if set, else the platform's
user config directory (``~/.config/coapdev/devices.json`` on Linux).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import locked, write_atomic
from .client import Credentials, DeviceAddress, parse_address
from .const import KeyFormat
from .errors import ClientError, CorruptStateFile, UnknownDevice

SCHEMA_VERSION = 1
FILE_NAME = "devices.json"


def default_config_dir() -> Path:
    env = os.environ.get("COAPDEV_CONFIG_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_config_dir("coapdev"))


@dataclass
class DeviceRegistry:
    directory: Path

    @classmethod
    def default(cls) -> DeviceRegistry:
        return cls(default_config_dir())

    @property
    def path(self) -> Path:
        return self.directory / FILE_NAME

    def load(self) -> dict[str, Credentials]:
        if not self.path.exists():
            return {}
        try:
            doc = json.loads(self.path.read_bytes())
            if doc.get("schema") != SCHEMA_VERSION:
                raise ValueError(f"schema {doc.get('schema')!r} is not {SCHEMA_VERSION}")
            return {dev_id: _decode(dev_id, entry) for dev_id, entry in doc["devices"].items()}
        except (ValueError, KeyError, TypeError, AttributeError, ClientError) as exc:
            raise CorruptStateFile(self.path, f"cannot read known devices: {exc}") from None

    def save(self, credentials: Credentials) -> None:
        """Add or replace one device's credentials (atomically, mode 0600)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with locked(self.directory / ".lock"):
            devices = self.load()
            devices[credentials.device_id] = credentials
            self._write(devices)

    def forget(self, device_id: str) -> None:
        with locked(self.directory / ".lock"):
            devices = self.load()
            devices.pop(device_id, None)
            self._write(devices)

    def _write(self, devices: dict[str, Credentials]) -> None:
        doc = {
            "schema": SCHEMA_VERSION,
            "devices": {dev_id: _encode(c) for dev_id, c in sorted(devices.items())},
        }
        write_atomic(self.path, json.dumps(doc, indent=1).encode() + b"\n")

    def resolve(self, ref: str) -> Credentials:
        """Credentials for a device id, a client-chosen device alias, or an address."""
        devices = self.load()
        if ref in devices:
            return devices[ref]
        upper = ref.upper()
        if upper in devices:
            return devices[upper]
        try:
            address, _ = parse_address(ref)
        except ClientError:
            address = None
        if address is not None:
            matches = [c for c in devices.values() if c.address == address]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                ids = ", ".join(c.device_id for c in matches)
                raise UnknownDevice(f"several known devices at {address}: {ids}; name one by id")
        known = ", ".join(sorted(devices)) or "none (onboard one first)"
        raise UnknownDevice(f"no credentials for device {ref!r}; known devices: {known}")


def _encode(c: Credentials) -> dict[str, Any]:
    return {
        "address": c.address.hostinfo,
        "identity": c.identity,
        "key": c.key.hex(),
        "key-format": c.key_format.value,
        "client-id": c.client_id,
        "name": c.name,
        "role": c.role,
        "onboarded": c.onboarded,
    }


def _decode(device_id: str, entry: dict[str, Any]) -> Credentials:
    address, _ = parse_address(entry["address"])
    return Credentials(
        device_id=device_id,
        address=DeviceAddress(address.host, address.port),
        identity=str(entry["identity"]),
        key=bytes.fromhex(entry["key"]),
        client_id=str(entry.get("client-id", "")),
        name=str(entry.get("name", "")),
        role=str(entry.get("role", "")),
        key_format=KeyFormat(entry.get("key-format", "bytes")),
        onboarded=float(entry.get("onboarded", 0.0)),
    )
