"""The state directory's files: snapshot, its copy, journal; durability and change detection.

The snapshot (``credentials.json``, see :mod:`coapdev.store.codec`) is
replaced atomically (:mod:`coapdev.atomic`), and a second copy is kept for
a snapshot damaged later.  Every change is one line appended to the journal
(``credentials.journal``) and fsynced before it counts; a line cut short by
a crash was never acknowledged and is never replayed.  A journal begins with
the generation of the snapshot it belongs to.  Another process's changes are
noticed by two ``stat`` calls (inode, mtime, size of both files).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..atomic import locked, write_all, write_atomic
from ..errors import StateError
from ..model import ClientRecord, DeviceInfo
from .codec import Entry, StateContent, begin_entry, journal_line, parse_snapshot, replay_journal

log = logging.getLogger("coapdev.store")

STATE_FILE = "credentials.json"
JOURNAL_FILE = "credentials.journal"
LOCK_FILE = ".lock"
AUDIT_FILE = "audit.jsonl"
#: The journal is compacted into the snapshot past this many entries (or past
#: as many entries as there are clients, if that is more).
JOURNAL_COMPACT_MIN = 256


@dataclass(slots=True)
class _Signature:
    inode: int
    mtime_ns: int
    size: int


DiskSignature = tuple[_Signature | None, _Signature | None]


class StateFiles:
    """One state directory's snapshot and journal, and what this process knows of them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        #: The generation of the snapshot on disk (its journal names it).
        self.generation = 0
        #: Entries in the journal since that snapshot.
        self.entries = 0
        #: Whether the next change must write a snapshot rather than journal itself.
        self.snapshot_needed = False
        self._signature: DiskSignature | None = None

    @property
    def path(self) -> Path:
        return self.directory / STATE_FILE

    @property
    def journal_path(self) -> Path:
        return self.directory / JOURNAL_FILE

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """The lock every change (and every reload before one) is made under."""
        return locked(self.directory / LOCK_FILE)

    def changed(self) -> bool:
        """Whether the files differ from the ones last read or written here."""
        return self._disk_signature() != self._signature

    def read(self) -> StateContent:
        """Snapshot plus journal, as :func:`read_state_files`; noted as what is known."""
        signature = self._disk_signature()
        content = read_state_files(self.directory)
        self.generation = content.generation
        self.entries = max(content.entries, 0)
        if content.entries < 0:
            self.snapshot_needed = True
        self._signature = signature
        return content

    def commit(self, ops: list[Entry], *, clients: int, snapshot: Callable[[int], bytes]) -> None:
        """Make one change durable: journal its entries, or write ``snapshot(generation)``.

        A snapshot is written when one is due (asked for, or the journal holds
        more entries than ``clients`` and ``JOURNAL_COMPACT_MIN``), or when the
        journal cannot be appended to.
        """
        limit = max(JOURNAL_COMPACT_MIN, clients)
        if self.snapshot_needed or self.entries + len(ops) > limit:
            self.write_snapshot(snapshot)
        elif ops and not self.append(ops):
            self.write_snapshot(snapshot)

    def write_snapshot(self, snapshot: Callable[[int], bytes]) -> None:
        """A new snapshot, ``snapshot(generation)``, then an empty journal for it.

        The rename of the snapshot is the moment the change is durable; the
        second copy and the fresh journal after it are housekeeping: if they
        fail, the next change writes a snapshot again.
        """
        generation = self.generation + 1
        data = snapshot(generation)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.path, data)
        self.generation = generation
        self.entries = 0
        self.snapshot_needed = True  # until the fresh journal below exists
        try:
            # A second copy, for a snapshot damaged later (SD-card rot).
            write_atomic(self.path.with_name(STATE_FILE + ".bak"), data)
            write_atomic(self.journal_path, journal_line(begin_entry(generation)))
            self.snapshot_needed = False
        except OSError as exc:
            log.warning("%s: snapshot written, but not its copy or journal: %s", self.path, exc)
        self._signature = self._disk_signature()

    def append(self, ops: list[Entry]) -> bool:
        """Append one change to the journal and fsync; False if it must be rewritten instead.

        One change is one line, so a write cut short (a crash, a full disk)
        leaves at most a partial last line, which is never replayed; on a
        write error the journal is also cut back to where it was.
        """
        data = journal_line(ops[0] if len(ops) == 1 else {"op": "batch", "ops": ops})
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
        self.entries += len(ops)
        self._signature = self._disk_signature()
        return True

    def remove_stale_temporaries(self) -> None:
        """Remove temporary files a writer killed mid-write left behind.

        Every write of the state file happens under the lock, so while we hold
        it no temporary file of it can belong to a write in progress.
        """
        try:
            with self.lock():
                for pattern in (
                    f".{STATE_FILE}.*.tmp",
                    f".{STATE_FILE}.bak.*.tmp",
                    f".{JOURNAL_FILE}.*.tmp",
                ):
                    for stale in self.directory.glob(pattern):
                        stale.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only state directory: nothing to tidy, nothing lost

    def _disk_signature(self) -> DiskSignature:
        return _signature_or_none(self.path), _signature_or_none(self.journal_path)


def read_state(directory: Path | str) -> tuple[DeviceInfo, list[ClientRecord]]:
    """The device and its clients as on disk (snapshot plus journal), without locking."""
    content = read_state_files(Path(directory))
    return content.device, content.clients


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


def _signature_or_none(path: Path) -> _Signature | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return _Signature(st.st_ino, st.st_mtime_ns, st.st_size)
