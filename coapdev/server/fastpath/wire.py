"""The fast path's reading and writing of CoAP datagrams (RFC 7252 section 3).

:func:`parse_request` accepts only what the fast path serves and reads it
exactly as aiocoap would (tests/coapdev/server/test_fastpath.py checks that
against aiocoap's parser); anything else is None, and goes to aiocoap.
"""

from __future__ import annotations

from typing import Any

from aiocoap import Code, Message
from aiocoap.message import Direction

#: Message types.
TYPE_CON, TYPE_NON, TYPE_ACK = 0, 1, 2
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
    if first >> 6 != 1 or tkl > 8 or mtype > TYPE_NON:
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
    """The datagram answering ``request``: piggybacked on the ACK of a CON, a NON to a NON,
    or (``separate``) a confirmable message of its own."""
    mtype = TYPE_CON if separate else TYPE_ACK if request.mtype == TYPE_CON else TYPE_NON
    token = request.token
    header = bytes([0x40 | (mtype << 4) | len(token), int(response.code), mid >> 8, mid & 0xFF])
    options = response.opt.encode()
    payload = response.payload
    if payload:
        return header + token + options + b"\xff" + payload
    return header + token + options
