"""The fast path: simple requests served without aiocoap's message layer.

aiocoap spends ~200 µs of CPU per request in its message, token and pipe
layers, and keeps every request for 247 s for duplicate detection.  Most
requests a device sees are simple: a GET, PUT or POST with a path, perhaps a
query, Content-Format and Accept, to a built-in resource whose handler
completes without waiting.  Those are parsed here, run through the same
authentication, authorization and resource code, and answered directly.

Everything else goes to aiocoap unchanged: observations, blockwise
transfers, other options, empty messages, ACK/RST, and resources not marked
``fast_path`` (script resources whose answer may take longer than a client
retransmits for).  An answer too large for one datagram is kept the way
aiocoap keeps it (its Block2 cache), and its first block is sent here: the
client asks for the next blocks with a Block2 option, which aiocoap serves.

Duplicate detection is per session and bounded by count and age: the last
``DEDUP_PER_SESSION`` exchanges of each session are remembered for
``EXCHANGE_LIFETIME_S``; a retransmitted request gets the same answer again
and is not executed twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiocoap import Code, Message
from aiocoap import error as coap_error
from aiocoap.message import Direction

from . import aiocoap_compat
from .separate import Pending, SeparateResponses

log = logging.getLogger("coapdev.fastpath")

#: RFC 7252 EXCHANGE_LIFETIME with default transmission parameters.
EXCHANGE_LIFETIME_S = 247.0
#: Exchanges remembered per session for duplicate detection.
DEDUP_PER_SESSION = 8
#: Larger answers need blockwise transfer: aiocoap's job.
MAX_FAST_PAYLOAD = 1024

_CON, _NON, _ACK = 0, 1, 2
_OPT_URI_HOST, _OPT_URI_PORT, _OPT_URI_PATH = 3, 7, 11
_OPT_CONTENT_FORMAT, _OPT_URI_QUERY, _OPT_ACCEPT = 12, 15, 17
_SIMPLE_OPTIONS = frozenset(
    {_OPT_URI_HOST, _OPT_URI_PORT, _OPT_URI_PATH, _OPT_CONTENT_FORMAT, _OPT_URI_QUERY, _OPT_ACCEPT}
)
_METHODS = {1: Code.GET, 2: Code.POST, 3: Code.PUT, 4: Code.DELETE}


class FastOptions:
    """The options of a fast-path request, with the attribute names aiocoap uses."""

    __slots__ = ("accept", "content_format", "uri_path", "uri_query")
    observe = None
    block1 = None
    block2 = None
    no_response = None
    etags: tuple[bytes, ...] = ()
    uri_path_abbrev = None

    def __init__(self) -> None:
        self.uri_path: tuple[str, ...] = ()
        self.uri_query: tuple[str, ...] = ()
        self.content_format: int | None = None
        self.accept: int | None = None


class FastRequest:
    """Quacks like an incoming aiocoap request for the resources that take fast requests."""

    __slots__ = ("code", "mid", "mtype", "opt", "payload", "remote", "token")
    direction = Direction.INCOMING

    def __init__(
        self,
        code: Code,
        opt: FastOptions,
        payload: bytes,
        remote: Any,
        mid: int,
        token: bytes,
        mtype: int,
    ) -> None:
        self.code = code
        self.opt = opt
        self.payload = payload
        self.remote = remote
        self.mid = mid
        self.token = token
        self.mtype = mtype


def parse_request(data: bytes, remote: Any) -> FastRequest | None:
    """A simple request, or None for anything the fast path leaves to aiocoap."""
    if len(data) < 4:
        return None
    first = data[0]
    mtype = (first >> 4) & 0x03
    tkl = first & 0x0F
    if first >> 6 != 1 or tkl > 8 or mtype > _NON:
        return None
    method = _METHODS.get(data[1])
    if method is None:
        return None
    mid = (data[2] << 8) | data[3]
    pos = 4 + tkl
    end = len(data)
    if pos > end:
        return None
    token = data[4:pos]
    opt = FastOptions()
    path: list[str] = []
    query: list[str] = []
    number = 0
    payload = b""
    try:
        while pos < end:
            byte = data[pos]
            if byte == 0xFF:
                payload = data[pos + 1 :]
                if not payload:
                    return None  # a payload marker without payload is a format error
                break
            pos += 1
            delta, length = byte >> 4, byte & 0x0F
            if delta == 13:
                delta = data[pos] + 13
                pos += 1
            elif delta == 14:
                delta = ((data[pos] << 8) | data[pos + 1]) + 269
                pos += 2
            elif delta == 15:
                return None
            if length == 13:
                length = data[pos] + 13
                pos += 1
            elif length == 14:
                length = ((data[pos] << 8) | data[pos + 1]) + 269
                pos += 2
            elif length == 15:
                return None
            number += delta
            value = data[pos : pos + length]
            if len(value) != length:
                return None
            pos += length
            if number not in _SIMPLE_OPTIONS:
                return None
            if number == _OPT_URI_PATH:
                path.append(value.decode("utf-8"))
            elif number == _OPT_URI_QUERY:
                query.append(value.decode("utf-8"))
            elif number == _OPT_CONTENT_FORMAT:
                if opt.content_format is not None:
                    return None  # repeated: what wins is aiocoap's (and RFC 7252 5.4.5's) call
                opt.content_format = int.from_bytes(value, "big")
            elif number == _OPT_ACCEPT:
                if opt.accept is not None:
                    return None
                opt.accept = int.from_bytes(value, "big")
            elif number == _OPT_URI_HOST:
                value.decode("utf-8")  # not used here, but a request aiocoap could not read
    except (IndexError, UnicodeDecodeError):
        return None
    opt.uri_path = tuple(path)
    opt.uri_query = tuple(query)
    return FastRequest(method, opt, payload, remote, mid, token, mtype)


def encode_response(
    request: FastRequest, response: Message, mid: int, *, separate: bool = False
) -> bytes:
    """The answer's datagram: piggybacked on the ACK of a confirmable request, NON to a
    NON one, or (``separate``) a confirmable message of its own."""
    mtype = _CON if separate else _ACK if request.mtype == _CON else _NON
    token = request.token
    header = bytes([0x40 | (mtype << 4) | len(token), int(response.code), mid >> 8, mid & 0xFF])
    options = response.opt.encode()
    payload = response.payload
    if payload:
        return header + token + options + b"\xff" + payload
    return header + token + options


class FastPath:
    """Serves the simple requests of one DTLS server transport."""

    def __init__(self, site: Any, next_mid: Callable[[], int]) -> None:
        self.site = site
        self.next_mid = next_mid
        self.served = 0
        #: Accepted requests whose serving raised (each answered 5.00).
        self.failed = 0
        #: Slow answers: acknowledged early, sent separately, retransmitted.
        self.separate = SeparateResponses()

    def on_plaintext(self, peer: Any, data: bytes) -> bool:
        """Serve ``data`` if it is a simple request; False leaves it to aiocoap.

        (The DTLS transport's upward edge, :class:`~coapdev.server.dtls.PlaintextConsumer`.)

        Deciding "is this mine" comes first and does nothing; once a request
        is accepted, every outcome, an internal error included (5.00), is
        answered here: it is never handed on to aiocoap, which would run it a
        second time.
        """
        if self.separate.on_empty(peer, data):
            return True  # the client acknowledged one of our separate answers
        request = parse_request(data, peer)
        if request is None:
            return False
        resource = self.site.fast_resource(request.opt.uri_path)
        if resource is None:
            return False
        key = (request.mtype, request.mid)
        pending = Pending()
        try:
            self._serve(peer, request, resource, key, data, pending)
        except Exception:
            self.failed += 1
            log.error("serving %s failed", "/".join(request.opt.uri_path), exc_info=True)
            with contextlib.suppress(Exception):
                error = Message(code=Code.INTERNAL_SERVER_ERROR)
                self._answer(peer, request, key, error, None, pending)
        return True

    #: The former name of :meth:`on_plaintext`.
    handle = on_plaintext

    def _serve(
        self,
        peer: Any,
        request: FastRequest,
        resource: Any,
        key: tuple,
        data: bytes,
        pending: Pending,
    ) -> None:
        recent = peer.recent_exchanges
        if recent is None:
            recent = peer.recent_exchanges = OrderedDict()
        cached = recent.get(key)
        if cached is not None:
            answered, answer = cached
            if answer is not None and time.monotonic() - answered < EXCHANGE_LIFETIME_S:
                peer.send(answer)  # a retransmission: the same answer, not executed again
            return
        recent[key] = (time.monotonic(), None)  # in progress: drop retransmissions meanwhile
        while len(recent) > DEDUP_PER_SESSION:
            recent.popitem(last=False)
        self.site.render_fast(
            resource,
            request,
            lambda response: self._answer(peer, request, key, response, (resource, data), pending),
        )
        if request.mtype == _CON:
            self.separate.watch(peer, request.mid, pending)

    def _answer(
        self,
        peer: Any,
        request: FastRequest,
        key: tuple,
        response: Message | None,
        origin: tuple[Any, bytes] | None,
        pending: Pending,
    ) -> None:
        """Send ``response``; ``origin`` (the resource and the request's datagram) lets a
        large answer go out blockwise."""
        recent = peer.recent_exchanges
        separate = self.separate.answered(pending)
        if response is None:  # the request was refused silently (no answer wanted)
            return
        if len(response.payload) > MAX_FAST_PAYLOAD:
            response = self._first_block(peer, request, response, origin)
        mid = request.mid if request.mtype == _CON and not separate else self.next_mid()
        answer = encode_response(request, response, mid, separate=separate)
        if recent is not None and key in recent:
            if recent[key][1] is not None:
                return  # answered already (an error after the answer went out)
            recent[key] = (time.monotonic(), answer)
        self.served += 1
        if separate:
            self.separate.send_confirmable(peer, mid, answer)
        else:
            peer.send(answer)

    def _first_block(
        self,
        peer: Any,
        request: FastRequest,
        response: Message,
        origin: tuple[Any, bytes] | None,
    ) -> Message:
        """Block 0 of a large answer, the whole kept for the next blocks (or 5.00)."""
        try:
            if origin is None:
                raise ValueError("no request to continue from")
            resource, data = origin
            return aiocoap_compat.first_block(resource, Message.decode(data, remote=peer), response)
        except Exception:
            log.warning(
                "fast-path answer of %d bytes on %s cannot go out blockwise; sending 5.00",
                len(response.payload),
                "/".join(request.opt.uri_path),
                exc_info=True,
            )
            return Message(code=Code.INTERNAL_SERVER_ERROR)


def run_to_completion(
    coro: Any, done: Callable[[Any, BaseException | None], None], *, in_task: bool = False
) -> None:
    """Run a coroutine; synchronously if it never waits, else as a task.

    Handlers of fast-path resources usually finish without waiting, so no
    task is created for them; one that does wait is carried on by a task
    that resumes it exactly where it stopped.  ``in_task`` starts a task at
    once, for handlers that always wait and need to run inside one
    (``asyncio.timeout`` does: script resources).
    """
    if in_task:
        _finish_in(asyncio.ensure_future(coro), done)
        return
    try:
        waiting_on = coro.send(None)
    except StopIteration as stop:
        done(stop.value, None)
        return
    except BaseException as exc:
        done(None, exc)
        return

    async def resume(waiting_on: Any) -> Any:
        while True:
            if waiting_on is None:
                await asyncio.sleep(0)
            else:
                waiting_on._asyncio_future_blocking = False
                # The coroutine sees the outcome (result or exception) when resumed below.
                with contextlib.suppress(BaseException):
                    await waiting_on
            try:
                waiting_on = coro.send(None)
            except StopIteration as stop:
                return stop.value

    _finish_in(asyncio.ensure_future(resume(waiting_on)), done)


def _finish_in(task: asyncio.Future, done: Callable[[Any, BaseException | None], None]) -> None:
    def finished(t: asyncio.Future) -> None:
        if t.cancelled():
            done(None, coap_error.LibraryShutdown("cancelled"))
        else:
            done(t.result() if t.exception() is None else None, t.exception())

    task.add_done_callback(finished)
