"""The credential store: the device's factory key and every client, and the changes to them.

:class:`CredentialStore` opens (or creates) a state directory and offers the
changes onboarding and administration make: mint, revoke, rename, change a
role, rotate a key, open onboarding, expire idle clients, factory reset.  Each
is one transaction (:mod:`coapdev.store.transaction`): checked on the state
as it is on disk, durable before it returns, then audited.  Refusals are
domain errors (:class:`coapdev.errors.StoreError`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import keys
from ..const import DEVICE_MODEL, KeyFormat, Role
from ..errors import LastAdmin, NameTaken, NoPendingRekey, StateError, TooManyClients
from ..model import (
    ClientRecord,
    Credential,
    DeviceInfo,
    Origin,
    PendingKey,
    validate_device_id,
    validate_identity,
    validate_name,
)
from .codec import device_entry, encode_snapshot
from .journal import StateFiles
from .transaction import DurableIndex

AuditHook = Callable[[str, dict[str, Any]], None]


@dataclass(slots=True)
class StoreLimits:
    max_clients: int = 1000


@dataclass(kw_only=True)
class CredentialStore(DurableIndex):
    """The state directory's credentials, in memory, mirrored to disk on every change."""

    limits: StoreLimits = field(default_factory=StoreLimits)
    audit: AuditHook | None = None

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
        files = StateFiles(directory)
        now = time.time() if now is None else now
        if not files.path.exists():
            if not create:
                raise StateError(
                    f"{files.path}: no device state here (start the gateway once to create it)"
                )
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            with files.lock():
                if not files.path.exists():
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
                    files.write_snapshot(lambda g: encode_snapshot(device, [], (), g))
        store = cls(_placeholder_device(), directory=directory)
        store.limits = limits or StoreLimits()
        store.audit = audit
        store._load()
        store._files.remove_stale_temporaries()
        return store

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
            self._ops.append(device_entry(self.device))
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
            self._files.snapshot_needed = True
            if new_factory_key:
                self.device.factory_key = keys.mint_factory_key()
            self.device.onboarding_until = (
                None if onboarding_window_s is None else now + onboarding_window_s
            )

        self._mutate(reset)
        self._audit("factory-reset", new_factory_key=new_factory_key)

    def _check_not_last_admin(self, record: ClientRecord, change: str) -> None:
        if self._admins <= 1:
            raise LastAdmin(
                f"{record.name!r} is the last admin of this device and cannot be {change}; "
                "make another client admin first"
            )

    def _audit(self, event: str, **details: Any) -> None:
        if self.audit is not None:
            self.audit(event, details)


def _placeholder_device() -> DeviceInfo:
    return DeviceInfo(id="", model="", factory_key="", created=0.0)
