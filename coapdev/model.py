"""The domain model of a device's credentials: plain data, no I/O.

A device (:class:`DeviceInfo`) has a factory key and mints clients
(:class:`ClientRecord`), each with its own identity and key, and perhaps a
rotated key not yet used (:class:`PendingKey`).  A DTLS session stands for a
:class:`Credential`; a request is sent by a :class:`Principal`.  The
``validate_*`` functions are the invariants of the records' text fields; they
check untrusted input too (onboarding payloads, state files).

Keeping, indexing and persisting these records is :mod:`coapdev.store`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from . import keys
from .const import FACTORY_IDENTITY, MAX_CLIENT_NAME_CHARS, MAX_IDENTITY_BYTES, KeyFormat, Role
from .errors import InvalidValue

__all__ = [
    "ClientRecord",
    "Credential",
    "DeviceInfo",
    "KeyFormat",
    "Origin",
    "PendingKey",
    "Principal",
    "Role",
    "validate_device_id",
    "validate_identity",
    "validate_name",
]


class Origin(StrEnum):
    """Which exchange minted a client."""

    NATIVE = "native"
    TRADFRI = "tradfri"
    LOCAL = "local"


@dataclass(slots=True)
class PendingKey:
    """A rotated key handed out but not yet used; the old key works until it is."""

    identity: str
    key: bytes
    created: float


@dataclass(slots=True)
class ClientRecord:
    """One minted client.  ``id`` is stable; ``identity`` changes when it rekeys."""

    id: str
    identity: str
    key: bytes
    name: str
    role: Role
    created: float
    origin: Origin = Origin.NATIVE
    key_format: KeyFormat = KeyFormat.BYTES
    last_seen: float | None = None
    pending: PendingKey | None = None

    def key_for_wire(self, key: bytes | None = None) -> bytes | str:
        """A key as handed to this client: a byte string, or text for text keys."""
        key = self.key if key is None else key
        return key.decode("ascii") if self.key_format is KeyFormat.TEXT else key

    def public(self) -> dict[str, Any]:
        """What an admin may see about a client: everything but keys."""
        return {
            "id": self.id,
            "identity": self.identity,
            "name": self.name,
            "role": self.role.value,
            "created": self.created,
            "last-seen": self.last_seen,
            "origin": self.origin.value,
        }


@dataclass(slots=True)
class DeviceInfo:
    id: str
    model: str
    factory_key: str  # canonical text; the PSK is its ASCII
    created: float
    factory_identity: str = FACTORY_IDENTITY
    #: Onboarding is open until this time (epoch seconds); None: closed.
    onboarding_until: float | None = None
    #: Counts factory resets and new factory keys: a session opened with the
    #: factory key of an earlier generation is worth nothing.
    factory_generation: int = 1


@dataclass(frozen=True, slots=True)
class Credential:
    """The key material a DTLS session was authenticated with.

    A client identity names exactly one key forever (identities are never
    reused, see :meth:`coapdev.store.CredentialStore.taken`), so its generation is 0; the
    factory identity keeps its name across factory resets and new factory
    keys, so it carries the device's ``factory_generation``.
    """

    identity: str
    generation: int = 0

    @property
    def is_factory(self) -> bool:
        """Factory generations count from 1; a client key's credential is generation 0."""
        return self.generation > 0

    def __str__(self) -> str:
        return self.identity if not self.generation else f"{self.identity}#{self.generation}"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who sent a request, as established by the DTLS handshake."""

    identity: str
    client: ClientRecord | None  # None for the factory identity
    credential: Credential | None = None

    @property
    def is_factory(self) -> bool:
        return self.client is None

    @property
    def role(self) -> Role | None:
        return None if self.client is None else self.client.role

    @property
    def label(self) -> str:
        """Name for logs: the client's name, or 'factory-key'."""
        return "factory-key" if self.client is None else self.client.name


# --- invariants of the text fields (also checked on untrusted input) -----------------


def validate_name(name: object) -> str:
    if not isinstance(name, str):
        raise InvalidValue("client name must be a text string")
    name = name.strip()
    if not name:
        raise InvalidValue("client name must not be empty")
    if len(name) > MAX_CLIENT_NAME_CHARS:
        raise InvalidValue(f"client name is longer than {MAX_CLIENT_NAME_CHARS} characters")
    if any(not c.isprintable() for c in name):
        raise InvalidValue("client name contains control characters")
    return name


def validate_device_id(device_id: str) -> str:
    text = device_id.strip().upper()
    if not 4 <= len(text) <= 20 or any(c not in keys.ALPHABET for c in text):
        raise InvalidValue(f"device id {device_id!r}: 4 to 20 characters of {keys.ALPHABET}")
    return text


def validate_identity(identity: object) -> str:
    if not isinstance(identity, str) or not identity:
        raise InvalidValue("identity must be a non-empty text string")
    if not identity.isascii() or not identity.isprintable() or " " in identity:
        raise InvalidValue("identity must be printable ASCII without spaces")
    if len(identity.encode()) > MAX_IDENTITY_BYTES:
        raise InvalidValue(f"identity is longer than {MAX_IDENTITY_BYTES} bytes")
    return identity
