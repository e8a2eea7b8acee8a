"""Rate limits without I/O: failed handshakes, onboarding attempts, state changes.

A token bucket per key: ``burst`` at once, refilled at ``per_minute``.

- :class:`AttemptLimiter`, per source host: a source with an empty bucket
  is ignored until it refills, which makes guessing the factory key online
  hopeless (see docs/security.md) while other sources are not affected.
- :class:`ChangeLimiter`: every state-changing operation a client can
  trigger (onboarding, rekey, rename, role, revoke) costs a token of the
  client, of its host and of the device as a whole; the last bounds the
  journal's fsyncs per second.

Sources are hosts, never host and port (a new port is free to take): IPv6
sources are grouped by /64, the block one host can hop around in.  The
clock is passed in, so tests control time.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


def host_of(source: str) -> str:
    """The host of a source written as ``ip``, ``ip:port`` or ``[ipv6]:port``."""
    if source.startswith("["):
        return source[1:].split("]", 1)[0]
    if source.count(":") == 1:
        return source.split(":", 1)[0]
    return source


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


class TokenBuckets:
    """A token bucket per key, the least recently used forgotten past ``max_keys``."""

    def __init__(
        self,
        burst: float,
        per_minute: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.burst = float(burst)
        self.rate_per_s = per_minute / 60.0
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: OrderedDict[object, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _bucket(self, key: object) -> _Bucket:
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            self._buckets[key] = bucket
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            bucket.tokens = min(
                self.burst, bucket.tokens + (now - bucket.updated) * self.rate_per_s
            )
            bucket.updated = now
            self._buckets.move_to_end(key)
        return bucket

    def tokens(self, key: object) -> float:
        """Tokens left for ``key`` now (a new key has a full bucket)."""
        if key not in self._buckets:
            return self.burst
        return self._bucket(key).tokens

    def take(self, key: object) -> bool:
        """Use up one token; False (and nothing used) if none is left."""
        bucket = self._bucket(key)
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def spend(self, key: object) -> None:
        """Use up one token, going no lower than empty."""
        bucket = self._bucket(key)
        bucket.tokens = max(0.0, bucket.tokens - 1.0)

    def retry_after_s(self, key: object) -> float:
        """Seconds until ``key`` has a token again (0 if it has one)."""
        missing = max(0.0, 1.0 - self.tokens(key))
        if not missing:
            return 0.0
        return missing / self.rate_per_s if self.rate_per_s else float("inf")


class AttemptLimiter(TokenBuckets):
    """Failed handshakes and onboarding attempts, per source host."""

    def __init__(
        self,
        burst: int = 10,
        per_minute: float = 6.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_sources: int = 100_000,
    ) -> None:
        super().__init__(burst, per_minute, clock=clock, max_keys=max_sources)

    def allowed(self, host: str) -> bool:
        """Whether a source may try now (does not use up anything)."""
        return self.tokens(source_key(host)) >= 1.0

    def failure(self, host: str) -> None:
        """A failed attempt: uses up one token."""
        self.spend(source_key(host))

    def attempt(self, host: str) -> bool:
        """An attempt that always costs a token (onboarding); False if none is left."""
        return self.take(source_key(host))

    def retry_after_s(self, host: str) -> float:  # type: ignore[override]
        return super().retry_after_s(source_key(host))


@dataclass(frozen=True)
class ChangeRefused:
    """Why a state change must wait: whose budget is spent, and for how long."""

    scope: str  # "client", "host" or "device"
    retry_after_s: float


class ChangeLimiter:
    """State-changing operations: per client, per host and for the whole device.

    A change is allowed only if all three budgets have a token, and then
    costs one of each; a refused change costs nothing.  The device budget
    (``total_per_s``, with a burst of one second's worth) bounds the
    journal writes, so the fsyncs, that clients can cause per second.
    """

    def __init__(
        self,
        burst: int = 20,
        per_minute: float = 10.0,
        total_per_s: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.clients = TokenBuckets(burst, per_minute, clock=clock, max_keys=max_keys)
        self.hosts = TokenBuckets(burst, per_minute, clock=clock, max_keys=max_keys)
        self.device = TokenBuckets(max(1.0, total_per_s), total_per_s * 60, clock=clock)

    def configure(self, burst: int, per_minute: float, total_per_s: float) -> None:
        for buckets in (self.clients, self.hosts):
            buckets.burst = float(burst)
            buckets.rate_per_s = per_minute / 60.0
        self.device.burst = max(1.0, total_per_s)
        self.device.rate_per_s = total_per_s

    def check(self, client: str | None, source: str) -> ChangeRefused | None:
        """None if the change may go ahead (its tokens taken), else why not."""
        budgets: list[tuple[str, TokenBuckets, object]] = [
            ("device", self.device, "*"),
            ("host", self.hosts, source_key(host_of(source))),
        ]
        if client is not None:
            budgets.append(("client", self.clients, client))
        for scope, buckets, key in budgets:
            if buckets.tokens(key) < 1.0:
                return ChangeRefused(scope, buckets.retry_after_s(key))
        for _, buckets, key in budgets:
            buckets.take(key)
        return None

    def tracked(self) -> int:
        return len(self.clients) + len(self.hosts)
