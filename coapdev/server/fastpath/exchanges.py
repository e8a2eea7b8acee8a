"""The fast path's duplicate detection: each session's last few exchanges.

The fast path owns this state (it used to ride on the session object): it
is keyed weakly by session, so a session's exchanges go when the session
goes, as before, and nothing else need know they exist.
"""

from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from ..budget import EXCHANGE_LIFETIME_S

#: Exchanges remembered per session for duplicate detection.
DEDUP_PER_SESSION = 8

#: (message type, message id): one exchange of one session.
ExchangeKey = tuple[int, int]
#: When it was noted or answered, and its answer (None while in progress).
Exchange = tuple[float, bytes | None]


class RecentExchanges:
    """The last ``per_session`` exchanges of each session, answers kept ``lifetime_s``.

    A retransmitted request gets the same answer again and is not run twice;
    one that arrives while the first is still being served is dropped.
    """

    def __init__(
        self,
        per_session: int = DEDUP_PER_SESSION,
        lifetime_s: float = EXCHANGE_LIFETIME_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_session = per_session
        self.lifetime_s = lifetime_s
        self.clock = clock
        self._by_session: weakref.WeakKeyDictionary[Any, OrderedDict[ExchangeKey, Exchange]] = (
            weakref.WeakKeyDictionary()
        )

    def of(self, session: Any) -> Mapping[ExchangeKey, Exchange]:
        """What is remembered of ``session`` (oldest first)."""
        return self._by_session.get(session, {})

    def __len__(self) -> int:
        """Sessions with exchanges remembered."""
        return len(self._by_session)

    def lookup(self, session: Any, key: ExchangeKey) -> Exchange | None:
        """The exchange seen before under ``key`` (a duplicate), else None after noting it
        as in progress (the oldest of the session's exchanges make room)."""
        recent = self._by_session.get(session)
        if recent is None:
            recent = self._by_session[session] = OrderedDict()
        cached = recent.get(key)
        if cached is not None:
            return cached
        recent[key] = (self.clock(), None)  # in progress: drop retransmissions meanwhile
        while len(recent) > self.per_session:
            recent.popitem(last=False)
        return None

    def replay(self, exchange: Exchange) -> bytes | None:
        """The answer to send again for a duplicate: None while in progress or expired."""
        answered, answer = exchange
        if answer is not None and self.clock() - answered < self.lifetime_s:
            return answer
        return None

    def record(self, session: Any, key: ExchangeKey, answer: bytes) -> bool:
        """Remember ``answer``; False if the exchange was answered already (send nothing)."""
        recent = self._by_session.get(session)
        if recent is not None and key in recent:
            if recent[key][1] is not None:
                return False
            recent[key] = (self.clock(), answer)
        return True
