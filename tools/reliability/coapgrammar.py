"""CoAP messages that are well framed but odd, and what a gateway may answer to them.

Sans-I/O: :func:`generate` turns a seeded random generator into a
:class:`Case` (the bytes to send inside a DTLS session and what they are),
:func:`decode` parses an answer, and :func:`judge` says whether an answer
breaks a promise:

- no built-in resource ever answers 5.xx (but 5.03 with Max-Age: a bound);
- the factory identity gets nothing but 4.xx (or an empty ACK/RST), except
  from the onboarding resources.

The odd parts (RFC 7252 section numbers in brackets): reserved token lengths
9-15 [3], unknown critical (odd) and elective (even) options [5.4.1], option
numbers near and past 65535, repeated non-repeatable options [5.4.5], option
values of the wrong length [5.4.3], Block1/Block2 with the reserved SZX 7,
huge block numbers or oversized values (RFC 7959), Observe on every method
and with odd values (RFC 7641), FETCH/PATCH/iPATCH (RFC 8132) and codes of
no method, requests carried by ACK and RST messages [4.2, 4.3], hundreds of
options, payload markers without payload [3], empty messages with content.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

CON, NON, ACK, RST = 0, 1, 2, 3

# Option numbers (RFC 7252, 7641, 7959, 8613...).
IF_MATCH, URI_HOST, ETAG, IF_NONE_MATCH, OBSERVE, URI_PORT = 1, 3, 4, 5, 6, 7
LOCATION_PATH, OSCORE, URI_PATH, CONTENT_FORMAT, MAX_AGE, URI_QUERY = 8, 9, 11, 12, 14, 15
HOP_LIMIT, ACCEPT, Q_BLOCK1, LOCATION_QUERY, EDHOC, BLOCK2, BLOCK1 = 16, 17, 19, 20, 21, 23, 27
SIZE2, Q_BLOCK2, PROXY_URI, PROXY_SCHEME, SIZE1, ECHO, NO_RESPONSE, REQUEST_TAG = (
    28,
    31,
    35,
    39,
    60,
    252,
    258,
    292,
)
#: Options that may appear once only (RFC 7252 table 4 and later RFCs).
NON_REPEATABLE = (
    URI_HOST,
    IF_NONE_MATCH,
    OBSERVE,
    URI_PORT,
    CONTENT_FORMAT,
    MAX_AGE,
    ACCEPT,
    BLOCK2,
    BLOCK1,
    SIZE2,
    PROXY_URI,
    PROXY_SCHEME,
    SIZE1,
    NO_RESPONSE,
)
#: Numbers no registry assigns (as of 2026): odd ones are critical, even ones elective.
UNKNOWN_CRITICAL = (13, 25, 33, 41, 61, 1001, 2049, 3001, 9999, 32769, 64999, 65001, 65535)
UNKNOWN_ELECTIVE = (2, 10, 18, 24, 26, 32, 62, 100, 1000, 2048, 32768, 65000, 65534)

GET, POST, PUT, DELETE, FETCH, PATCH, IPATCH = 1, 2, 3, 4, 5, 6, 7

ONBOARDING_PATHS = (("onboard",), ("15011", "9063"))


@dataclass(frozen=True)
class Target:
    path: tuple[str, ...]
    builtin: bool


@dataclass
class Case:
    """One message to send, and what was odd about it."""

    kind: str
    identity: str  # "admin", "user" or "factory"
    target: Target
    mtype: int
    code: int
    mid: int
    token: bytes
    payload: bytes = b""
    #: False when the message is malformed on purpose (silence or RST expected).
    well_formed: bool = True
    options: list[tuple[int, bytes]] = field(default_factory=list)
    #: Overrides of the token length field and of the payload marker.
    tkl: int | None = None
    marker: bool | None = None
    #: The message as sent (set by :func:`generate`).
    data: bytes = b""


@dataclass(frozen=True)
class Answer:
    mtype: int
    code: int
    mid: int
    token: bytes
    options: tuple[tuple[int, bytes], ...]
    payload: bytes

    @property
    def code_text(self) -> str:
        return f"{self.code >> 5}.{self.code & 0x1F:02d}"


# --- encoding and decoding ----------------------------------------------------------


def _ext(value: int) -> tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes([value - 13])
    return 14, (value - 269).to_bytes(2, "big")


def encode(
    mtype: int,
    code: int,
    mid: int,
    token: bytes,
    options: Sequence[tuple[int, bytes]] = (),
    payload: bytes = b"",
    *,
    tkl: int | None = None,
    marker: bool | None = None,
    version: int = 1,
) -> bytes:
    """A CoAP message; options are sorted by number (stable: repeats keep their order).

    ``tkl`` overrides the token length field (reserved values 9-15 included);
    ``marker`` forces the payload marker on or off.
    """
    tkl_field = len(token) if tkl is None else tkl
    out = bytearray([(version << 6) | (mtype << 4) | (tkl_field & 0x0F), code & 0xFF])
    out += (mid & 0xFFFF).to_bytes(2, "big")
    out += token
    last = 0
    for number, value in sorted(options, key=lambda o: o[0]):
        delta = number - last
        last = number
        # A delta over 65804 cannot be written in one go: an empty elective hop first.
        while delta > 65804:
            out += bytes([0xE0]) + (65804 - 269).to_bytes(2, "big")
            delta -= 65804
        d_nib, d_ext = _ext(delta)
        l_nib, l_ext = _ext(len(value))
        out.append((d_nib << 4) | l_nib)
        out += d_ext + l_ext + value
    if marker or (marker is None and payload):
        out.append(0xFF)
    out += payload
    return bytes(out)


def decode(data: bytes) -> Answer | None:
    """An answer from the gateway, or None if it is not a CoAP message."""
    if len(data) < 4 or data[0] >> 6 != 1:
        return None
    mtype, tkl = (data[0] >> 4) & 3, data[0] & 0x0F
    if tkl > 8 or len(data) < 4 + tkl:
        return None
    pos = 4 + tkl
    options: list[tuple[int, bytes]] = []
    number = 0
    try:
        while pos < len(data) and data[pos] != 0xFF:
            byte = data[pos]
            pos += 1
            delta, length = byte >> 4, byte & 0x0F
            if delta == 15 or length == 15:
                return None
            if delta == 13:
                delta, pos = data[pos] + 13, pos + 1
            elif delta == 14:
                delta, pos = int.from_bytes(data[pos : pos + 2], "big") + 269, pos + 2
            if length == 13:
                length, pos = data[pos] + 13, pos + 1
            elif length == 14:
                length, pos = int.from_bytes(data[pos : pos + 2], "big") + 269, pos + 2
            number += delta
            options.append((number, data[pos : pos + length]))
            pos += length
    except IndexError:
        return None
    payload = data[pos + 1 :] if pos < len(data) else b""
    mid = int.from_bytes(data[2:4], "big")
    return Answer(mtype, data[1], mid, data[4 : 4 + tkl], tuple(options), payload)


def uint(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""


def block(num: int, more: bool, szx: int) -> bytes:
    return uint((num << 4) | (int(more) << 3) | (szx & 7))


# --- judging answers ------------------------------------------------------------------


def judge(case: Case, answer: Answer) -> str | None:
    """What promise ``answer`` breaks, if any.

    5.03 with Max-Age is the documented "busy, retry then" of a bound
    (RFC 7252 5.9.3.4), not a failure.
    """
    if answer.code == 0:
        return None  # an empty ACK or RST
    cls = answer.code >> 5
    busy = answer.code == (5 << 5) | 3 and any(n == MAX_AGE for n, _ in answer.options)
    if cls == 5 and case.target.builtin and not busy:
        return f"{answer.code_text} from the built-in /{'/'.join(case.target.path)}"
    if case.identity == "factory" and cls != 4 and case.target.path not in ONBOARDING_PATHS:
        return f"{answer.code_text} to the factory identity on /{'/'.join(case.target.path)}"
    if cls not in (2, 4, 5):
        return f"an answer with code {answer.code_text}"
    return None


# --- generating cases -----------------------------------------------------------------


_CBOR_NAME = b"\xa1\x64name\x63fzz"
_PAYLOADS = (
    b"",
    _CBOR_NAME,
    b"\xa1\x62on\xf5",
    b'{"name": "fzz"}',
    b"on",
    b"\xff\xfe\xfd",
    b"\x9f" * 40,
    bytes(300),
)


def _base_options(rng: random.Random, target: Target) -> list[tuple[int, bytes]]:
    options = [(URI_PATH, segment.encode()) for segment in target.path]
    if rng.random() < 0.3:
        options.append((CONTENT_FORMAT, uint(rng.choice([0, 50, 60, 42, 40, 11050, 65535]))))
    if rng.random() < 0.3:
        options.append((ACCEPT, uint(rng.choice([0, 50, 60, 40, 11060, 65000]))))
    if rng.random() < 0.2:
        options.append((URI_QUERY, rng.choice([b"a=b", b"", b"x" * 40, b"\xff"])))
    return options


def _reserved_tkl(rng: random.Random, case: Case) -> None:
    case.tkl = rng.randint(9, 15)
    case.token = rng.randbytes(rng.choice([0, 8, case.tkl, 15]))
    case.well_formed = False


def _unknown_critical(rng: random.Random, case: Case) -> None:
    for _ in range(rng.randint(1, 3)):
        case.options.append((rng.choice(UNKNOWN_CRITICAL), rng.randbytes(rng.randint(0, 8))))


def _unknown_elective(rng: random.Random, case: Case) -> None:
    for _ in range(rng.randint(1, 5)):
        case.options.append((rng.choice(UNKNOWN_ELECTIVE), rng.randbytes(rng.randint(0, 20))))


def _huge_numbers(rng: random.Random, case: Case) -> None:
    number = rng.choice([65535, 65534, 65000, 65001, 70000, 131070, 200000])
    case.options.append((number, rng.randbytes(rng.randint(0, 4))))


def _repeated(rng: random.Random, case: Case) -> None:
    number = rng.choice(NON_REPEATABLE)
    value = {
        BLOCK1: block(0, True, 2),
        BLOCK2: block(0, False, 2),
        OBSERVE: b"",
        CONTENT_FORMAT: uint(60),
        ACCEPT: uint(50),
        URI_PORT: uint(5684),
        URI_HOST: b"example",
        NO_RESPONSE: uint(26),
    }.get(number, rng.randbytes(rng.randint(0, 4)))
    for _ in range(rng.randint(2, 5)):
        case.options.append((number, value))


def _wrong_lengths(rng: random.Random, case: Case) -> None:
    number = rng.choice([CONTENT_FORMAT, ACCEPT, MAX_AGE, SIZE1, SIZE2, OBSERVE, URI_PORT, BLOCK2])
    length = rng.choice([3, 4, 5, 8, 13, 40])
    case.options.append((number, rng.randbytes(length)))
    if rng.random() < 0.3:
        case.options.append((URI_HOST, b""))
    if rng.random() < 0.3:
        case.options.append((URI_PATH, rng.randbytes(rng.choice([255, 300]))))


def _odd_block(rng: random.Random, case: Case) -> None:
    number = rng.choice([BLOCK1, BLOCK2])
    value = rng.choice(
        [
            block(0, True, 7),  # the reserved SZX
            block(2**20 - 1, False, 6),  # the largest block number
            block(rng.randrange(2**20), True, rng.randrange(8)),
            block(1, True, 0),  # a later block without a first
            b"\x00\x00\x00\x10",  # four bytes: too long
            b"",  # block 0, M 0, SZX 0
        ]
    )
    case.options.append((number, value))
    if number == BLOCK1 and not case.payload:
        case.payload = rng.choice([b"x" * 16, b"y" * 1024, b""])
    if rng.random() < 0.3:
        case.options.append((SIZE1, uint(rng.choice([0, 2**32 - 1, 10**9]))))


def _odd_observe(rng: random.Random, case: Case) -> None:
    value = rng.choice([b"", b"\x01", b"\x02", b"\x03", b"\xff\xff\xff", b"\x00\x00\x00\x01"])
    case.options.append((OBSERVE, value))
    case.code = rng.choice([GET, GET, FETCH, PUT, POST, DELETE, PATCH])


def _odd_codes(rng: random.Random, case: Case) -> None:
    case.code = rng.choice(
        [FETCH, PATCH, IPATCH, 8, 16, 31, (2 << 5) | 5, (4 << 5) | 4, (1 << 5) | 1, (6 << 5), 0xFF]
    )


def _ack_rst(rng: random.Random, case: Case) -> None:
    case.mtype = rng.choice([ACK, RST])


def _many_options(rng: random.Random, case: Case) -> None:
    kind = rng.randrange(4)
    count = rng.randint(100, 400)
    if kind == 0:
        case.options += [(URI_QUERY, b"q") for _ in range(count)]
    elif kind == 1:
        case.options += [(URI_PATH, b"p") for _ in range(min(count, 300))]
    elif kind == 2:
        case.options += [(rng.choice(UNKNOWN_ELECTIVE), b"") for _ in range(count)]
    else:
        case.options += [(ETAG, rng.randbytes(2)) for _ in range(count // 2)]
        case.options += [(IF_MATCH, b"") for _ in range(count // 2)]


def _payload_edges(rng: random.Random, case: Case) -> None:
    choice = rng.randrange(3)
    if choice == 0:  # a payload marker with no payload: a message format error
        case.payload = b""
        case.well_formed = False
        case.marker = True
    elif choice == 1:
        case.payload = rng.randbytes(rng.choice([1100, 1300]))
    else:
        case.payload = rng.choice(_PAYLOADS)


def _empty_with_content(rng: random.Random, case: Case) -> None:
    case.code = 0
    case.well_formed = False
    if rng.random() < 0.5:
        case.payload = b"x"


GENERATORS = {
    "reserved-token-length": _reserved_tkl,
    "unknown-critical-option": _unknown_critical,
    "unknown-elective-option": _unknown_elective,
    "huge-option-number": _huge_numbers,
    "repeated-non-repeatable": _repeated,
    "option-of-wrong-length": _wrong_lengths,
    "odd-block": _odd_block,
    "odd-observe": _odd_observe,
    "odd-code": _odd_codes,
    "request-in-ack-or-rst": _ack_rst,
    "hundreds-of-options": _many_options,
    "payload-edge": _payload_edges,
    "empty-with-content": _empty_with_content,
}


def generate(
    rng: random.Random,
    targets: Sequence[Target],
    identity: str,
    mid: int,
    kind: str | None = None,
) -> Case:
    """One odd message for ``identity`` to one of ``targets``."""
    target = rng.choice(targets)
    kind = kind or rng.choice(list(GENERATORS))
    token = rng.randbytes(rng.choice([1, 2, 4, 8, 8]))
    case = Case(
        kind=kind,
        identity=identity,
        target=target,
        mtype=rng.choice([CON, CON, CON, NON]),
        code=rng.choice([GET, GET, POST, PUT, DELETE]),
        mid=mid,
        token=token,
        payload=rng.choice(_PAYLOADS) if rng.random() < 0.4 else b"",
    )
    case.options = _base_options(rng, target)
    GENERATORS[kind](rng, case)
    case.data = encode(
        case.mtype,
        case.code,
        mid,
        case.token,
        case.options,
        case.payload,
        tkl=case.tkl,
        marker=case.marker,
    )
    return case
