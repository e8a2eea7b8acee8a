"""Changes as transactions: durable before they count, rolled back if they cannot be.

:class:`DurableIndex` is a :class:`~coapdev.store.index.CredentialIndex`
whose every change is one transaction (:meth:`DurableIndex._mutate`): made
under the state directory's lock, on the state as it is on disk (reloaded
first if another process changed it), journalled or snapshotted (see
:mod:`coapdev.store.journal`) before it returns; if that fails, memory is
reloaded from disk, so it holds exactly what was acknowledged.  Credentials
a change invalidates are told to the listeners once it is durable;
identities that stop opening anything are retired for good (tombstones:
never issued again).  Last-seen times are kept in memory and written with
the next change or :meth:`DurableIndex.flush`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ..errors import StaleCredential, StateWriteError
from ..model import ClientRecord, Credential
from .codec import Entry, client_entry, encode_snapshot, remove_entry, retire_entry, seen_entry
from .index import CredentialIndex
from .journal import StateFiles

#: ``last_seen`` is only advanced in memory when it moved by at least this much,
#: and written out by :meth:`DurableIndex.flush`; it feeds expiry, which
#: counts in days, so minute precision is plenty.
LAST_SEEN_RESOLUTION_S = 60.0

T = TypeVar("T")


@dataclass(kw_only=True)
class DurableIndex(CredentialIndex):
    """A credential index mirrored to a state directory, changed only by transactions."""

    directory: Path
    #: Called with the credentials that stopped being valid, after every change
    #: that invalidated some (here or, found on reload, in another process).
    listeners: list[Callable[[frozenset[Credential]], None]] = field(default_factory=list)
    _invalidated: set[Credential] = field(default_factory=set)
    #: Invalidations of the change being made: they count once it is durable.
    _tentative: set[Credential] = field(default_factory=set)
    #: Clients whose last-seen time moved since it was last written.
    _seen_dirty: set[str] = field(default_factory=set)
    #: Journal entries of the change being made.
    _ops: list[Entry] = field(default_factory=list)
    _files: StateFiles = field(init=False)

    def __post_init__(self) -> None:
        self._files = StateFiles(self.directory)

    @property
    def path(self) -> Path:
        return self._files.path

    @property
    def journal_path(self) -> Path:
        return self._files.journal_path

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
        self._files.snapshot_needed = True
        self._mutate(lambda: None)

    # --- following other processes ---------------------------------------------------

    def refresh(self) -> bool:
        """Reload if another process changed the file; True if it did."""
        if not self._files.changed():
            return False
        try:
            with self._files.lock():
                self._load(merge_last_seen=True)
        finally:
            self._notify()
        return True

    # --- the transaction -------------------------------------------------------------

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
            with self._files.lock():
                if self._files.changed():
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
                    self._files.snapshot_needed = False
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
            self._ops.append(retire_entry(identity))
        self._invalidate(Credential(identity))

    def _changed(self, record: ClientRecord) -> None:
        self._ops.append(client_entry(record))

    def _removed(self, record: ClientRecord) -> None:
        identities = [record.identity] + ([record.pending.identity] if record.pending else [])
        self._remove(record)
        self._ops.append(remove_entry(record.id))
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
                ops.append(seen_entry(client_id, record.last_seen))
        self._files.commit(ops, clients=len(self._clients), snapshot=self._snapshot)
        self._seen_dirty.clear()

    def _snapshot(self, generation: int) -> bytes:
        return encode_snapshot(self.device, self.clients(), self._retired, generation)

    def _load(self, *, merge_last_seen: bool = False) -> None:
        """Replace memory with what is on disk; note credentials that stopped being valid."""
        content = self._files.read()
        previous = self._clients if merge_last_seen else {}
        was_valid = set(self._by_identity)
        old_factory = self.current_credential(self.device.factory_identity)
        had_device = bool(self.device.id)
        self._replace(content.device, content.retired)
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
        self._invalidated.update(Credential(i) for i in was_valid - set(self._by_identity))
        if had_device and not self.is_valid(old_factory):
            self._invalidated.add(old_factory)
