"""Records to JSON and back: the snapshot document and the journal's entries.

Pure functions on bytes and :mod:`coapdev.model` records, no files: reading
and writing them is :mod:`coapdev.store.journal`'s job.  Decoding also runs on
damaged or hand-edited files, so it checks everything the model checks (and
every key against its checksum) and every problem names the file and, where it
can, the line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import keys
from ..const import MAX_PSK_BYTES, KeyFormat, Role
from ..errors import CoapdevError, CorruptStateFile
from ..model import ClientRecord, DeviceInfo, Origin, PendingKey, validate_identity, validate_name

SCHEMA_VERSION = 1

Entry = dict[str, Any]


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


# --- the snapshot --------------------------------------------------------------------


def encode_snapshot(
    device: DeviceInfo, clients: Iterable[ClientRecord], retired: Iterable[str], generation: int
) -> bytes:
    """The snapshot document (``credentials.json``) of a device whose journal is ``generation``."""
    document = {
        "schema": SCHEMA_VERSION,
        "journal": generation,
        "device": {
            "id": device.id,
            "model": device.model,
            "created": device.created,
            "onboarding-until": encode_until(device.onboarding_until),
        },
        "factory": {
            "identity": device.factory_identity,
            "key": device.factory_key,
            "generation": device.factory_generation,
        },
        "clients": [encode_client(c) for c in clients],
        "retired": sorted(retired),
    }
    return json.dumps(document, indent=1, sort_keys=True).encode() + b"\n"


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
        device = _decode_device(doc["device"], doc["factory"])
        clients = [decode_client(entry) for entry in doc["clients"]]
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


def _decode_device(dev: Entry, factory: Entry) -> DeviceInfo:
    factory_generation = factory.get("generation", 1)
    if not isinstance(factory_generation, int) or factory_generation < 1:
        raise ValueError(f"factory generation {factory_generation!r}")
    return DeviceInfo(
        id=_str(dev["id"]),
        model=_str(dev["model"]),
        created=float(dev["created"]),
        factory_key=keys.canonical_factory_key(_str(factory["key"])),
        factory_identity=validate_identity(factory["identity"]),
        onboarding_until=decode_until(dev.get("onboarding-until")),
        factory_generation=factory_generation,
    )


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


# --- the journal's entries -----------------------------------------------------------


def journal_line(op: Entry) -> bytes:
    """One journal line: an entry, or a ``batch`` of the entries of one change."""
    return json.dumps(op, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def begin_entry(generation: int) -> Entry:
    """The first line of a journal: the snapshot generation it belongs to."""
    return {"op": "begin", "journal": generation}


def client_entry(record: ClientRecord) -> Entry:
    return {"op": "client", "client": encode_client(record)}


def remove_entry(client_id: str) -> Entry:
    return {"op": "remove", "id": client_id}


def retire_entry(identity: str) -> Entry:
    return {"op": "retire", "identity": identity}


def seen_entry(client_id: str, last_seen: float) -> Entry:
    return {"op": "seen", "id": client_id, "t": last_seen}


def device_entry(device: DeviceInfo) -> Entry:
    return {"op": "device", "onboarding-until": encode_until(device.onboarding_until)}


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


def _apply(op: Entry, content: StateContent, by_id: dict[str, ClientRecord]) -> None:
    kind = op["op"]
    if kind == "client":
        record = decode_client(op["client"])
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
        content.device.onboarding_until = decode_until(op["onboarding-until"])
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


# --- records -------------------------------------------------------------------------


def key_check(key: bytes) -> str:
    """A short checksum stored beside each key: a flipped bit on the card is caught."""
    return hashlib.blake2s(key, digest_size=4).hexdigest()


class KeyCheckFailed(ValueError):
    """A stored key does not match its checksum (storage corruption)."""

    def __init__(self, client_id: str, key_hex: str) -> None:
        super().__init__(f"client {client_id!r}: the stored key does not match its checksum")
        self.key_hex = key_hex


def encode_client(c: ClientRecord) -> Entry:
    out: Entry = {
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


def decode_client(entry: Entry) -> ClientRecord:
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


def encode_until(until: float | None) -> float | str | None:
    return "always" if until == float("inf") else until


def decode_until(value: object) -> float | None:
    return float("inf") if value == "always" else _opt_float(value)


def _key(holder: Entry, client_id: str) -> bytes:
    """The key of a client (or pending key) entry, checked against its checksum if stored."""
    text = _str(holder["key"])
    key = bytes.fromhex(text)
    if not 1 <= len(key) <= MAX_PSK_BYTES:
        raise ValueError(f"key of {len(key)} bytes (1 to {MAX_PSK_BYTES} allowed)")
    check = holder.get("key-check")
    if check is not None and check != key_check(key):
        raise KeyCheckFailed(client_id, text)
    return key


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _opt_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]
