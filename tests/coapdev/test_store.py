import json
import os
import stat

import pytest

from coapdev.const import FACTORY_IDENTITY, Role
from coapdev.errors import (
    Conflict,
    CorruptStateFile,
    NotFound,
    StateError,
    TooManyRequests,
)
from coapdev.store import STATE_FILE, CredentialStore, Origin, StoreLimits

NOW = 1_800_000_000.0


@pytest.fixture
def store(tmp_path):
    return CredentialStore.open(tmp_path / "state", now=NOW)


def test_creates_state_dir_with_factory_key_mode_0600_and_schema(tmp_path):
    s = CredentialStore.open(tmp_path / "state", now=NOW)
    path = tmp_path / "state" / STATE_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["schema"] == 1
    assert doc["factory"]["key"] == s.device.factory_key
    assert s.psk_for(FACTORY_IDENTITY.encode()) == s.device.factory_key.encode()


def test_provisioned_factory_key_is_used(tmp_path):
    from coapdev.keys import format_factory_key, mint_factory_key

    key = mint_factory_key()
    s = CredentialStore.open(tmp_path / "s", factory_key=format_factory_key(key).lower())
    assert s.device.factory_key == key


def test_open_without_create_on_missing_dir_is_a_clear_error(tmp_path):
    with pytest.raises(StateError, match="no device state"):
        CredentialStore.open(tmp_path / "nothing", create=False)


def test_first_client_is_admin_then_users_and_all_persist(store, tmp_path):
    a = store.mint_client("laptop", now=NOW)
    b = store.mint_client("phone", now=NOW)
    assert a.role is Role.ADMIN and b.role is Role.USER
    assert len(a.key) == 32 and a.key != b.key  # 256 bits
    reopened = CredentialStore.open(tmp_path / "state", create=False)
    assert reopened.psk_for(a.identity.encode()) == a.key
    assert reopened.psk_for(b.identity.encode()) == b.key
    assert reopened.principal_for(b.identity).client.name == "phone"


def test_unknown_identities_have_no_key(store):
    assert store.psk_for(b"nobody") is None
    assert store.psk_for(b"\xff\xfe") is None
    assert store.principal_for("nobody") is None


def test_same_name_twice_mints_a_second_client_with_a_suffix(store):
    a = store.mint_client("laptop", now=NOW)
    b = store.mint_client("laptop", now=NOW)
    assert b.name == "laptop-2" and b.identity != a.identity
    assert store.principal_for(a.identity) is not None  # the first keeps access


def test_text_keys_are_printable(store):
    rec = store.mint_client("libcoap", now=NOW, text_key=True)
    assert rec.key.decode("ascii").isprintable() and len(rec.key) == 16


def test_revoke_removes_identity_and_is_persisted(store, tmp_path):
    a = store.mint_client("laptop", now=NOW)
    store.revoke(a.id, force=True)
    assert store.psk_for(a.identity.encode()) is None
    assert CredentialStore.open(tmp_path / "state").principal_for(a.identity) is None
    with pytest.raises(NotFound):
        store.revoke(a.id)


def test_admin_role_passes_on_when_no_admin_is_left(store):
    a = store.mint_client("a", now=NOW)
    store.revoke(a.id, force=True)
    b = store.mint_client("b", now=NOW)
    assert b.role is Role.ADMIN


def test_rename_and_role_and_conflicts(store):
    a = store.mint_client("a", now=NOW)
    b = store.mint_client("b", now=NOW)
    store.rename(b.id, "kitchen")
    assert store.find_client("kitchen").id == b.id
    with pytest.raises(Conflict):
        store.rename(a.id, "kitchen")
    store.set_role(b.id, Role.ADMIN)
    assert store.client(b.id).role is Role.ADMIN


def test_max_clients_is_enforced(tmp_path):
    s = CredentialStore.open(tmp_path / "s", limits=StoreLimits(max_clients=2))
    s.mint_client("a", now=NOW)
    s.mint_client("b", now=NOW)
    with pytest.raises(TooManyRequests, match="maximum of 2"):
        s.mint_client("c", now=NOW)
    assert len(s) == 2


def test_rekey_keeps_old_key_until_new_one_is_used(store, tmp_path):
    a = store.mint_client("a", now=NOW)
    old_identity, old_key = a.identity, a.key
    pending = store.begin_rekey(a.id, now=NOW)
    assert store.psk_for(old_identity.encode()) == old_key
    assert store.psk_for(pending.identity.encode()) == pending.key
    assert store.is_pending_identity(pending.identity)
    # asking again replaces the pending key
    again = store.begin_rekey(a.id, now=NOW)
    assert store.psk_for(pending.identity.encode()) is None
    record = store.confirm_rekey(again.identity)
    assert record.id == a.id and record.identity == again.identity
    assert store.psk_for(old_identity.encode()) is None
    reopened = CredentialStore.open(tmp_path / "state")
    assert reopened.psk_for(again.identity.encode()) == again.key
    assert reopened.client(a.id).name == "a"


def test_tradfri_identity_must_be_unique(store):
    store.mint_client("ha", now=NOW, identity="ha-1234", origin=Origin.TRADFRI, text_key=True)
    with pytest.raises(Conflict):
        store.mint_client("ha", now=NOW, identity="ha-1234", origin=Origin.TRADFRI)
    with pytest.raises(Conflict):
        store.mint_client("x", now=NOW, identity=FACTORY_IDENTITY)


def test_expiry_removes_only_idle_clients(store):
    old = store.mint_client("old", now=NOW - 100 * 86400)
    fresh = store.mint_client("fresh", now=NOW - 100 * 86400)
    store.touch(store.client(fresh.id), NOW - 86400)
    gone = store.expire_idle(90 * 86400, now=NOW)
    assert [c.id for c in gone] == [old.id]
    assert store.principal_for(fresh.identity) is not None
    assert store.expire_idle(0, now=NOW) == []


def test_last_seen_is_kept_in_memory_then_flushed(store, tmp_path):
    a = store.mint_client("a", now=NOW)
    store.touch(store.client(a.id), NOW + 120)
    assert CredentialStore.open(tmp_path / "state").client(a.id).last_seen is None
    store.flush()
    assert CredentialStore.open(tmp_path / "state").client(a.id).last_seen == NOW + 120


def test_another_process_change_is_picked_up_by_refresh(store, tmp_path):
    a = store.mint_client("a", now=NOW)
    other = CredentialStore.open(tmp_path / "state")
    other.revoke(a.id, force=True)
    assert store.principal_for(a.identity) is not None
    assert store.refresh() is True
    assert store.principal_for(a.identity) is None
    assert store.refresh() is False


def test_changes_on_a_stale_view_do_not_undo_other_changes(store, tmp_path):
    other = CredentialStore.open(tmp_path / "state")
    a = other.mint_client("a", now=NOW)
    b = store.mint_client("b", now=NOW)  # store had not seen "a" yet
    fresh = CredentialStore.open(tmp_path / "state")
    assert {c.id for c in fresh.clients()} == {a.id, b.id}


def test_factory_reset_forgets_clients_and_can_mint_a_new_key(store):
    a = store.mint_client("a", now=NOW)
    old_key = store.device.factory_key
    store.factory_reset(new_factory_key=False, now=NOW)
    assert store.principal_for(a.identity) is None and store.device.factory_key == old_key
    store.factory_reset(new_factory_key=True, now=NOW)
    assert store.device.factory_key != old_key


def test_truncated_state_file_is_a_clear_error_and_backup_is_kept(store, tmp_path):
    store.mint_client("a", now=NOW)
    store.compact()
    store.mint_client("b", now=NOW)
    store.compact()
    path = tmp_path / "state" / STATE_FILE
    backup = path.with_name(STATE_FILE + ".bak")
    good_backup = backup.read_bytes()
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CorruptStateFile) as info:
        CredentialStore.open(tmp_path / "state")
    assert str(path) in str(info.value) and "truncated" in str(info.value)
    assert str(backup) in str(info.value)
    assert backup.read_bytes() == good_backup
    path.write_bytes(good_backup)  # restoring the copy loses nothing: it has the journal too
    assert sorted(c.name for c in CredentialStore.open(tmp_path / "state").clients()) == ["a", "b"]


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda d: d.update(schema=99), "schema version 99"),
        (lambda d: d["clients"][0].update(key="00" * 33), "33 bytes"),
        (lambda d: d["clients"][0].update(identity="x" * 65), "longer than 64"),
        (lambda d: d["factory"].update(key="AAAA-AAAA-AAAA-AAAB"), "mistyped"),
        (lambda d: d["clients"][0].update(role="root"), "root"),
        (lambda d: d["clients"].append(dict(d["clients"][0])), "twice"),
    ],
)
def test_invalid_content_is_refused_at_load(store, tmp_path, mutate, reason):
    store.mint_client("a", now=NOW)
    store.compact()
    path = tmp_path / "state" / STATE_FILE
    doc = json.loads(path.read_text())
    mutate(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(CorruptStateFile, match=reason):
        CredentialStore.open(tmp_path / "state")


def test_audit_hook_sees_each_change(tmp_path):
    events = []
    s = CredentialStore.open(tmp_path / "s", audit=lambda e, d: events.append((e, d)))
    a = s.mint_client("a", now=NOW)
    s.rename(a.id, "b")
    p = s.begin_rekey(a.id, now=NOW)
    s.confirm_rekey(p.identity)
    s.revoke(a.id, force=True)
    assert [e for e, _ in events] == ["onboard", "rename", "rekey-begin", "rekey", "revoke"]
    assert all("key" not in d for _, d in events)


def test_onboarding_window(store):
    assert not store.onboarding_open(NOW)
    store.open_onboarding(60, now=NOW)
    assert store.onboarding_open(NOW + 59) and not store.onboarding_open(NOW + 61)
    store.open_onboarding(None, now=NOW)
    assert store.onboarding_open(NOW + 10**9)
    store.open_onboarding(0, now=NOW)
    assert not store.onboarding_open(NOW)


def test_lookup_is_constant_time_in_practice(tmp_path):
    """10 000 clients: a lookup is a dict access, not a scan (checked by count, not time)."""
    s = CredentialStore.open(tmp_path / "s", limits=StoreLimits(max_clients=20_000))
    from coapdev.store import ClientRecord

    for i in range(10_000):
        rec = ClientRecord(
            id=f"c{i}",
            identity=f"c{i}",
            key=b"k" * 16,
            name=f"n{i}",
            role=Role.USER,
            created=NOW,
        )
        s._add(rec)

    class CountingDict(dict):
        lookups = 0

        def get(self, key, default=None):
            CountingDict.lookups += 1
            return super().get(key, default)

    s._by_identity = CountingDict(s._by_identity)
    assert s.psk_for(b"c9999") == b"k" * 16
    assert CountingDict.lookups == 1


def test_open_removes_temporaries_left_by_a_killed_writer(tmp_path):
    store = CredentialStore.open(tmp_path)
    store.mint_client("one", now=1.0)
    stale = [tmp_path / ".credentials.json.999999.tmp", tmp_path / ".credentials.json.bak.7.tmp"]
    for path in stale:
        path.write_bytes(b'{"half": ')
    other = tmp_path / ".light.json.5.tmp"  # not the store's: left alone
    other.write_bytes(b"x")
    reopened = CredentialStore.open(tmp_path)
    assert [c.name for c in reopened.clients()] == ["one"]
    assert not any(path.exists() for path in stale)
    assert other.exists()


# --- the journal ---------------------------------------------------------------------


def test_changes_are_appended_to_the_journal_and_survive_a_reopen(store, tmp_path):
    state = tmp_path / "state"
    snapshot = (state / STATE_FILE).read_bytes()
    a = store.mint_client("a", now=NOW)
    b = store.mint_client("b", now=NOW + 1)
    store.rename(b.id, "bee")
    pending = store.begin_rekey(a.id, now=NOW + 2)
    store.confirm_rekey(pending.identity)
    store.revoke(b.id)
    store.touch(store.client(a.id), NOW + 500)
    store.flush()
    store.open_onboarding(None, now=NOW)
    assert (state / STATE_FILE).read_bytes() == snapshot  # no rewrite: appends only
    again = CredentialStore.open(state)
    [a2] = again.clients()
    assert (a2.identity, a2.key, a2.name, a2.last_seen) == (
        pending.identity,
        pending.key,
        "a",
        NOW + 500,
    )
    assert again.psk_for(pending.identity.encode()) == pending.key
    assert again.psk_for(b.identity.encode()) is None
    assert again.onboarding_open(NOW + 10**9)


def test_journal_is_folded_into_a_snapshot_when_it_grows(tmp_path):
    from coapdev.store import JOURNAL_COMPACT_MIN, JOURNAL_FILE

    store = CredentialStore.open(tmp_path / "s")
    a = store.mint_client("a", now=NOW)
    for i in range(JOURNAL_COMPACT_MIN + 5):
        store.rename(a.id, f"a{i}")
    lines = (tmp_path / "s" / JOURNAL_FILE).read_bytes().splitlines()
    assert len(lines) < 10  # compacted once, then a few appends
    [in_snapshot] = json.loads((tmp_path / "s" / STATE_FILE).read_text())["clients"]
    assert in_snapshot["name"].startswith("a2")
    assert CredentialStore.open(tmp_path / "s").client(a.id).name == f"a{JOURNAL_COMPACT_MIN + 4}"


def test_a_journal_line_cut_short_by_a_crash_is_dropped(store, tmp_path):
    from coapdev.store import JOURNAL_FILE

    state = tmp_path / "state"
    kept = store.mint_client("kept", now=NOW)
    journal = state / JOURNAL_FILE
    journal.write_bytes(journal.read_bytes() + b'{"op":"client","client":{"id":"x')
    again = CredentialStore.open(state)
    assert [c.id for c in again.clients()] == [kept.id]
    later = again.mint_client("later", now=NOW + 1)  # the torn tail forces a fresh snapshot
    assert [c.id for c in CredentialStore.open(state).clients()] == [kept.id, later.id]
    assert b'"id":"x' not in journal.read_bytes()


def test_a_corrupt_journal_line_is_a_clear_error(store, tmp_path):
    from coapdev.store import JOURNAL_FILE

    store.mint_client("a", now=NOW)
    store.mint_client("b", now=NOW)
    journal = tmp_path / "state" / JOURNAL_FILE
    lines = journal.read_bytes().split(b"\n")
    lines[1] = b'{"op":"client","client":{"id":"nope"}}'
    journal.write_bytes(b"\n".join(lines))
    with pytest.raises(CorruptStateFile) as info:
        CredentialStore.open(tmp_path / "state")
    assert str(journal) in str(info.value) and "line 2" in str(info.value)


def test_a_journal_left_from_an_older_snapshot_is_not_replayed(store, tmp_path):
    """A crash between writing a new snapshot and starting its journal."""
    from coapdev.store import JOURNAL_FILE

    state = tmp_path / "state"
    a = store.mint_client("a", now=NOW)
    old_journal = (state / JOURNAL_FILE).read_bytes()
    store.revoke(a.id, force=True)
    store.compact()
    (state / JOURNAL_FILE).write_bytes(old_journal)  # as if the new journal never got written
    again = CredentialStore.open(state)
    assert again.clients() == []  # the stale "client a" entry is not replayed
    b = again.mint_client("b", now=NOW)  # and the next change does not append to it
    assert [c.id for c in CredentialStore.open(state).clients()] == [b.id]


def test_the_last_admin_is_neither_revoked_nor_demoted_unless_forced(store):
    admin = store.mint_client("owner", now=NOW)
    user = store.mint_client("phone", now=NOW)
    with pytest.raises(Conflict, match="last admin"):
        store.revoke(admin.id)
    with pytest.raises(Conflict, match="last admin"):
        store.set_role(admin.id, Role.USER)
    assert store.client(admin.id).role is Role.ADMIN
    store.set_role(user.id, Role.ADMIN)
    store.set_role(admin.id, Role.USER)  # another admin exists now
    with pytest.raises(Conflict, match="last admin"):
        store.revoke(user.id)
    store.revoke(user.id, force=True)
    assert not any(c.role is Role.ADMIN for c in store.clients())


# --- the store is never ahead of its disk -------------------------------------------


def _failing(errno_, after_bytes=0):
    """A write_all that writes ``after_bytes`` of the data, then fails like a full disk."""
    import errno as errno_module

    def write_all(fd, data):
        if after_bytes:
            os.write(fd, data[:after_bytes])
        raise OSError(errno_, os.strerror(errno_))

    assert errno_ in (errno_module.ENOSPC, errno_module.EIO, errno_module.EROFS)
    return write_all


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EIO", "EROFS"])
@pytest.mark.parametrize("written", [0, 10])
def test_a_change_that_cannot_be_written_changes_nothing(
    tmp_path, monkeypatch, errno_name, written
):
    import errno

    import coapdev.store.journal as store_module
    from coapdev.errors import StateWriteError

    directory = tmp_path / "state"
    store = CredentialStore.open(directory, now=NOW)
    admin = store.mint_client("owner", now=NOW)
    phone = store.mint_client("stolen-phone", now=NOW)
    journal_before = store.journal_path.read_bytes()
    monkeypatch.setattr(store_module, "write_all", _failing(getattr(errno, errno_name), written))
    with pytest.raises(StateWriteError) as info:
        store.revoke(phone.id)
    assert info.value.code == "5.03"
    expected = {"ENOSPC": "state directory full", "EIO": "I/O error", "EROFS": "read-only"}
    assert expected[errno_name] in info.value.message
    # Memory is as acknowledged: the phone is still there, and so is its key.
    assert store.find_client("stolen-phone").id == phone.id
    assert store.psk_for(phone.identity.encode()) == phone.key
    assert store.journal_path.read_bytes() == journal_before  # cut back to where it was
    monkeypatch.undo()
    # The retry works and is journalled; a later change journals only itself.
    store.revoke(phone.id)
    store.rename(admin.id, "boss")
    reopened = CredentialStore.open(directory)
    assert [c.name for c in reopened.clients()] == ["boss"]
    assert reopened.psk_for(phone.identity.encode()) is None


def test_a_snapshot_that_cannot_be_written_changes_nothing(tmp_path, monkeypatch):
    import errno

    import coapdev.store.journal as store_module
    from coapdev.errors import StateWriteError

    directory = tmp_path / "state"
    store = CredentialStore.open(directory, now=NOW)
    store.mint_client("owner", now=NOW)

    def full(path, data, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module, "write_atomic", full)
    with pytest.raises(StateWriteError, match="state directory full"):
        store.factory_reset(new_factory_key=True, now=NOW)
    assert [c.name for c in store.clients()] == ["owner"]
    monkeypatch.undo()
    assert [c.name for c in CredentialStore.open(directory).clients()] == ["owner"]


def test_a_flipped_bit_in_a_stored_key_names_the_file_and_line(store, tmp_path):
    record = store.mint_client("a", now=NOW)
    store.compact()
    path = tmp_path / "state" / STATE_FILE
    text = path.read_text()
    hex_key = record.key.hex()
    flipped = format(int(hex_key[0], 16) ^ 1, "x") + hex_key[1:]
    path.write_text(text.replace(hex_key, flipped))
    line = text[: text.index(hex_key)].count("\n") + 1
    with pytest.raises(CorruptStateFile, match=rf"{STATE_FILE}: line {line}: .*checksum"):
        CredentialStore.open(tmp_path / "state")


def test_a_flipped_bit_in_a_journalled_key_names_the_line(store, tmp_path):
    store.mint_client("a", now=NOW)
    b = store.mint_client("b", now=NOW)
    journal = store.journal_path
    hex_key = b.key.hex()
    flipped = format(int(hex_key[0], 16) ^ 1, "x") + hex_key[1:]
    journal.write_text(journal.read_text().replace(hex_key, flipped))
    with pytest.raises(CorruptStateFile, match=r"journal: line 3: .*checksum"):
        CredentialStore.open(tmp_path / "state")


# --- one namespace ---------------------------------------------------------------------


def test_ids_identities_names_and_retired_identities_form_one_namespace(store):
    admin = store.mint_client("admin", now=NOW)
    store.confirm_rekey(store.begin_rekey(admin.id, now=NOW).identity)
    admin = store.client(admin.id)
    assert admin.identity != admin.id
    user = store.mint_client("user", now=NOW)
    for taken in (admin.id, admin.identity, "admin", FACTORY_IDENTITY):
        with pytest.raises(Conflict):
            store.mint_client("t", now=NOW, identity=taken, origin=Origin.TRADFRI)
        with pytest.raises(Conflict):
            store.rename(user.id, taken)
    # A native onboarding that asks for a taken name gets a free one.
    assert store.mint_client(admin.id, now=NOW).name == f"{admin.id}-2"
    # Identities never come back: not after a rotation, a revoke, or a factory reset.
    old = store.client(user.id).identity
    store.revoke(user.id)
    with pytest.raises(Conflict, match="identity on this device before"):
        store.mint_client("again", now=NOW, identity=old, origin=Origin.TRADFRI)
    store.factory_reset(new_factory_key=False, now=NOW)
    with pytest.raises(Conflict):
        store.mint_client("again", now=NOW, identity=admin.id, origin=Origin.TRADFRI)
    reopened = CredentialStore.open(store.directory)
    assert reopened.taken(old) is not None and reopened.taken(admin.identity) is not None


def test_an_ambiguous_reference_is_refused(tmp_path):
    """A state file edited by hand may let one string name two clients: refuse, do not guess."""
    store = CredentialStore.open(tmp_path / "state", now=NOW)
    a = store.mint_client("a", now=NOW)
    b = store.mint_client("b", now=NOW)
    store.compact()
    path = tmp_path / "state" / STATE_FILE
    doc = json.loads(path.read_text())
    for entry in doc["clients"]:
        if entry["id"] == b.id:
            entry["name"] = a.id
    path.write_text(json.dumps(doc))
    (tmp_path / "state" / "credentials.journal").unlink()
    reopened = CredentialStore.open(tmp_path / "state")
    with pytest.raises(Conflict, match="names several clients"):
        reopened.find_client(a.id)


def test_invalidated_credentials_are_announced_whatever_changed_them(store, tmp_path):
    from coapdev.store import Credential

    heard = []
    store.listeners.append(heard.append)
    a = store.mint_client("a", now=NOW)
    b = store.mint_client("b", now=NOW)
    first_identity = b.identity
    pending = store.begin_rekey(b.id, now=NOW)
    replaced = store.begin_rekey(b.id, now=NOW)  # the first pending key never opens anything
    assert heard == [frozenset({Credential(pending.identity)})]
    store.confirm_rekey(replaced.identity)
    assert heard[-1] == frozenset({Credential(first_identity)})
    # Another process revokes; this one reloads on its next change, not on a poll.
    other = CredentialStore.open(tmp_path / "state")
    other.revoke(a.id, force=True)
    store.rename(b.id, "bee")
    assert heard[-1] == frozenset({Credential(a.identity)})
    factory = store.current_credential(FACTORY_IDENTITY)
    other.factory_reset(new_factory_key=True, now=NOW)
    assert store.refresh()
    assert factory in heard[-1] and Credential(replaced.identity) in heard[-1]
