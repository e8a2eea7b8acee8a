"""The device's credential store: factory key and every minted client.

Two files in the device's state directory, mode 0600: a snapshot
(``credentials.json``, schema-versioned, replaced atomically, see
:mod:`coapdev.atomic`) and a journal (``credentials.journal``, JSON lines)
that every change is appended to and fsynced before it counts.  Why a
journal: rewriting the whole snapshot per onboarding costs time in
proportion to the number of clients (about 90 ms at 10 000); an append is
about 0.2 ms at any size.  The journal is folded into a new snapshot once it
holds as many entries as there are clients (and at least
``JOURNAL_COMPACT_MIN``), so loading stays linear.  A journal line cut short
by a crash was never acknowledged and is dropped; the journal names the
snapshot generation it belongs to, so a crash between writing a new snapshot
and starting its journal replays nothing twice.

Several processes may share a state directory (the running gateway and
``coapdev-gateway clients ...`` on the same device): every change is made
under a file lock after re-reading the files if another process changed
them, and :meth:`CredentialStore.refresh` lets a long-running process pick
up such changes cheaply (two ``stat`` calls).

No sockets here: the store is tested directly, and the server is a thin shell
that asks it :meth:`~CredentialStore.psk_for` during handshakes (a dict
lookup) and :meth:`~CredentialStore.principal_for` on every request.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from . import keys
from .atomic import locked, write_all, write_atomic
from .const import DEVICE_MODEL, MAX_CLIENT_NAME_CHARS, MAX_PSK_BYTES, KeyFormat, Role
from .errors import (
    AmbiguousName,
    CoapdevError,
    CorruptStateFile,
    LastAdmin,
    NameTaken,
    NoPendingRekey,
    NoSuchClient,
    StaleCredential,
    StateError,
    StateWriteError,
    TooManyClients,
)
from .model import (
    ClientRecord,
    Credential,
    DeviceInfo,
    Origin,
    PendingKey,
    Principal,
    validate_device_id,
    validate_identity,
    validate_name,
)

log = logging.getLogger("coapdev.store")

SCHEMA_VERSION = 1
STATE_FILE = "credentials.json"
JOURNAL_FILE = "credentials.journal"
#: The journal is compacted into the snapshot past this many entries (or past
#: as many entries as there are clients, if that is more).
JOURNAL_COMPACT_MIN = 256
LOCK_FILE = ".lock"
AUDIT_FILE = "audit.jsonl"

#: ``last_seen`` is only advanced in memory when it moved by at least this much,
#: and written out by :meth:`CredentialStore.flush`; it feeds expiry, which
#: counts in days, so minute precision is plenty.
LAST_SEEN_RESOLUTION_S = 60.0

T = TypeVar("T")


@dataclass(slots=True)
class _Signature:
    inode: int
    mtime_ns: int
    size: int


AuditHook = Callable[[str, dict[str, Any]], None]


@dataclass(slots=True)
class StoreLimits:
    max_clients: int = 1000


@dataclass
class CredentialStore:
    """The state directory's credentials, in memory, mirrored to disk on every change."""

    directory: Path
    device: DeviceInfo
    limits: StoreLimits = field(default_factory=StoreLimits)
    audit: AuditHook | None = None
    _clients: dict[str, ClientRecord] = field(default_factory=dict)
    _by_identity: dict[str, ClientRecord] = field(default_factory=dict)
    #: Client ids by name (one each, unless a state file edited by hand says otherwise).
    _by_name: dict[str, set[str]] = field(default_factory=dict)
    #: Every identity this device ever issued that no longer opens anything
    #: (rotated away, revoked, expired, reset): never issued again.
    _retired: set[str] = field(default_factory=set)
    _admins: int = 0
    #: Called with the credentials that stopped being valid, after every change
    #: that invalidated some (here or, found on reload, in another process).
    listeners: list[Callable[[frozenset[Credential]], None]] = field(default_factory=list)
    _invalidated: set[Credential] = field(default_factory=set)
    #: Invalidations of the change being made: they count once it is durable.
    _tentative: set[Credential] = field(default_factory=set)
    _signature: tuple[_Signature | None, _Signature | None] | None = None
    #: Clients whose last-seen time moved since it was last written.
    _seen_dirty: set[str] = field(default_factory=set)
    #: Journal entries of the change being made, and whether it needs a snapshot.
    _ops: list[dict[str, Any]] = field(default_factory=list)
    _snapshot_needed: bool = False
    _generation: int = 0
    _journal_entries: int = 0

    # --- opening ---------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: Path | str,
        *,
        create: bool = True,
        factory_key: str | None = None,
        device_id: str | None = None,
        onboarding_window_s: float | None = None,
        limits: StoreLimits | None = None,
        audit: AuditHook | None = None,
        now: float | None = None,
    ) -> CredentialStore:
        """Load the store in ``directory``, creating it (and a factory key) if asked.

        ``factory_key`` and ``device_id`` provision a given key and id (from a
        label printed at manufacturing, see tools/provision) instead of minting
        them on creation.  ``onboarding_window_s`` opens onboarding for that long when
        the store is created (first start of a device).
        """
        directory = Path(directory)
        path = directory / STATE_FILE
        now = time.time() if now is None else now
        if not path.exists():
            if not create:
                raise StateError(
                    f"{path}: no device state here (start the gateway once to create it)"
                )
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            with locked(directory / LOCK_FILE):
                if not path.exists():
                    key = (
                        keys.canonical_factory_key(factory_key)
                        if factory_key
                        else keys.mint_factory_key()
                    )
                    until = None if onboarding_window_s is None else now + onboarding_window_s
                    device = DeviceInfo(
                        id=validate_device_id(device_id) if device_id else keys.mint_device_id(),
                        model=DEVICE_MODEL,
                        factory_key=key,
                        created=now,
                        onboarding_until=until,
                    )
                    fresh = cls(directory=directory, device=device)
                    fresh._write()
        store = cls(directory=directory, device=_placeholder_device())
        store.limits = limits or StoreLimits()
        store.audit = audit
        store._load()
        store._remove_stale_temporaries()
        return store

    @property
    def path(self) -> Path:
        return self.directory / STATE_FILE

    # --- lookups (hot path: O(1), no I/O) --------------------------------------------

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

    def __len__(self) -> int:
        return len(self._clients)

    def __iter__(self) -> Iterator[ClientRecord]:
        return iter(self.clients())

    def onboarding_open(self, now: float) -> bool:
        until = self.device.onboarding_until
        return until is not None and now < until

    # --- changes (each persisted before it returns) ----------------------------------

    def mint_client(
        self,
        name: str,
        *,
        now: float,
        text_key: bool = False,
        origin: Origin = Origin.NATIVE,
        identity: str | None = None,
        actor: Credential | None = None,
    ) -> ClientRecord:
        """Mint a client and persist it; only then may its key be handed out.

        The first client, and any client minted while no admin exists, becomes
        admin; all others are users.  Names are unique: a name already taken
        gets a numeric suffix (``laptop-2``), and the earlier client keeps its
        access (onboarding never takes anything away from anyone).  A chosen
        ``identity`` (Tradfri onboarding) that is taken in the namespace of
        :meth:`taken` is refused.  ``actor`` is the credential of the session
        asking, checked again under the lock against what is on disk.
        """
        name = validate_name(name)
        if identity is not None:
            validate_identity(identity)

        def mint() -> ClientRecord:
            if len(self._clients) >= self.limits.max_clients:
                raise TooManyClients(
                    f"this device already has its maximum of {self.limits.max_clients} clients; "
                    "revoke one first"
                )
            if identity is not None:
                reason = self.taken(identity)
                if reason is not None:
                    raise NameTaken(f"identity {identity!r} cannot be issued: {reason}")
            client_id = identity or self._fresh_identity()
            has_admin = self._admins > 0
            record = ClientRecord(
                id=client_id,
                identity=client_id,
                key=keys.mint_client_key(text=text_key),
                name=name if name == client_id else self._unique_name(name),
                role=Role.USER if has_admin else Role.ADMIN,
                created=now,
                origin=origin,
                key_format=KeyFormat.TEXT if text_key else KeyFormat.BYTES,
            )
            self._add(record)
            self._changed(record)
            return record

        record = self._mutate(mint, actor=actor)
        self._audit(
            "onboard",
            client=record.id,
            name=record.name,
            role=record.role.value,
            origin=record.origin.value,
        )
        return record

    def revoke(
        self,
        client_id: str,
        *,
        by: str = "local",
        force: bool = False,
        actor: Credential | None = None,
    ) -> ClientRecord:
        """Remove a client.  The last admin is kept unless ``force`` (local use only):
        a device without an admin can only be recovered at the device."""

        def revoke() -> ClientRecord:
            record = self.client(client_id)
            if record.role is Role.ADMIN and not force:
                self._check_not_last_admin(record, "revoked")
            self._removed(record)
            return record

        record = self._mutate(revoke, actor=actor)
        self._audit("revoke", client=record.id, name=record.name, by=by)
        return record

    def rename(
        self, client_id: str, new_name: str, *, by: str = "local", actor: Credential | None = None
    ) -> ClientRecord:
        new_name = validate_name(new_name)
        old: list[str] = []

        def rename() -> ClientRecord:
            record = self.client(client_id)
            if new_name != record.name:
                reason = self.taken(new_name, by=record)
                if reason is not None:
                    raise NameTaken(f"cannot rename to {new_name!r}: {reason}")
            old.append(record.name)
            self._unindex(record)
            record.name = new_name
            self._index(record)
            self._changed(record)
            return record

        record = self._mutate(rename, actor=actor)
        self._audit("rename", client=record.id, old=old[0], name=record.name, by=by)
        return record

    def set_role(
        self,
        client_id: str,
        role: Role,
        *,
        by: str = "local",
        force: bool = False,
        actor: Credential | None = None,
    ) -> ClientRecord:
        """Change a client's role; the last admin is not demoted unless ``force``."""

        def set_role() -> ClientRecord:
            record = self.client(client_id)
            if record.role is Role.ADMIN and role is not Role.ADMIN and not force:
                self._check_not_last_admin(record, "demoted")
            self._unindex(record)
            record.role = role
            self._index(record)
            self._changed(record)
            return record

        record = self._mutate(set_role, actor=actor)
        self._audit("role", client=record.id, role=role.value, by=by)
        return record

    def begin_rekey(
        self, client_id: str, *, now: float, actor: Credential | None = None
    ) -> PendingKey:
        """Mint a new identity and key for a client; the old ones stay valid until confirmed.

        Asking again before confirming replaces the pending key (the answer
        to the first ask may have been lost); the replaced one never opens
        anything.
        """

        def begin() -> PendingKey:
            record = self.client(client_id)
            if record.pending is not None:
                self._retire(record.pending.identity)
            pending = PendingKey(
                identity=self._fresh_identity(),
                key=keys.mint_client_key(text=record.key_format is KeyFormat.TEXT),
                created=now,
            )
            record.pending = pending
            self._by_identity[pending.identity] = record
            self._changed(record)
            return pending

        pending = self._mutate(begin, actor=actor)
        self._audit("rekey-begin", client=client_id)
        return pending

    def confirm_rekey(self, identity: str) -> ClientRecord:
        """The client used its new key: the old identity and key stop working now."""

        def confirm() -> ClientRecord:
            record = self._by_identity.get(identity)
            if record is None or record.pending is None or record.pending.identity != identity:
                raise NoPendingRekey("no key rotation is pending for this identity")
            self._retire(record.identity)
            record.identity = record.pending.identity
            record.key = record.pending.key
            record.pending = None
            self._changed(record)
            return record

        record = self._mutate(confirm, actor=Credential(identity))
        self._audit("rekey", client=record.id, name=record.name)
        return record

    def open_onboarding(self, duration_s: float | None, *, now: float) -> float | None:
        """Open onboarding for ``duration_s`` (None: until closed; 0: close it)."""
        if duration_s is None:
            until: float | None = float("inf")
        elif duration_s <= 0:
            until = None
        else:
            until = now + duration_s

        def set_window() -> float | None:
            self.device.onboarding_until = until
            self._ops.append({"op": "device", "onboarding-until": _encode_until(until)})
            return until

        self._mutate(set_window)
        self._audit("onboarding-window", until=until if until != float("inf") else "always")
        return until

    def expire_idle(self, max_idle_s: float, *, now: float) -> list[ClientRecord]:
        """Remove clients not seen for ``max_idle_s`` (never-seen ones count from creation)."""
        if max_idle_s <= 0:
            return []

        def idle() -> list[ClientRecord]:
            return [
                c for c in self._clients.values() if now - (c.last_seen or c.created) > max_idle_s
            ]

        if not idle():
            return []

        def expire() -> list[ClientRecord]:
            gone = idle()
            for record in gone:
                self._removed(record)
            return gone

        gone = self._mutate(expire)
        for record in gone:
            self._audit("expire", client=record.id, name=record.name, last_seen=record.last_seen)
        return gone

    def factory_reset(
        self, *, new_factory_key: bool, now: float, onboarding_window_s: float | None = None
    ) -> None:
        """Forget every client; optionally mint a new factory key.

        Every session, also one opened with the factory key, is worth nothing
        afterwards (a new factory generation), and the identities of the
        forgotten clients are never issued again.  Like a first start,
        onboarding then opens for ``onboarding_window_s`` (closed if None).
        """

        def reset() -> None:
            for record in list(self._clients.values()):
                self._removed(record)
            self._invalidate(self.current_credential(self.device.factory_identity))
            self.device.factory_generation += 1
            self._snapshot_needed = True
            if new_factory_key:
                self.device.factory_key = keys.mint_factory_key()
            self.device.onboarding_until = (
                None if onboarding_window_s is None else now + onboarding_window_s
            )

        self._mutate(reset)
        self._audit("factory-reset", new_factory_key=new_factory_key)

    # --- last seen -------------------------------------------------------------------

    def touch(self, record: ClientRecord, now: float) -> None:
        """Note that a client was seen (in memory; :meth:`flush` writes it out)."""
        if record.last_seen is None or now - record.last_seen >= LAST_SEEN_RESOLUTION_S:
            record.last_seen = now
            self._seen_dirty.add(record.id)

    def flush(self) -> None:
        """Write out ``last_seen`` times noted since the last write, if any."""
        if self._seen_dirty:
            self._mutate(lambda: None)

    def compact(self) -> None:
        """Fold the journal into a new snapshot now (it also happens by itself)."""
        self._snapshot_needed = True
        self._mutate(lambda: None)

    # --- following other processes ---------------------------------------------------

    def refresh(self) -> bool:
        """Reload if another process changed the file; True if it did."""
        if self._disk_signature() == self._signature:
            return False
        try:
            with locked(self.directory / LOCK_FILE):
                self._load(merge_last_seen=True)
        finally:
            self._notify()
        return True

    # --- internals -------------------------------------------------------------------

    def _remove_stale_temporaries(self) -> None:
        """Remove temporary files a writer killed mid-write left behind.

        Every write of the state file happens under the lock, so while we hold
        it no temporary file of it can belong to a write in progress.
        """
        try:
            with locked(self.directory / LOCK_FILE):
                for pattern in (
                    f".{STATE_FILE}.*.tmp",
                    f".{STATE_FILE}.bak.*.tmp",
                    f".{JOURNAL_FILE}.*.tmp",
                ):
                    for stale in self.directory.glob(pattern):
                        stale.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only state directory: nothing to tidy, nothing lost

    def _mutate(self, change: Callable[[], T], *, actor: Credential | None = None) -> T:
        """Make one change under the lock, on the state as it is on disk.

        The change reaches memory for good only once it is durable: if
        writing fails (a full disk, a read-only or failing card), memory is
        reloaded from disk, so it holds exactly what was acknowledged, and
        :class:`StateWriteError` says why.  ``actor`` is the credential of the
        session that asked: it must still be valid on the fresh state (a
        request authorized a moment ago on a stale view, just before another
        process reset the device, must not mint its admin).
        """
        try:
            with locked(self.directory / LOCK_FILE):
                if self._disk_signature() != self._signature:
                    self._load(merge_last_seen=True)
                if actor is not None and not self.is_valid(actor):
                    raise StaleCredential(
                        "the key of this session is no longer valid on this device"
                    )
                self._ops = []
                self._tentative = set()
                try:
                    result = change()
                    self._persist()
                except BaseException as exc:
                    self._snapshot_needed = False
                    self._tentative = set()
                    self._load(merge_last_seen=True)  # memory = what is on disk
                    if isinstance(exc, OSError):
                        raise StateWriteError.from_os_error(self.directory, exc) from exc
                    raise
                finally:
                    self._ops = []
                self._invalidated |= self._tentative
                self._tentative = set()
        finally:
            self._notify()
        return result

    def _notify(self) -> None:
        """Tell listeners which credentials stopped being valid (outside the lock)."""
        if not self._invalidated:
            return
        gone = frozenset(self._invalidated)
        self._invalidated = set()
        for listener in list(self.listeners):
            listener(gone)

    def _invalidate(self, credential: Credential) -> None:
        self._tentative.add(credential)

    def _retire(self, identity: str) -> None:
        """``identity`` stops opening anything and is never issued again."""
        self._by_identity.pop(identity, None)
        if identity not in self._retired:
            self._retired.add(identity)
            self._ops.append({"op": "retire", "identity": identity})
        self._invalidate(Credential(identity))

    def _changed(self, record: ClientRecord) -> None:
        self._ops.append({"op": "client", "client": _encode_client(record)})

    def _removed(self, record: ClientRecord) -> None:
        identities = [record.identity] + ([record.pending.identity] if record.pending else [])
        self._remove(record)
        self._ops.append({"op": "remove", "id": record.id})
        for identity in identities:
            self._retire(identity)
        if record.id not in identities:
            self._retire(record.id)

    def _persist(self) -> None:
        """Journal the change just made (with pending last-seen times), or snapshot."""
        ops, self._ops = self._ops, []
        for client_id in sorted(self._seen_dirty):
            record = self._clients.get(client_id)
            if record is not None and record.last_seen is not None:
                ops.append({"op": "seen", "id": client_id, "t": record.last_seen})
        limit = max(JOURNAL_COMPACT_MIN, len(self._clients))
        if self._snapshot_needed or self._journal_entries + len(ops) > limit:
            self._write()
        elif ops and not self._append(ops):
            self._write()
        self._seen_dirty.clear()

    def _append(self, ops: list[dict[str, Any]]) -> bool:
        """Append one change to the journal and fsync; False if it must be rewritten instead.

        One change is one line, so a write cut short (a crash, a full disk)
        leaves at most a partial last line, which is never replayed; on a
        write error the journal is also cut back to where it was.
        """
        data = _journal_line(ops[0] if len(ops) == 1 else {"op": "batch", "ops": ops})
        try:
            fd = os.open(self.journal_path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            return False  # a state directory from before journals, or removed by hand
        try:
            size = os.fstat(fd).st_size
            if size == 0 or os.pread(fd, 1, size - 1) != b"\n":
                return False  # a line cut short by a crash: start a fresh journal
            try:
                write_all(fd, data)
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                    os.fsync(fd)
                raise
        finally:
            os.close(fd)
        self._journal_entries += len(ops)
        self._signature = self._disk_signature()
        return True

    @property
    def journal_path(self) -> Path:
        return self.directory / JOURNAL_FILE

    def _disk_signature(self) -> tuple[_Signature | None, _Signature | None]:
        return _signature_or_none(self.path), _signature_or_none(self.journal_path)

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

    def _check_not_last_admin(self, record: ClientRecord, change: str) -> None:
        if self._admins <= 1:
            raise LastAdmin(
                f"{record.name!r} is the last admin of this device and cannot be {change}; "
                "make another client admin first"
            )

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

    def _audit(self, event: str, **details: Any) -> None:
        if self.audit is not None:
            self.audit(event, details)

    def _write(self) -> None:
        """A new snapshot of everything, then an empty journal for it.

        The rename of the snapshot is the moment the change is durable; the
        second copy and the fresh journal after it are housekeeping: if they
        fail, the next change writes a snapshot again.
        """
        generation = self._generation + 1
        device = self.device
        document = {
            "schema": SCHEMA_VERSION,
            "journal": generation,
            "device": {
                "id": device.id,
                "model": device.model,
                "created": device.created,
                "onboarding-until": _encode_until(device.onboarding_until),
            },
            "factory": {
                "identity": device.factory_identity,
                "key": device.factory_key,
                "generation": device.factory_generation,
            },
            "clients": [_encode_client(c) for c in self.clients()],
            "retired": sorted(self._retired),
        }
        data = json.dumps(document, indent=1, sort_keys=True).encode() + b"\n"
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.path, data)
        self._generation = generation
        self._journal_entries = 0
        self._snapshot_needed = True  # until the fresh journal below exists
        self._seen_dirty.clear()
        try:
            # A second copy, for a snapshot damaged later (SD-card rot).
            write_atomic(self.path.with_name(STATE_FILE + ".bak"), data)
            write_atomic(self.journal_path, _journal_line({"op": "begin", "journal": generation}))
            self._snapshot_needed = False
        except OSError as exc:
            log.warning("%s: snapshot written, but not its copy or journal: %s", self.path, exc)
        self._signature = self._disk_signature()

    def _load(self, *, merge_last_seen: bool = False) -> None:
        """Replace memory with what is on disk; note credentials that stopped being valid."""
        signature = self._disk_signature()
        content = read_state_files(self.directory)
        previous = self._clients if merge_last_seen else {}
        was_valid = set(self._by_identity)
        old_factory = self.current_credential(self.device.factory_identity)
        had_device = bool(self.device.id)
        self.device = content.device
        self._clients = {}
        self._by_identity = {}
        self._by_name = {}
        self._retired = content.retired
        self._admins = 0
        self._generation = content.generation
        self._journal_entries = max(content.entries, 0)
        if content.entries < 0:
            self._snapshot_needed = True
        for record in content.clients:
            old = previous.get(record.id)
            if (
                old is not None
                and old.last_seen is not None
                and (record.last_seen is None or old.last_seen > record.last_seen)
            ):
                record.last_seen = old.last_seen
                self._seen_dirty.add(record.id)
            self._add(record)
        self._signature = signature
        self._invalidated.update(Credential(i) for i in was_valid - set(self._by_identity))
        if had_device and not self.is_valid(old_factory):
            self._invalidated.add(old_factory)


def _placeholder_device() -> DeviceInfo:
    return DeviceInfo(id="", model="", factory_key="", created=0.0)


def _signature_or_none(path: Path) -> _Signature | None:
    try:
        return _signature_of(path)
    except FileNotFoundError:
        return None


def _journal_line(op: dict[str, Any]) -> bytes:
    return json.dumps(op, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def read_state(directory: Path | str) -> tuple[DeviceInfo, list[ClientRecord]]:
    """The device and its clients as on disk (snapshot plus journal), without locking."""
    content = read_state_files(Path(directory))
    return content.device, content.clients


@dataclass(slots=True)
class StateContent:
    """What a state directory holds: snapshot plus journal, parsed and checked."""

    device: DeviceInfo
    clients: list[ClientRecord]
    #: Identities issued before that open nothing now.
    retired: set[str]
    #: The snapshot's generation (which journal is its own).
    generation: int
    #: Journal entries; -1: there is no journal for this snapshot, the next
    #: change writes a snapshot.
    entries: int


def read_state_files(directory: Path) -> StateContent:
    """Snapshot plus journal, parsed and checked; every problem names file and line."""
    path = directory / STATE_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise StateError(f"{path}: missing") from None
    except OSError as exc:
        raise StateError(f"{path}: cannot read: {exc.strerror}") from None
    content = parse_snapshot(raw, path)
    journal = directory / JOURNAL_FILE
    try:
        lines = journal.read_bytes().split(b"\n")
    except FileNotFoundError:
        return content
    except OSError as exc:
        raise StateError(f"{journal}: cannot read: {exc.strerror}") from None
    if replay_journal(content, lines, journal):
        content.entries = len(lines) - 2
    return content


def replay_journal(content: StateContent, lines: list[bytes], path: Path) -> bool:
    """Apply the journal's entries to a snapshot's content; False if it is not its own.

    ``lines`` is the file split at newlines: the last element is what
    follows the last newline, a line cut short by a crash (never
    acknowledged: dropped).  A journal begun for another snapshot
    generation is not this snapshot's (its entries are in the snapshot
    already).
    """
    complete = lines[:-1]
    if not complete or _begin_generation(complete[0]) != content.generation:
        return False
    by_id = {c.id: c for c in content.clients}
    for number, line in enumerate(complete[1:], start=2):
        try:
            entry = json.loads(line)
            ops = entry["ops"] if entry["op"] == "batch" else [entry]
            for op in ops:
                _apply(op, content, by_id)
        except KeyCheckFailed as exc:
            raise CorruptStateFile(path, f"line {number}: {exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError, UnicodeDecodeError) as exc:
            raise CorruptStateFile(path, f"line {number}: invalid entry: {exc!r}") from None
        except CoapdevError as exc:
            raise CorruptStateFile(path, f"line {number}: invalid entry: {exc}") from None
    try:
        _check_identities_unique(content.device, by_id.values())
    except ValueError as exc:
        raise CorruptStateFile(path, str(exc)) from None
    content.clients = list(by_id.values())
    return True


def _apply(op: dict[str, Any], content: StateContent, by_id: dict[str, ClientRecord]) -> None:
    kind = op["op"]
    if kind == "client":
        record = _decode_client(op["client"])
        by_id[record.id] = record
    elif kind == "remove":
        by_id.pop(_str(op["id"]), None)
    elif kind == "retire":
        content.retired.add(validate_identity(op["identity"]))
    elif kind == "seen":
        seen = by_id.get(_str(op["id"]))
        t = float(op["t"])
        if seen is not None and (seen.last_seen is None or t > seen.last_seen):
            seen.last_seen = t
    elif kind == "device":
        content.device.onboarding_until = _decode_until(op["onboarding-until"])
    else:
        raise ValueError(f"unknown entry {kind!r}")


def _begin_generation(line: bytes) -> int | None:
    try:
        op = json.loads(line)
    except ValueError:
        return None
    if isinstance(op, dict) and op.get("op") == "begin" and isinstance(op.get("journal"), int):
        return op["journal"]
    return None


def _signature_of(path: Path) -> _Signature:
    st = os.stat(path)
    return _Signature(st.st_ino, st.st_mtime_ns, st.st_size)


def _encode_until(until: float | None) -> float | str | None:
    return "always" if until == float("inf") else until


def _decode_until(value: object) -> float | None:
    return float("inf") if value == "always" else _opt_float(value)


def key_check(key: bytes) -> str:
    """A short checksum stored beside each key: a flipped bit on the card is caught."""
    return hashlib.blake2s(key, digest_size=4).hexdigest()


class KeyCheckFailed(ValueError):
    """A stored key does not match its checksum (storage corruption)."""

    def __init__(self, client_id: str, key_hex: str) -> None:
        super().__init__(f"client {client_id!r}: the stored key does not match its checksum")
        self.key_hex = key_hex


def _encode_client(c: ClientRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": c.id,
        "identity": c.identity,
        "key": c.key.hex(),
        "key-check": key_check(c.key),
        "name": c.name,
        "role": c.role.value,
        "created": c.created,
        "last-seen": c.last_seen,
        "origin": c.origin.value,
        "key-format": c.key_format.value,
    }
    if c.pending is not None:
        out["pending"] = {
            "identity": c.pending.identity,
            "key": c.pending.key.hex(),
            "key-check": key_check(c.pending.key),
            "created": c.pending.created,
        }
    return out


# --- parsing and validation (also used on untrusted input) --------------------------


def parse_state(raw: bytes, path: Path) -> tuple[DeviceInfo, list[ClientRecord]]:
    """Parse and check a state file; every problem names the file."""
    content = parse_snapshot(raw, path)
    return content.device, content.clients


def parse_snapshot(raw: bytes, path: Path) -> StateContent:
    """:func:`parse_state`, with the retired identities and the snapshot's generation."""

    def bad(reason: str) -> CorruptStateFile:
        backup = path.with_name(path.name + ".bak")
        hint = f" (the previous good copy is {backup})" if backup.exists() else ""
        return CorruptStateFile(path, reason + hint)

    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"not valid JSON ({exc}); the file is truncated or corrupt") from None
    if not isinstance(doc, dict):
        raise bad("top level is not an object")
    schema = doc.get("schema")
    if schema != SCHEMA_VERSION:
        raise bad(f"schema version {schema!r} is not supported (expected {SCHEMA_VERSION})")
    try:
        dev = doc["device"]
        factory = doc["factory"]
        factory_generation = factory.get("generation", 1)
        if not isinstance(factory_generation, int) or factory_generation < 1:
            raise ValueError(f"factory generation {factory_generation!r}")
        device = DeviceInfo(
            id=_str(dev["id"]),
            model=_str(dev["model"]),
            created=float(dev["created"]),
            factory_key=keys.canonical_factory_key(_str(factory["key"])),
            factory_identity=validate_identity(factory["identity"]),
            onboarding_until=_decode_until(dev.get("onboarding-until")),
            factory_generation=factory_generation,
        )
        clients = [_decode_client(entry) for entry in doc["clients"]]
        _check_identities_unique(device, clients)
        retired = {validate_identity(identity) for identity in doc.get("retired", [])}
    except KeyCheckFailed as exc:
        line = raw[: max(raw.find(exc.key_hex.encode()), 0)].count(b"\n") + 1
        raise bad(f"line {line}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise bad(f"invalid content: {exc!r}") from None
    except CoapdevError as exc:  # a bad name, identity or factory key text
        raise bad(f"invalid content: {exc}") from None
    generation = doc.get("journal", 0)
    if not isinstance(generation, int) or isinstance(generation, bool):
        generation = 0
    return StateContent(device, clients, retired, generation, -1)


def _check_identities_unique(device: DeviceInfo, clients: Iterable[ClientRecord]) -> None:
    """ValueError if two clients (or a client and the factory) share an identity."""
    seen: set[str] = {device.factory_identity}
    for record in clients:
        for ident in (record.identity, record.pending.identity if record.pending else None):
            if ident is None:
                continue
            if ident in seen:
                raise ValueError(f"identity {ident!r} appears twice")
            seen.add(ident)


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _opt_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _key(holder: dict[str, Any], client_id: str) -> bytes:
    """The key of a client (or pending key) entry, checked against its checksum if stored."""
    text = _str(holder["key"])
    key = bytes.fromhex(text)
    if not 1 <= len(key) <= MAX_PSK_BYTES:
        raise ValueError(f"key of {len(key)} bytes (1 to {MAX_PSK_BYTES} allowed)")
    check = holder.get("key-check")
    if check is not None and check != key_check(key):
        raise KeyCheckFailed(client_id, text)
    return key


def _decode_client(entry: dict[str, Any]) -> ClientRecord:
    pending = entry.get("pending")
    client_id = validate_identity(entry["id"])
    return ClientRecord(
        id=client_id,
        identity=validate_identity(entry["identity"]),
        key=_key(entry, client_id),
        name=validate_name(entry["name"]),
        role=Role(entry["role"]),
        created=float(entry["created"]),
        last_seen=_opt_float(entry.get("last-seen")),
        origin=Origin(entry.get("origin", "native")),
        key_format=KeyFormat(entry.get("key-format", "bytes")),
        pending=None
        if pending is None
        else PendingKey(
            identity=validate_identity(pending["identity"]),
            key=_key(pending, client_id),
            created=float(pending["created"]),
        ),
    )
