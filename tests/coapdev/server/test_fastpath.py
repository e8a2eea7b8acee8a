"""The fast path without sockets: parsing, answering, duplicate detection."""

import asyncio

import pytest
from aiocoap import Code, Message

from coapdev.server.fastpath import (
    DEDUP_PER_SESSION,
    FastPath,
    encode_response,
    parse_request,
    run_to_completion,
)


def coap(mtype=0, code=1, mid=0x1234, token=b"\xaa\xbb", options=b"", payload=b""):
    first = 0x40 | (mtype << 4) | len(token)
    data = bytes([first, code, mid >> 8, mid & 0xFF]) + token + options
    return data + (b"\xff" + payload if payload else b"")


def opt(delta, value):
    assert delta < 13 and len(value) < 13
    return bytes([(delta << 4) | len(value)]) + value


def test_parses_a_simple_get():
    data = coap(options=opt(11, b"a") + opt(0, b"b") + opt(4, b"x=1") + opt(2, b"\x3c"))
    req = parse_request(data, remote="peer")
    assert req.code == Code.GET and req.mid == 0x1234 and req.token == b"\xaa\xbb"
    assert req.opt.uri_path == ("a", "b") and req.opt.uri_query == ("x=1",)
    assert req.opt.accept == 60 and req.payload == b"" and req.remote == "peer"


def test_parses_put_with_payload_and_content_format():
    data = coap(mtype=1, code=3, options=opt(11, b"light") + opt(1, b""), payload=b"on")
    req = parse_request(data, None)
    assert req.code == Code.PUT and req.mtype == 1
    assert req.opt.content_format == 0 and req.payload == b"on"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x40\x01\x00",  # too short
        coap(options=opt(6, b"")),  # Observe: aiocoap's job
        coap(options=opt(11, b"a") + opt(12, b"\x02")),  # Block2 (23)
        coap(mtype=2),  # ACK
        coap(code=0),  # empty
        coap(code=0x45),  # a response
        bytes([0x80, 1, 0, 0]),  # version 2
        bytes([0x49, 1, 0, 0]),  # token length 9
        coap(options=b"\xf0"),  # delta 15
        coap(options=bytes([0x13]) + b"a"),  # option runs past the end
        coap(options=opt(11, b"\xff\xfe")),  # path not UTF-8
        coap() + b"\xff",  # payload marker, no payload
    ],
)
def test_anything_else_goes_to_aiocoap(data):
    assert parse_request(data, None) is None


def test_encode_piggybacked_and_non_answers():
    con = parse_request(coap(mid=7, token=b"t"), None)
    response = Message(code=Code.CONTENT, payload=b"hi", content_format=0)
    assert encode_response(con, response, 7) == bytes([0x61, 0x45, 0, 7]) + b"t" + b"\xc0\xffhi"
    non = parse_request(coap(mtype=1, mid=7, token=b""), None)
    assert encode_response(non, Message(code=Code.CHANGED), 99)[:4] == bytes([0x50, 0x44, 0, 99])


def test_run_to_completion_synchronously_and_via_task():
    async def sync():
        return 42

    got = []
    run_to_completion(sync(), lambda value, exc: got.append((value, exc)))
    assert got == [(42, None)]

    async def waits():
        await asyncio.sleep(0.01)
        fut = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, fut.set_result, 5)
        return await fut + 1

    async def fails():
        await asyncio.sleep(0)
        raise ValueError("boom")

    async def main():
        results = []
        run_to_completion(waits(), lambda v, e: results.append((v, e)))
        run_to_completion(fails(), lambda v, e: results.append((v, type(e))))
        await asyncio.sleep(0.1)
        return results

    assert sorted(asyncio.run(main()), key=str) == sorted([(6, None), (None, ValueError)], key=str)


class FakePeer:
    def __init__(self):
        self.sent = []
        self.recent_exchanges = None
        self.authenticated_claims = ("someone",)

    def send(self, data):
        self.sent.append(data)


class FakeSite:
    def __init__(self):
        self.executed = 0

    def fast_resource(self, path):
        return "res" if path == ("counter",) else None

    def render_fast(self, res, request, reply):
        self.executed += 1
        reply(Message(code=Code.CHANGED, payload=str(self.executed).encode()))


def test_retransmissions_get_the_same_answer_and_run_once():
    site = FakeSite()
    fast = FastPath(site, next_mid=lambda: 1)
    peer = FakePeer()
    request = coap(code=2, mid=100, options=opt(11, b"counter"))
    assert fast.handle(peer, request) and fast.handle(peer, request)
    assert site.executed == 1 and peer.sent[0] == peer.sent[1]
    assert fast.handle(peer, coap(code=2, mid=101, options=opt(11, b"counter")))
    assert site.executed == 2 and peer.sent[2] != peer.sent[0]
    assert not fast.handle(peer, coap(options=opt(11, b"other")))


def test_duplicate_memory_is_bounded_per_session():
    site = FakeSite()
    fast = FastPath(site, next_mid=lambda: 1)
    peer = FakePeer()
    for mid in range(1000):
        fast.handle(peer, coap(code=2, mid=mid, options=opt(11, b"counter")))
    assert len(fast.exchanges.of(peer)) == DEDUP_PER_SESSION


class ExplodingAfterTheHandlerSite(FakeSite):
    """Runs the handler, then fails while answering (logging, encoding, sending)."""

    def render_fast(self, res, request, reply):
        self.executed += 1
        raise RuntimeError("failed after the handler ran")


def test_an_accepted_request_is_answered_by_the_fast_path_whatever_fails():
    site = ExplodingAfterTheHandlerSite()
    fast = FastPath(site, next_mid=lambda: 1)
    peer = FakePeer()
    request = coap(code=2, mid=5, options=opt(11, b"counter"))
    assert fast.handle(peer, request) is True  # never handed on to aiocoap
    assert site.executed == 1 and fast.failed == 1
    assert len(peer.sent) == 1 and peer.sent[0][1] == int(Code.INTERNAL_SERVER_ERROR)
    assert fast.handle(peer, request) is True  # a retransmission: the same 5.00, not run again
    assert site.executed == 1 and peer.sent[1] == peer.sent[0]


class FailingPeer(FakePeer):
    def send(self, data):
        super().send(data)
        if len(self.sent) == 1:
            raise OSError("send buffer full")


def test_a_failing_send_does_not_run_the_request_again():
    site = FakeSite()
    fast = FastPath(site, next_mid=lambda: 1)
    peer = FailingPeer()
    assert fast.handle(peer, coap(code=2, mid=9, options=opt(11, b"counter"))) is True
    assert site.executed == 1


# --- differential: whatever the fast path accepts, aiocoap reads the same way ---------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_OPTION_NUMBERS = [1, 3, 4, 5, 6, 7, 8, 11, 12, 14, 15, 17, 20, 23, 27, 28, 35, 39, 60, 258, 2049]


def _option_bytes(options):
    out = bytearray()
    last = 0
    for number, value in sorted(options, key=lambda o: o[0]):
        delta, last = number - last, number

        def nibble(n):
            if n < 13:
                return n, b""
            if n < 269:
                return 13, bytes([n - 13])
            return 14, (n - 269).to_bytes(2, "big")

        d, dext = nibble(delta)
        length, lext = nibble(len(value))
        out += bytes([(d << 4) | length]) + dext + lext + value
    return bytes(out)


@st.composite
def coap_datagrams(draw):
    mtype = draw(st.integers(0, 3))
    token = draw(st.binary(max_size=8))
    code = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 0x45, 0x84]))
    mid = draw(st.integers(0, 0xFFFF))
    values = st.one_of(
        st.binary(max_size=20),
        st.text(max_size=12).map(str.encode),
        st.integers(0, 0xFFFFFF).map(lambda n: n.to_bytes((n.bit_length() + 7) // 8, "big")),
    )
    options = draw(st.lists(st.tuples(st.sampled_from(_OPTION_NUMBERS), values), max_size=6))
    payload = draw(st.binary(max_size=30))
    data = bytes([0x40 | (mtype << 4) | len(token), code, mid >> 8, mid & 0xFF]) + token
    data += _option_bytes(options)
    if payload:
        data += b"\xff" + payload
    return data


@settings(max_examples=3000, deadline=None)
@given(coap_datagrams())
def test_the_fast_path_reads_every_accepted_datagram_as_aiocoap_does(data):
    request = parse_request(data, None)
    if request is None:
        return
    from aiocoap.error import UnparsableMessage

    try:
        message = Message.decode(data)
    except (UnparsableMessage, ValueError, IndexError) as exc:
        raise AssertionError(f"fast path accepted what aiocoap refuses: {exc!r}") from None
    assert request.code == message.code
    assert request.mid == message.mid
    assert request.mtype == int(message.mtype)
    assert request.token == message.token
    assert request.opt.uri_path == tuple(message.opt.uri_path)
    assert request.opt.uri_query == tuple(message.opt.uri_query)
    assert request.opt.content_format == (
        None if message.opt.content_format is None else int(message.opt.content_format)
    )
    assert request.opt.accept == (None if message.opt.accept is None else int(message.opt.accept))
    assert request.payload == message.payload


# --- slow answers: acknowledged at once, sent separately, retransmitted -----------------


class SlowSite(FakeSite):
    """Answers after ``delay_s`` (a script resource)."""

    def __init__(self, delay_s):
        super().__init__()
        self.delay_s = delay_s

    def render_fast(self, res, request, reply):
        self.executed += 1
        answer = Message(code=Code.CONTENT, payload=b"slow")
        asyncio.get_running_loop().call_later(self.delay_s, reply, answer)


def _fields(datagram):
    return (datagram[0] >> 4) & 3, datagram[1], (datagram[2] << 8) | datagram[3]


def test_a_slow_answer_is_acknowledged_at_once_and_sent_confirmable_until_acknowledged(
    monkeypatch,
):
    from coapdev.server.fastpath import separate

    monkeypatch.setattr(separate, "ACK_TIMEOUT_S", 0.05)
    site = SlowSite(delay_s=0.3)
    fast = FastPath(site, next_mid=lambda: 0x7777)
    peer = FakePeer()

    async def scenario():
        assert fast.handle(peer, coap(mtype=0, mid=42, options=opt(11, b"counter")))
        await asyncio.sleep(separate.EMPTY_ACK_DELAY_S + 0.05)
        assert [_fields(d) for d in peer.sent] == [(2, 0, 42)]  # an empty ACK, at once
        assert len(peer.sent[0]) == 4
        await asyncio.sleep(0.3)
        mtype, code, mid = _fields(peer.sent[1])
        assert (mtype, code, mid) == (0, int(Code.CONTENT), 0x7777)  # CON, our own mid
        assert peer.sent[1][4:6] == b"\xaa\xbb"  # the request's token
        await asyncio.sleep(0.2)
        resent = len(peer.sent) - 2
        assert resent >= 1 and all(d == peer.sent[1] for d in peer.sent[2:])
        assert fast.handle(peer, bytes([0x60, 0, 0x77, 0x77]))  # the client's ACK: taken
        settled = len(peer.sent)
        await asyncio.sleep(0.5)
        assert len(peer.sent) == settled  # no more retransmissions
        assert len(fast.separate) == 0 and fast.separate.stats["acknowledged"] == 1

    asyncio.run(scenario())
    assert site.executed == 1


@pytest.mark.parametrize(
    "mtype, delay_s, sent",
    [
        (0, 0.01, [(2, int(Code.CONTENT), 43)]),  # CON, quick: the answer rides on the ACK
        (1, 0.2, [(1, int(Code.CONTENT), 9)]),  # NON, slow: one NON answer, no empty ACK
    ],
    ids=["quick-answer-on-the-ack", "slow-answer-to-non"],
)
def test_what_goes_out_without_a_separate_answer(mtype, delay_s, sent):
    fast = FastPath(SlowSite(delay_s=delay_s), next_mid=lambda: 9)
    peer = FakePeer()

    async def scenario():
        assert fast.handle(peer, coap(mtype=mtype, mid=43, options=opt(11, b"counter")))
        await asyncio.sleep(delay_s + 0.2)

    asyncio.run(scenario())
    assert [_fields(d) for d in peer.sent] == sent


def test_unacknowledged_separate_answers_are_given_up_after_max_retransmit(monkeypatch):
    from coapdev.server.fastpath import separate

    monkeypatch.setattr(separate, "ACK_TIMEOUT_S", 0.01)
    monkeypatch.setattr(separate, "EMPTY_ACK_DELAY_S", 0.01)
    fast = FastPath(SlowSite(delay_s=0.05), next_mid=lambda: 5)
    peer = FakePeer()

    async def scenario():
        fast.handle(peer, coap(mtype=0, mid=45, options=opt(11, b"counter")))
        await asyncio.sleep(0.05 + 0.01 * 1.5 * 2 ** (separate.MAX_RETRANSMIT + 1) + 0.2)

    asyncio.run(scenario())
    # the empty ACK, the answer, and MAX_RETRANSMIT retransmissions of it; then nothing kept
    assert len(peer.sent) == 2 + separate.MAX_RETRANSMIT
    assert len(fast.separate) == 0 and fast.separate.stats["given-up"] == 1


def test_an_ack_for_a_message_we_did_not_send_goes_to_aiocoap():
    fast = FastPath(FakeSite(), next_mid=lambda: 1)
    assert fast.handle(FakePeer(), bytes([0x60, 0, 0, 1])) is False
