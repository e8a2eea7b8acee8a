"""The session fuzzers' message builders and judges, without a network."""

from __future__ import annotations

import random

import pytest
from reliability import coapgrammar as grammar
from reliability import handshake as hs
from reliability.dtlsclient import RawDtlsClient


def test_encode_decode_round_trip_with_odd_options():
    options = [(11, b"clients"), (65535, b"x"), (11, b"id"), (2049, b""), (60, b"\x01\x00")]
    data = grammar.encode(grammar.CON, 1, 0x1234, b"\x01\x02", options, b"body")
    answer = grammar.decode(data)
    assert answer is not None
    assert answer.token == b"\x01\x02" and answer.mid == 0x1234 and answer.payload == b"body"
    assert list(answer.options) == sorted(options, key=lambda o: o[0])


def test_reserved_token_length_and_bare_marker_are_encoded_as_asked():
    data = grammar.encode(grammar.CON, 1, 1, b"abc", tkl=12)
    assert data[0] & 0x0F == 12 and grammar.decode(data) is None
    assert grammar.encode(grammar.NON, 1, 1, b"", marker=True).endswith(b"\xff")


def test_option_numbers_past_65535_are_reached_with_hops():
    data = grammar.encode(grammar.CON, 1, 1, b"", [(200000, b"v")])
    answer = grammar.decode(data)
    assert answer is not None and answer.options[-1] == (200000, b"v")


def test_the_judge():
    target = grammar.Target(("device",), True)
    script = grammar.Target(("echo",), False)
    onboarding = grammar.Target(("onboard",), True)

    def case(identity, t):
        return grammar.Case("k", identity, t, grammar.CON, 1, 1, b"t")

    def answer(code):
        return grammar.Answer(grammar.ACK, code, 1, b"t", (), b"")

    created, content, bad, internal = (2 << 5) | 1, (2 << 5) | 5, 4 << 5, 5 << 5
    assert grammar.judge(case("user", target), answer(internal)) is not None
    assert grammar.judge(case("user", script), answer(internal)) is None  # a script failed
    assert grammar.judge(case("factory", target), answer(content)) is not None
    assert grammar.judge(case("factory", onboarding), answer(created)) is None
    assert grammar.judge(case("factory", target), answer(bad)) is None
    assert grammar.judge(case("admin", target), answer(0)) is None
    busy = grammar.Answer(grammar.ACK, (5 << 5) | 3, 1, b"t", ((grammar.MAX_AGE, b"\x05"),), b"")
    assert grammar.judge(case("user", target), busy) is None  # a bound, saying when to retry
    assert grammar.judge(case("user", target), answer((5 << 5) | 3)) is not None


@pytest.mark.parametrize("kind", sorted(grammar.GENERATORS))
def test_every_generator_makes_a_message(kind):
    rng = random.Random(kind)
    targets = [grammar.Target(("device",), True), grammar.Target(("echo",), False)]
    for mid in range(50):
        case = grammar.generate(rng, targets, "user", mid, kind)
        assert case.kind == kind and case.data[0] >> 6 == 1
        assert case.well_formed == (grammar.decode(case.data) is not None) or not case.well_formed


def _client_hello() -> bytes:
    """A ClientHello as tinydtls writes it (nothing is sent)."""
    captured: list[bytes] = []

    def capture(index: int, data: bytes) -> None:
        captured.append(data)
        return None

    client = RawDtlsClient("127.0.0.1", 9, b"someone", b"k" * 16, mutate=capture)
    client.handshake(0.01)
    client.close(notify=False)
    return captured[0]


@pytest.mark.integration  # tinydtls writes the hello on a real (unused) UDP socket
def test_client_hello_round_trips_and_has_the_mandatory_extensions():
    datagram = _client_hello()
    record = hs.records(datagram)[0]
    message = hs.Handshake.parse(record.fragment)
    assert message is not None and message.msg_type == hs.CLIENT_HELLO
    hello = hs.ClientHello.parse(message.body)
    assert hello is not None and hs.PSK_CCM8 in hello.suites
    assert hs.EXT_EMS in {kind for kind, _ in hello.extensions}
    assert hs.SCSV_RENEGOTIATION in hello.suites
    assert hello.encode() == message.body and message.encode() == record.fragment
    assert record.encode() == datagram


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(hs.HELLO_MUTATIONS))
def test_a_plan_changes_both_hellos_alike_but_the_cookie(name):
    first = _client_hello()
    record = hs.records(first)[0]
    message = hs.Handshake.parse(record.fragment)
    hello = hs.ClientHello.parse(message.body)
    hello.cookie = b"C" * 16
    message.body = hello.encode()
    record.fragment = message.encode()
    second = record.encode()
    plan = hs.HelloPlan(name, True, 1234)
    a, b = plan.apply(first), plan.apply(second)
    assert a != first or name in ("duplicate-extensions",)
    # the second is the first with the cookie: the server's cookie still checks out
    assert len(b) - len(a) == 16 and b"C" * 16 in b and b.replace(b"C" * 16, b"") != b""


def test_key_exchange_mutations_change_the_identity_framing():
    rng = random.Random(5)
    identity = b"client-1"
    body = len(identity).to_bytes(2, "big") + identity
    message = hs.Handshake(hs.CLIENT_KEY_EXCHANGE, 2, body)
    datagram = hs.Record(hs.HANDSHAKE, b"\xfe\xfd", 0, bytes(6), message.encode()).encode()
    kinds = set()
    for _ in range(200):
        kind, mutated = hs.mutate_key_exchange(rng, datagram, [b"other"])
        kinds.add(kind)
        assert mutated != datagram or kind == "identity-other-known"
    assert len(kinds) == 12
