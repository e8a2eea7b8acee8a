from coapdev.ratelimit import AttemptLimiter, source_key


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_burst_then_refill():
    clock = Clock()
    limiter = AttemptLimiter(burst=3, per_minute=6, clock=clock)
    for _ in range(3):
        assert limiter.allowed("10.0.0.1")
        limiter.failure("10.0.0.1")
    assert not limiter.allowed("10.0.0.1")
    assert limiter.allowed("10.0.0.2")  # others are not affected
    clock.t += 9.9
    assert not limiter.allowed("10.0.0.1")
    clock.t += 0.2  # 6 per minute: one every 10 s
    assert limiter.allowed("10.0.0.1")


def test_attempts_cost_a_token_each():
    clock = Clock()
    limiter = AttemptLimiter(burst=2, per_minute=1, clock=clock)
    assert limiter.attempt("h") and limiter.attempt("h")
    assert not limiter.attempt("h")
    assert 59 < limiter.retry_after_s("h") <= 60


def test_ipv6_is_grouped_by_64_and_mapped_v4_by_address():
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:bbbb::2")
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_key("fe80::1%eth0") == "fe80::/64"


def test_memory_is_bounded():
    limiter = AttemptLimiter(burst=1, per_minute=1, max_sources=100)
    for i in range(1000):
        limiter.failure(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter._buckets) == 100


# --- state-changing operations: per client, per host, in total ------------------------


def test_changes_are_limited_per_client():
    from coapdev.ratelimit import ChangeLimiter

    clock = Clock()
    limiter = ChangeLimiter(burst=3, per_minute=6, total_per_s=1000, clock=clock)
    assert [limiter.check("alice", "10.0.0.1") for _ in range(3)] == [None] * 3
    refusal = limiter.check("alice", "10.0.0.2")  # another host: the client's budget is spent
    assert refusal is not None and refusal.scope == "client"
    assert 9 < refusal.retry_after_s <= 10
    assert limiter.check("bob", "10.0.0.3") is None
    clock.t += 10
    assert limiter.check("alice", "10.0.0.2") is None


def test_changes_are_limited_per_host_across_clients():
    from coapdev.ratelimit import ChangeLimiter

    limiter = ChangeLimiter(burst=3, per_minute=6, total_per_s=1000, clock=Clock())
    assert [limiter.check(f"client-{i}", "10.0.0.1") for i in range(3)] == [None] * 3
    refusal = limiter.check("client-9", "10.0.0.1:999")
    assert refusal is not None and refusal.scope == "host"
    assert limiter.check(None, "2001:db8::1") is None  # the factory identity: host only


def test_changes_are_limited_in_total_and_a_refusal_costs_nothing():
    from coapdev.ratelimit import ChangeLimiter

    clock = Clock()
    limiter = ChangeLimiter(burst=100, per_minute=100, total_per_s=2, clock=clock)
    assert limiter.check("a", "10.0.0.1") is None and limiter.check("b", "10.0.0.2") is None
    refusal = limiter.check("c", "10.0.0.3")
    assert refusal is not None and refusal.scope == "device"
    assert 0 < refusal.retry_after_s <= 0.5
    clock.t += 0.5
    assert limiter.check("c", "10.0.0.3") is None  # c's refused try did not cost it a token


def test_change_limiter_memory_is_bounded():
    from coapdev.ratelimit import ChangeLimiter

    limiter = ChangeLimiter(burst=1, per_minute=1, total_per_s=1e9, max_keys=50, clock=Clock())
    for i in range(500):
        limiter.check(f"c{i}", f"10.0.{i // 256}.{i % 256}")
    assert limiter.tracked() <= 100
