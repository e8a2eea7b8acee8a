"""Bounds on what peers may make the server remember, without any I/O.

aiocoap keeps every request it handled for EXCHANGE_LIFETIME (247 s, for
duplicate detection), with its answer and a timer: a few kilobytes each, and
a client can send thousands a second.  :class:`BoundedDuplicates` keeps the
same memory with a bound per session and in total (with NSTART = 1, RFC 7252
4.7, a client has one exchange in flight; the last few suffice).
:class:`Tally` counts what each identity and source host holds (sessions,
observations) against a cap.  The clock is passed in.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Hashable
from typing import Any

#: RFC 7252 EXCHANGE_LIFETIME with default transmission parameters: how long
#: aiocoap remembers a request.
EXCHANGE_LIFETIME_S = 247.0

# Defaults of the bounds below, defined once: the server's options and the
# gateway's [limits] config take them from here (docs/reliability.md gives
# the worst case they imply).
#: Concurrent DTLS sessions, and handshakes in progress, in all.
MAX_SESSIONS = 5000
MAX_HANDSHAKES = 256
#: A session idle this long is closed; a handshake not done in this long is abandoned.
IDLE_TIMEOUT_S = 3600.0
HANDSHAKE_TIMEOUT_S = 20.0
#: Sessions one source host, and one identity, may hold.
MAX_SESSIONS_PER_HOST = 64
MAX_SESSIONS_PER_IDENTITY = 16
#: Exchanges remembered for duplicate detection, per session and in total.
MAX_EXCHANGES_PER_SESSION = 16
MAX_EXCHANGES = 2048
#: Observations per session, per client, per source host, and in total.
MAX_OBSERVATIONS_PER_SESSION = 64
MAX_OBSERVATIONS_PER_CLIENT = 256
MAX_OBSERVATIONS_PER_HOST = 256
MAX_OBSERVATIONS = 4096
#: Blockwise uploads in progress per resource.
MAX_UPLOADS_PER_RESOURCE = 32


class BoundedDuplicates:
    """Recent exchanges by (session, message id), with the answer to send again.

    Oldest first out, per session and in total, and nothing older than
    ``lifetime_s``; a session's entries go when it ends.  No timers.
    """

    def __init__(
        self,
        per_session: int,
        total: int,
        *,
        lifetime_s: float = EXCHANGE_LIFETIME_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_session = per_session
        self.total = total
        self.lifetime_s = lifetime_s
        self.clock = clock
        #: (session, mid) -> [when, answer or None while in progress], oldest first.
        self._entries: collections.OrderedDict[tuple[Any, int], list[Any]] = (
            collections.OrderedDict()
        )
        self._per_session: dict[Any, collections.deque[int]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, session: Any, mid: int) -> list[Any] | None:
        """The entry of an exchange seen before (a duplicate), else None after noting it."""
        now = self.clock()
        self._expire(now)
        key = (session, mid)
        entry = self._entries.get(key)
        if entry is not None:
            return entry
        mids = self._per_session.setdefault(session, collections.deque())
        while len(mids) >= self.per_session:
            self._entries.pop((session, mids.popleft()), None)
        while len(self._entries) >= self.total:
            (old_session, old_mid), _ = self._entries.popitem(last=False)
            self._drop_mid(old_session, old_mid)
        self._entries[key] = [now, None]
        mids.append(mid)
        return None

    def answered(self, session: Any, mid: int, answer: Any) -> None:
        entry = self._entries.get((session, mid))
        if entry is not None:
            entry[1] = answer

    def forget(self, session: Any) -> None:
        """A session ended: its exchanges cannot come back."""
        for mid in self._per_session.pop(session, ()):
            self._entries.pop((session, mid), None)

    def _expire(self, now: float) -> None:
        horizon = now - self.lifetime_s
        entries = self._entries
        while entries:
            (session, mid), entry = next(iter(entries.items()))
            if entry[0] > horizon:
                return
            entries.popitem(last=False)
            self._drop_mid(session, mid)

    def _drop_mid(self, session: Any, mid: int) -> None:
        mids = self._per_session.get(session)
        if mids is None:
            return
        try:
            mids.remove(mid)
        except ValueError:
            return
        if not mids:
            del self._per_session[session]


class Tally:
    """Counts per key (an identity, a host) against a cap."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._counts: collections.Counter[Hashable] = collections.Counter()

    def full(self, key: Hashable) -> bool:
        return self._counts[key] >= self.cap

    def add(self, key: Hashable) -> None:
        self._counts[key] += 1

    def remove(self, key: Hashable) -> None:
        count = self._counts[key] - 1
        if count > 0:
            self._counts[key] = count
        else:
            del self._counts[key]

    def __getitem__(self, key: Hashable) -> int:
        return self._counts.get(key, 0)

    def __len__(self) -> int:
        return len(self._counts)


def host_of(sockaddr: Any) -> str:
    """The source host of a socket address, IPv4-mapped addresses unwrapped."""
    host = sockaddr[0]
    return host[7:] if host.startswith("::ffff:") and "." in host else host
