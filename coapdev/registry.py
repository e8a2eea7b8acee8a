"""The user's known devices and their credentials: one file, mode 0600, keyed by device id.

Location: ``$COAPDEV_CONFIG_DIR/devices.json`` if set, else the platform's
user config directory (``~/.config/coapdev/devices.json`` on Linux).

A device is found by its id, its name (as advertised over mDNS when it was
onboarded), or any address it is known at: the one it was onboarded with,
addresses it answered from since, and whatever a host name given resolves
to.  Next to the credentials, ``handshake-failures.json`` remembers (for
``HANDSHAKE_FAILURE_MEMORY_S``) which addresses recently refused a
handshake, so silence from one can be explained as likely rate limiting.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import locked, write_atomic
from .client.address import DeviceAddress, parse_address
from .client.credentials import Credentials
from .client.locate import following_client
from .client.response import escape_text
from .client.session import Client
from .const import KeyFormat
from .errors import ClientError, CorruptStateFile, DeviceTimeout, HandshakeFailed, UnknownDevice

SCHEMA_VERSION = 1
FILE_NAME = "devices.json"
FAILURES_FILE_NAME = "handshake-failures.json"
#: How long a failed handshake is remembered (a gateway's handshake limiter
#: refills one attempt per minute by default; ten minutes covers its burst).
HANDSHAKE_FAILURE_MEMORY_S = 600.0
#: Addresses remembered at most (oldest forgotten first).
MAX_REMEMBERED_FAILURES = 64


class NoKnownDevice(UnknownDevice):
    """No device is known at all: none was onboarded from here yet."""


class SeveralKnownDevices(UnknownDevice):
    """A device must be named: more than one is known."""

    def __init__(self, device_ids: list[str]) -> None:
        super().__init__(f"several devices are known ({', '.join(device_ids)}); name one")
        self.device_ids = device_ids


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
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise CorruptStateFile(
                self.path, f"cannot read known devices: {exc.strerror or exc}"
            ) from None
        try:
            doc = json.loads(raw)
            if doc.get("schema") != SCHEMA_VERSION:
                raise ValueError(f"schema {doc.get('schema')!r} is not {SCHEMA_VERSION}")
            return {dev_id: _decode(dev_id, entry) for dev_id, entry in doc["devices"].items()}
        except (ValueError, KeyError, TypeError, AttributeError, ClientError) as exc:
            raise CorruptStateFile(self.path, f"cannot read known devices: {exc}") from None

    def save(self, credentials: Credentials) -> None:
        """Add or replace one device's credentials (atomically, mode 0600).

        Until the new file is in place the old one, with the credentials it
        held, stays as it was.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            with locked(self.directory / ".lock"):
                devices = self.load()
                devices[credentials.device_id] = credentials
                self._write(devices)
        except OSError as exc:
            raise ClientError(
                f"cannot save credentials in {self.directory}: {exc.strerror or exc}"
            ) from None

    def check_writable(self) -> None:
        """Raise unless credentials can be saved here (before minting any)."""
        probe = self.directory / f".write-test.{os.getpid()}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                self.load()  # a file that cannot be read cannot be updated either
            except CorruptStateFile as exc:
                raise ClientError(f"cannot save credentials in {self.directory}: {exc}") from None
            with locked(self.directory / ".lock"):
                fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.close(fd)
                os.unlink(probe)
                if self.path.exists() and not os.access(self.path, os.W_OK):
                    raise PermissionError(13, "Permission denied", str(self.path))
        except OSError as exc:
            raise ClientError(
                f"cannot save credentials in {self.directory}: {exc.strerror or exc}"
            ) from None

    def forget(self, device_id: str) -> None:
        try:
            with locked(self.directory / ".lock"):
                devices = self.load()
                devices.pop(device_id, None)
                self._write(devices)
        except OSError as exc:
            raise ClientError(f"cannot update {self.path}: {exc.strerror or exc}") from None

    def _write(self, devices: dict[str, Credentials]) -> None:
        doc = {
            "schema": SCHEMA_VERSION,
            "devices": {dev_id: _encode(c) for dev_id, c in sorted(devices.items())},
        }
        write_atomic(self.path, json.dumps(doc, indent=1).encode() + b"\n")

    def resolve(self, ref: str) -> Credentials:
        """Credentials for a device id, its name, or any address it is known at."""
        devices = self.load()
        found = self._find(devices, ref)
        if found is not None:
            return found
        known = ", ".join(_label(c) for c in devices.values()) or "none (onboard one first)"
        raise UnknownDevice(
            f"no credentials for device {escape_text(ref)!r}; known devices: {known}"
        )

    def only_device(self) -> Credentials:
        """The one known device's credentials, for requests that name none.

        Raises :class:`NoKnownDevice` or :class:`SeveralKnownDevices` (both
        :class:`UnknownDevice`) so a caller can add its own hint.
        """
        devices = self.load()
        if len(devices) == 1:
            return next(iter(devices.values()))
        if not devices:
            raise NoKnownDevice("no known devices; onboard one first")
        raise SeveralKnownDevices(sorted(devices))

    def credentials_for(self, ref: str | None) -> Credentials:
        """Credentials for a device reference (id, name, address), or the only device."""
        return self.resolve(ref) if ref else self.only_device()

    def target(self, uri: str) -> tuple[Credentials, str]:
        """(credentials, path) for a URI as a user types it.

        ``coaps://DEVICE/PATH`` and ``DEVICE/PATH`` name a known device by id,
        name or address; ``/PATH`` means the only known device.
        """
        if uri.startswith("/"):
            return self.only_device(), uri
        if "://" in uri:
            try:
                _, path = parse_address(uri)
            except ClientError:
                raise UnknownDevice(f"{escape_text(uri)}: not a URI or known device") from None
            authority = uri.split("://", 1)[1].split("/", 1)[0]
            return self.resolve(authority), path
        head, _, rest = uri.partition("/")
        return self.resolve(head), "/" + rest

    def client(
        self,
        credentials: Credentials,
        *,
        on_moved: Callable[[Credentials], None] | None = None,
        **kwargs: Any,
    ) -> Client:
        """A Client that finds the device again by id if it moved, and saves the new address.

        ``on_moved(new)`` hears of a move before it is saved; ``kwargs`` are
        the Client's other options.
        """
        return following_client(credentials, save=self.save, on_moved=on_moved, **kwargs)

    @contextlib.contextmanager
    def remembering_handshakes(self, address: DeviceAddress) -> Iterator[None]:
        """Remember a refused handshake with ``address``; explain silence that follows one.

        A device that refused our handshake may then rate-limit this address:
        its silence is not "unreachable", and the error says so.
        """
        try:
            yield
        except HandshakeFailed:
            self.note_handshake_failure(address)
            raise
        except DeviceTimeout as exc:
            if self.recent_handshake_failure(address):
                raise type(exc)(
                    f"{exc} — the device may be rate-limiting this address "
                    "(a handshake from here failed recently)"
                ) from None
            raise

    def find(self, ref: str) -> Credentials | None:
        """Like :meth:`resolve`, but None when nothing matches."""
        return self._find(self.load(), ref)

    def _find(self, devices: dict[str, Credentials], ref: str) -> Credentials | None:
        text = ref.strip()
        if not text:
            return None
        if text in devices:
            return devices[text]
        upper = text.upper()
        if upper in devices:
            return devices[upper]
        folded = _name_key(text)
        named = [
            c for c in devices.values() if c.device_name and _name_key(c.device_name) == folded
        ]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            ids = ", ".join(c.device_id for c in named)
            raise UnknownDevice(f"several known devices are named {escape_text(text)!r}: {ids}")
        try:
            address, _ = parse_address(text)
        except ClientError:
            return None
        matches = self.known_at(address, devices)
        if len(matches) > 1:
            ids = ", ".join(c.device_id for c in matches)
            raise UnknownDevice(f"several known devices at {address}: {ids}; name one by id")
        return matches[0] if matches else None

    def known_at(
        self, address: DeviceAddress, devices: dict[str, Credentials] | None = None
    ) -> list[Credentials]:
        """Known devices reachable at ``address``: spelled alike, or resolving alike."""
        devices = self.load() if devices is None else devices
        exact = [c for c in devices.values() if address in c.known_at()]
        if exact:
            return exact
        wanted = _resolved(address)
        if not wanted:
            return []
        return [
            c for c in devices.values() if any(wanted & _resolved(known) for known in c.known_at())
        ]

    # --- recent handshake failures (no secrets: addresses and times only) ---

    @property
    def _failures_path(self) -> Path:
        return self.directory / FAILURES_FILE_NAME

    def _failures(self) -> dict[str, float]:
        try:
            doc = json.loads(self._failures_path.read_bytes())
            return {str(k): float(v) for k, v in doc.items()}
        except (OSError, ValueError, TypeError, AttributeError):
            return {}

    def note_handshake_failure(self, address: DeviceAddress, now: float | None = None) -> None:
        """Remember that ``address`` just refused our handshake (best effort)."""
        now = time.time() if now is None else now
        failures = {
            k: v for k, v in self._failures().items() if now - v < HANDSHAKE_FAILURE_MEMORY_S
        }
        failures[address.hostinfo] = now
        newest = sorted(failures.items(), key=lambda kv: kv[1])[-MAX_REMEMBERED_FAILURES:]
        with contextlib.suppress(OSError):
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(self._failures_path, json.dumps(dict(newest)).encode())

    def recent_handshake_failure(self, address: DeviceAddress, now: float | None = None) -> bool:
        """Did ``address`` refuse a handshake from here within the memory span?"""
        now = time.time() if now is None else now
        when = self._failures().get(address.hostinfo)
        return when is not None and now - when < HANDSHAKE_FAILURE_MEMORY_S


def _label(c: Credentials) -> str:
    return f"{c.device_id} ({escape_text(c.device_name)})" if c.device_name else c.device_id


def _name_key(name: str) -> str:
    return name.strip().rstrip(".").removesuffix(".local").lower()


def _resolved(address: DeviceAddress) -> set[tuple[str, int]]:
    """(ip, port) pairs ``address`` stands for; a name is looked up (empty if unknown)."""
    if address.is_literal:
        return {(address.host.split("%", 1)[0], address.port)}
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_DGRAM)
    except OSError:
        return set()
    return {(str(info[4][0]), address.port) for info in infos}


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
        "device-name": c.device_name,
        "aliases": list(c.aliases),
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
        device_name=str(entry.get("device-name", "")),
        aliases=[str(a) for a in entry.get("aliases", [])],
    )
