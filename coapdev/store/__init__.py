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

This is the package's public face; its modules, one concern each:

- :mod:`.index`: the records in memory, the lookups, the one namespace (no I/O);
- :mod:`.codec`: records to the snapshot's and the journal's JSON and back;
- :mod:`.journal`: the files, durability, checksums, noticing other writers;
- :mod:`.transaction`: every change one durable transaction, listeners, tombstones;
- :mod:`.credentials`: :class:`CredentialStore`, opening and the changes themselves.

The records themselves are :mod:`coapdev.model`'s (offered here too), and
refusals are the domain errors of :mod:`coapdev.errors` (``StoreError``).
"""

from __future__ import annotations

from ..model import (
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
from .codec import (
    SCHEMA_VERSION,
    KeyCheckFailed,
    StateContent,
    decode_client,
    encode_client,
    encode_snapshot,
    key_check,
    parse_snapshot,
    parse_state,
    replay_journal,
)
from .credentials import AuditHook, CredentialStore, StoreLimits
from .index import CredentialIndex
from .journal import (
    AUDIT_FILE,
    JOURNAL_COMPACT_MIN,
    JOURNAL_FILE,
    LOCK_FILE,
    STATE_FILE,
    read_state,
    read_state_files,
)
from .transaction import LAST_SEEN_RESOLUTION_S

__all__ = [
    "AUDIT_FILE",
    "JOURNAL_COMPACT_MIN",
    "JOURNAL_FILE",
    "LAST_SEEN_RESOLUTION_S",
    "LOCK_FILE",
    "SCHEMA_VERSION",
    "STATE_FILE",
    "AuditHook",
    "ClientRecord",
    "Credential",
    "CredentialIndex",
    "CredentialStore",
    "DeviceInfo",
    "KeyCheckFailed",
    "Origin",
    "PendingKey",
    "Principal",
    "StateContent",
    "StoreLimits",
    "decode_client",
    "encode_client",
    "encode_snapshot",
    "key_check",
    "parse_snapshot",
    "parse_state",
    "read_state",
    "read_state_files",
    "replay_journal",
    "validate_device_id",
    "validate_identity",
    "validate_name",
]
