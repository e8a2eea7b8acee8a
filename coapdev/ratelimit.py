"""Throttling of failed handshakes and onboarding attempts, per source, without I/O.

A token bucket per source: ``burst`` attempts at once, refilled at
``per_minute``.  A source with an empty bucket is ignored until it refills,
which makes guessing the factory key online hopeless (see docs/security.md)
while other sources are not affected.  IPv6 sources are grouped by /64, the
block one host can hop around in.  The clock is passed in, so tests control
time.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


def source_key(host: str) -> str:
    """The unit of throttling: an IPv4 address, or an IPv6 /64."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        if address.is_loopback:
            return str(address)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


@dataclass
class _Bucket:
    tokens: float
    updated: float


class AttemptLimiter:
    def __init__(
        self,
        burst: int = 10,
        per_minute: float = 6.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_sources: int = 100_000,
    ) -> None:
        self.burst = float(burst)
        self.rate_per_s = per_minute / 60.0
        self.clock = clock
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def _bucket(self, host: str) -> _Bucket:
        key = source_key(host)
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            self._buckets[key] = bucket
            while len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        else:
            bucket.tokens = min(
                self.burst, bucket.tokens + (now - bucket.updated) * self.rate_per_s
            )
            bucket.updated = now
            self._buckets.move_to_end(key)
        return bucket

    def allowed(self, host: str) -> bool:
        """Whether a source may try now (does not use up anything)."""
        key = source_key(host)
        if key not in self._buckets:
            return True
        return self._bucket(host).tokens >= 1.0

    def failure(self, host: str) -> None:
        """A failed attempt: uses up one token."""
        bucket = self._bucket(host)
        bucket.tokens = max(0.0, bucket.tokens - 1.0)

    def attempt(self, host: str) -> bool:
        """An attempt that always costs a token (onboarding); False if none is left."""
        bucket = self._bucket(host)
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def retry_after_s(self, host: str) -> float:
        bucket = self._bucket(host)
        missing = max(0.0, 1.0 - bucket.tokens)
        return missing / self.rate_per_s if self.rate_per_s else float("inf")
