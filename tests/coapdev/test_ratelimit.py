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
