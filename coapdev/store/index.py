"""The device's credentials in memory: the indexes behind every lookup, and the namespace.

Clients are indexed by id, by current and pending identity, and by name;
with the identities retired for good and the factory identity these form one
namespace (:meth:`CredentialIndex.taken`): a string names at most one
client, ever.  Lookups here are the hot path (DTLS handshakes, every
request): dict accesses, no I/O.  Changing and persisting the records is
:class:`coapdev.store.CredentialStore`'s job, which builds on this class.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from .. import keys
from ..const import MAX_CLIENT_NAME_CHARS, Role
from ..errors import AmbiguousName, NoSuchClient
from ..model import ClientRecord, Credential, DeviceInfo, Principal


@dataclass
class CredentialIndex:
    """A device and its clients in memory, indexed; no I/O."""

    device: DeviceInfo
    _clients: dict[str, ClientRecord] = field(default_factory=dict)
    _by_identity: dict[str, ClientRecord] = field(default_factory=dict)
    #: Client ids by name (one each, unless a state file edited by hand says otherwise).
    _by_name: dict[str, set[str]] = field(default_factory=dict)
    #: Every identity this device ever issued that no longer opens anything
    #: (rotated away, revoked, expired, reset): never issued again.
    _retired: set[str] = field(default_factory=set)
    _admins: int = 0

    # --- credentials (hot path: O(1)) ------------------------------------------------

    def credential_for(self, identity: bytes) -> tuple[bytes, Credential] | None:
        """The PSK for a DTLS identity and the credential it stands for, or None."""
        try:
            text = identity.decode("ascii")
        except UnicodeDecodeError:
            return None
        device = self.device
        if text == device.factory_identity:
            return keys.factory_psk(device.factory_key), Credential(text, device.factory_generation)
        record = self._by_identity.get(text)
        if record is None:
            return None
        if record.identity == text:
            return record.key, Credential(text)
        pending = record.pending
        if pending is not None and pending.identity == text:
            return pending.key, Credential(text)
        return None

    def psk_for(self, identity: bytes) -> bytes | None:
        """The PSK for a DTLS identity, or None if the identity is unknown."""
        found = self.credential_for(identity)
        return None if found is None else found[0]

    def current_credential(self, identity: str) -> Credential:
        """The credential an identity stands for now (valid or not)."""
        if identity == self.device.factory_identity:
            return Credential(identity, self.device.factory_generation)
        return Credential(identity)

    def is_valid(self, credential: Credential) -> bool:
        """Whether ``credential`` still opens this device (O(1))."""
        identity = credential.identity
        if identity == self.device.factory_identity:
            return credential.generation == self.device.factory_generation
        return credential.generation == 0 and identity in self._by_identity

    def principal_for(self, credential: Credential | str) -> Principal | None:
        """Who a credential is now (None once revoked, rotated away or superseded).

        A bare identity means the credential it stands for now.
        """
        if isinstance(credential, str):
            credential = self.current_credential(credential)
        if not self.is_valid(credential):
            return None
        identity = credential.identity
        return Principal(identity, self._by_identity.get(identity), credential)

    def is_pending_identity(self, identity: str) -> bool:
        record = self._by_identity.get(identity)
        return record is not None and record.identity != identity

    def onboarding_open(self, now: float) -> bool:
        until = self.device.onboarding_until
        return until is not None and now < until

    # --- clients ---------------------------------------------------------------------

    def clients(self) -> list[ClientRecord]:
        return sorted(self._clients.values(), key=lambda c: (c.created, c.id))

    def client(self, client_id: str) -> ClientRecord:
        try:
            return self._clients[client_id]
        except KeyError:
            raise NoSuchClient(f"no client with id {client_id!r}") from None

    def clients_named(self, ref: str) -> list[ClientRecord]:
        """Every client ``ref`` names: as id, as current or pending identity, or as name.

        By construction (:meth:`taken`) that is at most one; a state file
        edited by hand may say otherwise.
        """
        found: dict[str, ClientRecord] = {}
        for record in (self._clients.get(ref), self._by_identity.get(ref)):
            if record is not None:
                found[record.id] = record
        for client_id in self._by_name.get(ref, ()):
            found[client_id] = self._clients[client_id]
        return list(found.values())

    def find_client(self, ref: str) -> ClientRecord:
        """The one client ``ref`` names (id, identity or name); ambiguity is refused."""
        named = self.clients_named(ref)
        if len(named) == 1:
            return named[0]
        if named:
            ids = ", ".join(sorted(c.id for c in named))
            raise AmbiguousName(f"{ref!r} names several clients; use an id: {ids}")
        raise NoSuchClient(f"no client with id, identity or name {ref!r}")

    def __len__(self) -> int:
        return len(self._clients)

    def __iter__(self) -> Iterator[ClientRecord]:
        return iter(self.clients())

    # --- the namespace ---------------------------------------------------------------

    def taken(self, text: str, *, by: ClientRecord | None = None) -> str | None:
        """Why ``text`` cannot name ``by`` (a new client if None), or None if it can.

        Ids, current and pending identities, every identity ever issued here,
        the factory identity and client names form one namespace: a string
        names at most one client, ever.
        """
        if text == self.device.factory_identity:
            return "it is the factory identity"
        if text in self._retired:
            return "it was an identity on this device before"
        for other in self.clients_named(text):
            if by is None or other.id != by.id:
                return f"client {other.id} already goes by it"
        return None

    def _fresh_identity(self) -> str:
        while True:
            candidate = keys.mint_identity()
            if self.taken(candidate) is None:
                return candidate

    def _unique_name(self, name: str) -> str:
        """``name``, or with the first numeric suffix that is free in the namespace."""
        if self.taken(name) is None:
            return name
        n = 2
        while True:
            suffix = f"-{n}"
            candidate = name[: MAX_CLIENT_NAME_CHARS - len(suffix)] + suffix
            if self.taken(candidate) is None:
                return candidate
            n += 1

    # --- keeping the indexes -----------------------------------------------------------

    def _replace(self, device: DeviceInfo, retired: set[str]) -> None:
        """Start over empty for ``device`` (records follow through :meth:`_add`)."""
        self.device = device
        self._clients = {}
        self._by_identity = {}
        self._by_name = {}
        self._retired = retired
        self._admins = 0

    def _add(self, record: ClientRecord) -> None:
        self._clients[record.id] = record
        self._by_identity[record.identity] = record
        if record.pending is not None:
            self._by_identity[record.pending.identity] = record
        self._index(record)

    def _remove(self, record: ClientRecord) -> None:
        if self._clients.pop(record.id, None) is not None:
            self._unindex(record)
        self._by_identity.pop(record.identity, None)
        if record.pending is not None:
            self._by_identity.pop(record.pending.identity, None)

    def _index(self, record: ClientRecord) -> None:
        self._by_name.setdefault(record.name, set()).add(record.id)
        if record.role is Role.ADMIN:
            self._admins += 1

    def _unindex(self, record: ClientRecord) -> None:
        named = self._by_name.get(record.name)
        if named is not None:
            named.discard(record.id)
            if not named:
                del self._by_name[record.name]
        if record.role is Role.ADMIN:
            self._admins -= 1
