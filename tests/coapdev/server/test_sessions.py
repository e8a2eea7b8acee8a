"""The DTLS session table without sockets or tinydtls: caps, eviction order, timeouts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from coapdev.server.dtls.sessions import (
    CLOSED,
    CONNECTED,
    HANDSHAKE,
    Cause,
    SessionTable,
)


@dataclass(eq=False)
class FakeSession:
    sockaddr: tuple
    started: float = 0.0
    last_active: float = 0.0
    phase: Any = None
    counted_identity: str | None = None
    credential: Any = None
    key: tuple = field(init=False)
    session_key: tuple = field(init=False)

    def __post_init__(self) -> None:
        self.key = self.sockaddr[:2]
        self.session_key = self.sockaddr[:2]


def table(**caps: Any) -> SessionTable:
    options = dict(
        max_sessions=100,
        max_handshakes=100,
        max_sessions_per_host=100,
        max_sessions_per_identity=100,
        handshake_timeout_s=20.0,
        idle_timeout_s=3600.0,
    )
    options.update(caps)
    return SessionTable(**options)


def open_session(t: SessionTable, host: str, port: int, now: float = 0.0) -> FakeSession:
    """What the transport does for a new handshake: perform the evictions, then add."""
    for eviction in t.evictions_for_new(host):
        t.remove(eviction.entry)
    entry = FakeSession((host, port), started=now, last_active=now)
    t.add(entry)
    return entry


def connect(t: SessionTable, entry: FakeSession, identity: str) -> FakeSession | None:
    victim = t.connected(entry, identity)
    if victim is None:
        return None
    assert victim.cause is Cause.IDENTITY_CAP
    t.remove(victim.entry)
    return victim.entry


def test_phases_move_only_forward():
    t = table()
    entry = open_session(t, "10.0.0.1", 1)
    assert entry.phase is HANDSHAKE and t.handshakes == 1 and len(t) == 1
    connect(t, entry, "alice")
    assert entry.phase is CONNECTED and t.handshakes == 0
    assert t.sessions_of_identity("alice") == 1
    assert t.remove(entry) and entry.phase is CLOSED
    assert len(t) == 0 and t.sessions_of_host("10.0.0.1") == 0
    assert t.sessions_of_identity("alice") == 0 and not t.by_session_key
    assert not t.remove(entry)  # twice: nothing held any more


def test_handshakes_make_room_before_established_sessions():
    t = table(max_sessions=3)
    established = [open_session(t, "10.0.0.1", p) for p in (1, 2)]
    for entry in established:
        connect(t, entry, "alice")
    half_open = open_session(t, "10.0.0.2", 1)
    evictions = t.evictions_for_new("10.0.0.3")
    assert [(e.entry, e.cause) for e in evictions] == [(half_open, Cause.HANDSHAKE_CAP)]
    assert len(t) == 3  # deciding changes nothing


def test_total_cap_evicts_the_least_recently_active():
    t = table(max_sessions=2)
    a, b = open_session(t, "10.0.0.1", 1), open_session(t, "10.0.0.2", 1)
    connect(t, a, "alice")
    connect(t, b, "bob")
    t.touch(a, 5.0)  # a was active last: b is the oldest now
    evictions = t.evictions_for_new("10.0.0.3")
    assert [(e.entry, e.cause) for e in evictions] == [(b, Cause.SESSION_CAP)]


def test_handshake_cap_abandons_the_oldest_handshake():
    t = table(max_handshakes=2)
    first, second = open_session(t, "10.0.0.1", 1), open_session(t, "10.0.0.1", 2)
    assert [e.entry for e in t.evictions_for_new("10.0.0.9")] == [first]
    t.remove(first)
    assert t.evictions_for_new("10.0.0.9") == []
    assert t.handshakes == 1 and t.get(second.key) is second


def test_a_host_only_crowds_out_itself():
    t = table(max_sessions_per_host=2)
    other = open_session(t, "10.0.0.2", 1)
    mine = [open_session(t, "10.0.0.1", p) for p in (1, 2)]
    for entry in (other, *mine):
        connect(t, entry, "x")
    evictions = t.evictions_for_new("10.0.0.1")
    assert [(e.entry, e.cause) for e in evictions] == [(mine[0], Cause.HOST_CAP)]
    assert t.evictions_for_new("10.0.0.2") == []


def test_ipv4_mapped_addresses_count_as_their_ipv4_host():
    t = table(max_sessions_per_host=1)
    open_session(t, "::ffff:10.0.0.1", 1)
    assert [e.cause for e in t.evictions_for_new("10.0.0.1")] == [Cause.HOST_CAP]


def test_identity_cap_evicts_that_identitys_least_recently_active_session():
    t = table(max_sessions_per_identity=2)
    first, second, third = (open_session(t, "10.0.0.1", p) for p in (1, 2, 3))
    assert connect(t, first, "alice") is None
    assert connect(t, second, "alice") is None
    t.touch(first, 3.0)
    assert connect(t, third, "alice") is second
    assert t.sessions_of_identity("alice") == 2 and not t.holds(second)
    other = open_session(t, "10.0.0.1", 4)
    assert connect(t, other, "bob") is None  # another identity's allowance


def test_stalled_handshakes_and_idle_sessions_expire():
    t = table(handshake_timeout_s=20.0, idle_timeout_s=100.0)
    stalled = open_session(t, "10.0.0.1", 1, now=0.0)
    idle = open_session(t, "10.0.0.1", 2, now=0.0)
    connect(t, idle, "alice")
    busy = open_session(t, "10.0.0.1", 3, now=0.0)
    connect(t, busy, "alice")
    t.touch(busy, 90.0)
    assert t.expired(10.0) == []
    assert [(e.entry, e.cause) for e in t.expired(21.0)] == [(stalled, Cause.HANDSHAKE_TIMEOUT)]
    assert {(e.entry.key, e.cause) for e in t.expired(101.0)} == {
        (stalled.key, Cause.HANDSHAKE_TIMEOUT),
        (idle.key, Cause.IDLE),
    }
    assert Cause.HANDSHAKE_TIMEOUT.is_handshake and not Cause.IDLE.is_handshake


def test_sessions_of_revoked_credentials_are_found():
    t = table()
    a, b = open_session(t, "10.0.0.1", 1), open_session(t, "10.0.0.1", 2)
    a.credential, b.credential = "key-a", "key-b"
    assert t.with_credential(["key-b"]) == [b]


def test_a_flood_of_handshakes_never_grows_the_table_past_its_caps():
    t = table(max_sessions=50, max_handshakes=10, max_sessions_per_host=5)
    established = open_session(t, "10.9.9.9", 1)
    connect(t, established, "keeper")
    for i in range(2000):
        open_session(t, f"10.0.{i % 250}.{i % 7}", 1000 + i, now=float(i))
        assert len(t) <= 50 and t.handshakes <= 10
    assert t.holds(established)  # handshakes made room for each other, not for it
