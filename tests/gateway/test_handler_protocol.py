"""The handler line protocol without processes: the gateway's side (gateway.handler)
and the helper for handler authors (coapdev.handler) agree, and bad lines are refused."""

from __future__ import annotations

import base64
import io
import json

import pytest

from coapdev import handler as helper
from gateway.handler import Answer, ProtocolError, encode_request, max_line_bytes, parse_answer

FIELDS = {
    "method": "PUT",
    "path": "/kv",
    "query": ["key=a b", "x"],
    "client": {"id": "c1", "name": "alice\nnewline", "role": "admin"},
    "content_format": 42,
    "accept": None,
}


def test_a_request_line_is_one_line_of_ascii_whatever_the_payload():
    payload = bytes(range(256)) + b"\n\r\x00"
    line = encode_request(7, FIELDS, payload)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.isascii()
    request = helper.Request.from_line(line)
    assert request.id == 7 and request.method == "PUT" and request.payload == payload
    assert request.query == ("key=a b", "x") and request.arg("key") == "a b"
    assert request.arg("x") == "" and request.arg("y", "none") == "none"
    assert (request.client_name, request.client_role, request.content_format) == (
        "alice\nnewline",
        "admin",
        42,
    )


def test_the_helper_answers_in_order_and_a_failing_callback_answers_5_00(capsys):
    lines = b"".join(
        encode_request(i, dict(FIELDS, method=m), b"p%d" % i)
        for i, m in ((1, "GET"), (2, "PUT"), (3, "GET"))
    )

    def callback(request: helper.Request):
        if request.id == 3:
            raise ValueError("boom")
        return request.payload.upper()

    out = io.BytesIO()
    helper.serve(callback, stdin=io.BytesIO(lines), stdout=out)
    answers = [parse_answer(line) for line in out.getvalue().splitlines()]
    assert answers[0] == (1, Answer("2.05", None, b"P1"))
    assert answers[1] == (2, Answer("2.04", None, b"P2"))
    assert answers[2][0] == 3 and answers[2][1].code == "5.00"
    assert "ValueError: boom" in capsys.readouterr().err  # the traceback goes to stderr only


def test_a_router_with_async_routes():
    app = helper.Router()

    @app.route("GET")
    async def read(request):
        return helper.Response(b"x", content_format=60)

    out = io.BytesIO()
    lines = encode_request(1, dict(FIELDS, method="GET"), b"") + encode_request(
        2, dict(FIELDS, method="DELETE"), b""
    )
    app.serve(stdin=io.BytesIO(lines), stdout=out)
    answers = dict(parse_answer(line) for line in out.getvalue().splitlines())
    assert answers == {1: Answer("2.05", 60, b"x"), 2: Answer("4.05", None, answers[2].payload)}


@pytest.mark.parametrize(
    "line, problem, names_id",
    [
        (b"hello", "not a JSON object", False),
        (b"[1, 2]", "not a JSON object", False),
        (b"\xff\xfe", "not a JSON object", False),
        (b'{"code": "2.05"}', "without an integer id", False),
        (b'{"id": true}', "without an integer id", False),
        (b'{"id": "1"}', "without an integer id", False),
        (b'{"id": 1, "code": "9.99"}', "invalid code", True),
        (b'{"id": 1, "code": "2.03"}', "invalid code", True),  # Valid is the gateway's to give
        (b'{"id": 1, "code": 205}', "invalid code", True),
        (b'{"id": 1, "content_format": -1}', "invalid content_format", True),
        (b'{"id": 1, "content_format": "text"}', "invalid content_format", True),
        (b'{"id": 1, "payload": "***"}', "not base64", True),
        (b'{"id": 1, "payload": 12}', "not base64", True),
    ],
)
def test_bad_answers_are_refused_with_what_is_wrong(line, problem, names_id):
    with pytest.raises(ProtocolError, match=problem) as info:
        parse_answer(line)
    assert (info.value.request_id == 1) is names_id


def test_an_answer_line_for_the_largest_payload_fits_the_line_limit():
    payload = b"\xff" * 65536
    line = json.dumps(
        {
            "id": 2**53,
            "code": "2.05",
            "content_format": 65535,
            "payload": base64.b64encode(payload).decode(),
        }
    ).encode()
    assert len(line) <= max_line_bytes(len(payload))
    assert parse_answer(line) == (2**53, Answer("2.05", 65535, payload))


def test_the_helper_answers_every_waiting_request_in_one_write():
    """Under load several requests are in the pipe at once: one write answers them all
    (a system call per request saved on both sides); a last line without newline counts."""
    lines = b"".join(encode_request(i, dict(FIELDS, method="GET"), b"") for i in range(1, 6))

    class Counting(io.BytesIO):
        writes = 0

        def write(self, data):  # type: ignore[override]
            Counting.writes += 1
            return super().write(data)

    out = Counting()
    helper.serve(lambda request: b"ok", stdin=io.BytesIO(lines.rstrip(b"\n")), stdout=out)
    assert [parse_answer(line)[0] for line in out.getvalue().splitlines()] == [1, 2, 3, 4, 5]
    assert Counting.writes <= 2  # the four complete lines at once, then the unterminated one


class FakeLine:
    """Stands in for a handler's LineProcess: records writes, answers nothing, and keeps
    the last ``unread`` bytes written queued (as if the handler had not read them)."""

    running = True

    def __init__(self, unread: int = 0) -> None:
        self.unread = unread
        self.writes: list[bytes] = []
        self.killed = 0

    def write(self, data: bytes) -> bool:
        self.writes.append(data)
        return True

    def pending_input_bytes(self) -> int:
        return self.unread

    def kill(self) -> None:
        self.killed += 1


def handler_on(line: FakeLine):
    from gateway.handler import Handler

    h = Handler(["true"], path="/h", env={}, cwd="/", max_pending=16, max_output_bytes=64)
    h._process = line  # type: ignore[assignment]
    return h


def test_the_gateway_writes_the_requests_of_one_turn_of_the_loop_in_one_write():
    import asyncio

    async def scenario() -> tuple[list[bytes], list[BaseException]]:
        line = FakeLine()  # the handler took every line (and answers none)
        h = handler_on(line)
        asks = [asyncio.ensure_future(h.ask(FIELDS, b"x", 0.2)) for _ in range(5)]
        results = await asyncio.gather(*asks, return_exceptions=True)
        return line.writes, results

    writes, results = asyncio.run(scenario())
    assert len(writes) == 1 and writes[0].count(b"\n") == 5
    assert all(type(r).__name__ == "GatewayTimeout" for r in results)  # each its own timer


def test_a_request_whose_line_is_unread_at_its_deadline_restarts_the_handler():
    """Only a line still queued for stdin counts: one taken and not answered does not."""
    import asyncio

    async def scenario(unread: int) -> int:
        line = FakeLine(unread)
        h = handler_on(line)
        first = asyncio.ensure_future(h.ask(FIELDS, b"x", 0.1))
        await asyncio.sleep(0.05)  # written alone: its line ends where the stream did then
        second = asyncio.ensure_future(h.ask(FIELDS, b"x" * 1000, 0.1))
        await asyncio.gather(first, second, return_exceptions=True)
        return line.killed

    assert asyncio.run(scenario(0)) == 0  # every line taken: a slow handler, not a deaf one
    assert asyncio.run(scenario(100)) == 1  # the second line is unread: restarted once


def test_a_request_after_the_restart_waits_for_the_next_process_not_the_dying_one():
    """Between the kill and the exit the old process still looks alive: a request that
    came then went to it and was answered 5.02 with what it held (seen in a fresh-clone
    run). It waits for the next start instead."""
    import asyncio

    async def scenario() -> tuple[int, int, str]:
        line = FakeLine(unread=100)  # deaf: the line stays queued
        h = handler_on(line)
        first = asyncio.ensure_future(h.ask(FIELDS, b"x" * 1000, 0.1))
        await asyncio.gather(first, return_exceptions=True)  # its deadline: restarted
        assert line.killed == 1
        after = asyncio.ensure_future(h.ask(FIELDS, b"x", 0.2))  # before the exit is seen
        await asyncio.sleep(0.05)
        writes_before_exit = len(line.writes)
        outcome = await asyncio.gather(after, return_exceptions=True)
        return writes_before_exit, len(line.writes), type(outcome[0]).__name__

    writes_then, writes_at_end, outcome = asyncio.run(scenario())
    assert writes_then == writes_at_end == 1  # only the first request's line went out
    assert outcome == "GatewayTimeout"  # no next process in this test: it waited, 5.04
