"""Log escaping and the repeat limiter, on real logging handlers, with a fake clock."""

from __future__ import annotations

import io
import logging

import pytest

from coapdev import logsafe


@pytest.fixture
def captured():
    """A logger with one stream handler carrying both filters; yields (logger, stream, limiter)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger(f"test.logsafe.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    now = [1000.0]
    limiter = logsafe.install(3, 6.0, logger=logger)  # 3 at once, then one per 10 s
    limiter.clock = lambda: now[0]
    yield logger, stream, limiter, now
    logger.removeHandler(handler)


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("a\nb", "a\\nb"),
        ("\r\t", "\\r\\t"),
        ("\x1b[31m", "\\x1b[31m"),
        ("\x00\x7f\x9b", "\\x00\\x7f\\x9b"),
        ("\u2028\u202e\u2066", "\\u2028\\u202e\\u2066"),
        ("plain /path?q=ü → ok", "plain /path?q=ü → ok"),
    ],
)
def test_escape(raw, escaped):
    assert logsafe.escape(raw) == escaped
    assert not logsafe.UNSAFE_CHARACTERS.search(logsafe.escape(raw))


def test_escape_bytes_keeps_utf8_and_escapes_the_rest():
    assert logsafe.escape_bytes(b"ok \xff\n\xc3\xa9") == "ok \\xff\\né"
    assert logsafe.escape_bytes(b"x" * 50, limit=10) == "x" * 10 + "..."


def test_peer_arguments_cannot_forge_a_line(captured):
    logger, stream, _, _ = captured
    logger.warning("request for %s from %r", "/a\n2026-01-01 ERROR forged", ("h\x1b", 1))
    out = stream.getvalue()
    assert out.count("\n") == 1
    assert "/a\\n2026-01-01 ERROR forged" in out and "\x1b" not in out


def test_tracebacks_keep_their_lines_but_every_line_is_indented(captured):
    logger, stream, _, _ = captured
    try:
        raise ValueError("bad\nFAKE LINE\x1b")
    except ValueError:
        logger.exception("it failed")
    lines = stream.getvalue().rstrip("\n").split("\n")
    assert lines[0] == "ERROR " + logger.name + ": it failed"
    assert all(line.startswith("  ") for line in lines[1:])
    assert any("Traceback" in line for line in lines[1:])
    assert not any(line.startswith("FAKE") for line in lines)
    assert "\x1b" not in stream.getvalue()


def test_a_bad_format_string_is_logged_not_raised(captured):
    logger, stream, _, _ = captured
    logger.warning("%d things", "not a number")
    assert "%d things" in stream.getvalue()


def test_repeats_are_limited_per_call_site_and_summarised(captured):
    logger, stream, limiter, now = captured

    def flood(i: int) -> None:
        logger.warning("flood %d", i)  # one call site

    for i in range(10):
        flood(i)
    logger.warning("another call site")
    lines = stream.getvalue().splitlines()
    assert lines == [
        f"WARNING {logger.name}: flood 0",
        f"WARNING {logger.name}: flood 1",
        f"WARNING {logger.name}: flood 2",
        f"WARNING {logger.name}: another call site",
    ]
    now[0] += 10  # one line's allowance refilled
    flood(10)
    assert stream.getvalue().splitlines()[-1].endswith("flood 10 (7 similar messages suppressed)")
    flood(11)  # suppressed again
    assert limiter.flush(logger) == 1
    assert stream.getvalue().splitlines()[-1].startswith("WARNING " + logger.name + ": 1 similar")
    assert limiter.flush(logger) == 0


def test_the_request_log_is_limited_per_client():
    limiter = logsafe.RepeatLimiter(2, 1.0, clock=lambda: 0.0)

    def record(client: str) -> logging.LogRecord:
        return logging.LogRecord(
            "coapdev.requests", logging.INFO, "x", 1, "client=%s %s", (client, "GET"), None
        )

    assert [limiter.filter(record("a")) for _ in range(4)] == [True, True, False, False]
    assert limiter.filter(record("b"))  # another client has its own allowance


def test_debug_lines_below_the_level_pass_and_keys_are_bounded():
    limiter = logsafe.RepeatLimiter(1, 1.0, clock=lambda: 0.0)
    for i in range(logsafe.MAX_TRACKED_KEYS + 100):
        rec = logging.LogRecord("x", logging.WARNING, "x", i, f"distinct {i}", None, None)
        limiter.filter(rec)
    assert len(limiter._allowances) == logsafe.MAX_TRACKED_KEYS
    debug = [logging.LogRecord("x", logging.DEBUG, "x", 1, "debug", None, None) for _ in range(5)]
    assert all(limiter.filter(record) for record in debug)


def test_two_handlers_see_the_same_decision():
    limiter = logsafe.RepeatLimiter(1, 1.0, clock=lambda: 0.0)
    rec1 = logging.LogRecord("x", logging.WARNING, "x", 1, "m", None, None)
    rec2 = logging.LogRecord("x", logging.WARNING, "x", 1, "m", None, None)
    assert limiter.filter(rec1) and limiter.filter(rec1)  # the second handler: same answer
    assert not limiter.filter(rec2) and not limiter.filter(rec2)


def test_install_is_idempotent():
    logger = logging.getLogger("test.logsafe.idempotent")
    handler = logging.StreamHandler(io.StringIO())
    logger.addHandler(handler)
    try:
        logsafe.install(logger=logger)
        logsafe.install(5, 5.0, logger=logger)
        kinds = sorted(type(f).__name__ for f in handler.filters)
        assert kinds == ["EscapingFilter", "RepeatLimiter"]
    finally:
        logger.removeHandler(handler)
