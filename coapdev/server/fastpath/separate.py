"""Separate responses for the fast path (RFC 7252 5.2.2): acknowledge a slow request at
once, send its answer later as a confirmable message, and retransmit that until the
client acknowledges it.

Without this a fast-path answer that takes long (a script) would ride on the
acknowledgement however late it comes, and a client that keeps one
confirmable request outstanding at a time (NSTART = 1, aiocoap's and
libcoap's default) could not send its next request meanwhile.  Sans-I/O in
spirit: the sending is a callback on the peer, the clock is the event loop's.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

#: RFC 7252 4.8 transmission parameters (the defaults).
ACK_TIMEOUT_S = 2.0
ACK_RANDOM_FACTOR = 1.5
MAX_RETRANSMIT = 4
#: How long an answer may take before the request is acknowledged on its own
#: (aiocoap's EMPTY_ACK_DELAY: an answer within it still rides on the ACK).
EMPTY_ACK_DELAY_S = 0.1
#: Separate answers waiting for their acknowledgement, at most, across all sessions;
#: beyond it an answer is sent once and not retransmitted (memory stays bounded).
MAX_UNACKNOWLEDGED = 4096

_ACK, _RST = 2, 3


def empty_ack(mid: int) -> bytes:
    """An empty acknowledgement of message ``mid``."""
    return bytes([0x40 | (_ACK << 4), 0, mid >> 8, mid & 0xFF])


class Pending:
    """One accepted confirmable request whose answer has not gone out yet."""

    __slots__ = ("acknowledged", "answered", "timer")

    def __init__(self) -> None:
        self.answered = False
        self.acknowledged = False
        self.timer: asyncio.TimerHandle | None = None


class _Unacknowledged:
    __slots__ = ("datagram", "peer", "timer")

    def __init__(self, peer: Any, datagram: bytes) -> None:
        self.peer = peer
        self.datagram = datagram
        self.timer: asyncio.TimerHandle | None = None


class SeparateResponses:
    """Early acknowledgements and confirmable separate answers for one fast path."""

    def __init__(self, rng: Callable[[], float] = random.random) -> None:
        self._rng = rng
        self._unacknowledged: dict[tuple[int, int], _Unacknowledged] = {}
        #: Separate answers sent, acknowledged, retransmitted, given up on.
        self.stats = {"sent": 0, "acknowledged": 0, "retransmitted": 0, "given-up": 0}

    def __len__(self) -> int:
        return len(self._unacknowledged)

    def watch(self, peer: Any, mid: int, pending: Pending) -> None:
        """Acknowledge request ``mid`` on its own if its answer is not out soon."""
        if pending.answered:
            return
        loop = asyncio.get_running_loop()
        pending.timer = loop.call_later(EMPTY_ACK_DELAY_S, self._acknowledge, peer, mid, pending)

    def _acknowledge(self, peer: Any, mid: int, pending: Pending) -> None:
        pending.timer = None
        if not pending.answered:
            pending.acknowledged = True
            peer.send(empty_ack(mid))

    def answered(self, pending: Pending) -> bool:
        """The answer is ready; True if it must go as a separate (confirmable) message."""
        pending.answered = True
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None
        return pending.acknowledged

    def send_confirmable(self, peer: Any, mid: int, datagram: bytes) -> None:
        """Send a separate answer and retransmit it until the client acknowledges it."""
        self.stats["sent"] += 1
        key = (id(peer), mid)
        old = self._unacknowledged.pop(key, None)
        if old is not None and old.timer is not None:
            old.timer.cancel()
        if len(self._unacknowledged) < MAX_UNACKNOWLEDGED:
            entry = _Unacknowledged(peer, datagram)
            self._unacknowledged[key] = entry
            timeout = ACK_TIMEOUT_S * (1 + (ACK_RANDOM_FACTOR - 1) * self._rng())
            loop = asyncio.get_running_loop()
            entry.timer = loop.call_later(timeout, self._retransmit, key, entry, timeout, 1)
        peer.send(datagram)

    def _retransmit(
        self, key: tuple[int, int], entry: _Unacknowledged, timeout: float, n: int
    ) -> None:
        if self._unacknowledged.get(key) is not entry:
            return
        if n > MAX_RETRANSMIT:
            del self._unacknowledged[key]
            self.stats["given-up"] += 1
            return
        self.stats["retransmitted"] += 1
        entry.peer.send(entry.datagram)
        loop = asyncio.get_running_loop()
        entry.timer = loop.call_later(2 * timeout, self._retransmit, key, entry, 2 * timeout, n + 1)

    def on_empty(self, peer: Any, data: bytes) -> bool:
        """Take an empty ACK or RST of one of our separate answers; False if it is not one."""
        if not self._unacknowledged or len(data) != 4 or data[1] != 0:
            return False
        if data[0] >> 6 != 1 or (data[0] >> 4) & 0x03 not in (_ACK, _RST) or data[0] & 0x0F:
            return False
        key = (id(peer), (data[2] << 8) | data[3])
        entry = self._unacknowledged.get(key)
        if entry is None or entry.peer is not peer:
            return False
        del self._unacknowledged[key]
        if entry.timer is not None:
            entry.timer.cancel()
        self.stats["acknowledged"] += 1
        return True
