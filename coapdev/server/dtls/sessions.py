"""The session table: which DTLS sessions exist, their phase, caps and eviction.

Socket-free and tinydtls-free (h11's shape): the table holds session
entries by source address, counts them per source host and per identity,
and *decides*: which sessions make room for a new handshake, which one a
newly connected session pushes out of its identity's allowance, which have
stalled or idled past their timeout.  The clock is passed in.  The transport
performs each decision (close_notify or not, the failure hook) and then
calls :meth:`SessionTable.remove`; nothing here sends or frees anything.

Phases, and the only transitions (all made here)::

    HANDSHAKE --connected()--> CONNECTED
    HANDSHAKE --remove()-----> CLOSED
    CONNECTED --remove()-----> CLOSED

An entry is anything with the attributes of :class:`Entry`
(:class:`~coapdev.server.dtls.peer.DtlsPeer` in the server; a plain object in
tests/coapdev/server/test_sessions.py).
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Collection, Iterator
from typing import Any, NamedTuple, Protocol

from ..budget import Tally, host_of


class Phase(enum.Enum):
    HANDSHAKE = "handshake"
    CONNECTED = "connected"
    CLOSED = "closed"


# Plain module names for the per-datagram checks.
HANDSHAKE = Phase.HANDSHAKE
CONNECTED = Phase.CONNECTED
CLOSED = Phase.CLOSED


class Cause(enum.Enum):
    """Why the table wants a session gone: (the stats counter, the log reason)."""

    HANDSHAKE_CAP = ("evicted-handshake-cap", "too many handshakes in progress")
    SESSION_CAP = ("evicted-cap", "session cap reached")
    HOST_CAP = ("evicted-host-cap", "sessions per host cap reached")
    IDENTITY_CAP = ("evicted-identity-cap", "sessions per identity cap reached")
    HANDSHAKE_TIMEOUT = ("handshake-timeout", "handshake timed out")
    IDLE = ("evicted-idle", "idle")

    @property
    def stat(self) -> str:
        return self.value[0]

    @property
    def reason(self) -> str:
        return self.value[1]

    @property
    def is_handshake(self) -> bool:
        """The session is still handshaking: abandoned (counts as a failed handshake,
        no close_notify); otherwise the session is closed with close_notify."""
        return self in (Cause.HANDSHAKE_CAP, Cause.HANDSHAKE_TIMEOUT)


class Eviction(NamedTuple):
    entry: Any
    cause: Cause


class Entry(Protocol):
    """What the table reads and writes on a session entry."""

    key: tuple
    sockaddr: Any
    #: (address, port) as tinydtls names the session (to find it from tinydtls's callbacks).
    session_key: tuple[str, int]
    phase: Phase
    started: float
    last_active: float
    #: The identity this session counts against (set by :meth:`SessionTable.connected`).
    counted_identity: str | None
    #: The credential the session was authenticated with (for revocation).
    credential: Any


class SessionTable:
    """Sessions by (host, port), least recently active first; caps per host,
    per identity and in total; handshakes in progress capped and oldest first."""

    def __init__(
        self,
        *,
        max_sessions: int,
        max_handshakes: int,
        max_sessions_per_host: int,
        max_sessions_per_identity: int,
        handshake_timeout_s: float,
        idle_timeout_s: float,
    ) -> None:
        self.max_sessions = max_sessions
        self.max_handshakes = max_handshakes
        self.handshake_timeout_s = handshake_timeout_s
        self.idle_timeout_s = idle_timeout_s
        #: Sessions by (host, port), least recently active first.
        self._entries: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
        #: The same sessions by tinydtls's (address, port).
        self.by_session_key: dict[tuple[str, int], Any] = {}
        #: Sessions still in their handshake, oldest first (a subset of the above).
        self._handshaking: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
        self._by_host = Tally(max_sessions_per_host)
        self._by_identity = Tally(max_sessions_per_identity)

    # --- reading ---

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._entries.values()))

    def get(self, key: tuple) -> Any:
        return self._entries.get(key)

    def holds(self, entry: Any) -> bool:
        return self._entries.get(entry.key) is entry

    @property
    def handshakes(self) -> int:
        return len(self._handshaking)

    def sessions_of_host(self, host: str) -> int:
        return self._by_host[host]

    def sessions_of_identity(self, identity: str) -> int:
        return self._by_identity[identity]

    def with_credential(self, credentials: Collection[Any]) -> list[Any]:
        wanted = set(credentials)
        return [e for e in self._entries.values() if e.credential in wanted]

    # --- decisions ---

    def evictions_for_new(self, host: str) -> list[Eviction]:
        """What must go before a new handshake from ``host`` gets an entry.

        Handshakes in progress go first (oldest first), so a flood of
        half-open handshakes never pushes out an established session; then
        the least recently active sessions, past the total cap; then the
        host's own least recently active session, past its cap (a host can
        only crowd out itself).
        """
        out: list[Eviction] = []
        chosen: set[int] = set()
        entries = len(self._entries)
        handshakes = len(self._handshaking)
        oldest_handshakes = iter(self._handshaking.values())
        while handshakes and (handshakes >= self.max_handshakes or entries >= self.max_sessions):
            entry = next(oldest_handshakes)
            out.append(Eviction(entry, Cause.HANDSHAKE_CAP))
            chosen.add(id(entry))
            handshakes -= 1
            entries -= 1
        if entries >= self.max_sessions:
            for entry in self._entries.values():
                if entries < self.max_sessions:
                    break
                if id(entry) not in chosen:
                    out.append(Eviction(entry, Cause.SESSION_CAP))
                    chosen.add(id(entry))
                    entries -= 1
        held = self._by_host[host] - sum(1 for e, _ in out if host_of(e.sockaddr) == host)
        if held >= self._by_host.cap:
            oldest = next(
                (
                    e
                    for e in self._entries.values()
                    if id(e) not in chosen and host_of(e.sockaddr) == host
                ),
                None,
            )
            if oldest is not None:
                out.append(Eviction(oldest, Cause.HOST_CAP))
        return out

    def expired(self, now: float) -> list[Eviction]:
        """Handshakes not finished within the handshake timeout; sessions idle too long."""
        out: list[Eviction] = []
        for entry in self._entries.values():
            if entry.phase is HANDSHAKE:
                if now - entry.started > self.handshake_timeout_s:
                    out.append(Eviction(entry, Cause.HANDSHAKE_TIMEOUT))
            elif now - entry.last_active > self.idle_timeout_s:
                out.append(Eviction(entry, Cause.IDLE))
        return out

    # --- changes ---

    def add(self, entry: Any) -> None:
        """A new handshake past the cookie exchange (after :meth:`evictions_for_new`)."""
        entry.phase = HANDSHAKE
        self._by_host.add(host_of(entry.sockaddr))
        self._entries[entry.key] = entry
        self._handshaking[entry.key] = entry
        self.by_session_key[entry.session_key] = entry

    def connected(self, entry: Any, identity: str) -> Eviction | None:
        """The handshake finished: the entry counts against ``identity``; past that
        identity's cap, its least recently active other session is to go."""
        entry.phase = CONNECTED
        self._handshaking.pop(entry.key, None)
        victim = None
        if self._by_identity.full(identity):
            oldest = next(
                (
                    e
                    for e in self._entries.values()
                    if e.counted_identity == identity and e is not entry
                ),
                None,
            )
            if oldest is not None:
                victim = Eviction(oldest, Cause.IDENTITY_CAP)
        self._by_identity.add(identity)
        entry.counted_identity = identity
        return victim

    def touch(self, entry: Any, now: float) -> None:
        """Traffic on the session: most recently active now."""
        entry.last_active = now
        self._entries.move_to_end(entry.key)

    def remove(self, entry: Any) -> bool:
        """The session is gone (closed, refused, evicted); whether it was held.
        Its phase is CLOSED afterwards, whatever it was."""
        held = self._entries.get(entry.key) is entry
        if held:
            del self._entries[entry.key]
            self.by_session_key.pop(entry.session_key, None)
            self._by_host.remove(host_of(entry.sockaddr))
        if entry.counted_identity is not None:
            self._by_identity.remove(entry.counted_identity)
            entry.counted_identity = None
        if self._handshaking.get(entry.key) is entry:
            del self._handshaking[entry.key]
        entry.phase = CLOSED
        return held
