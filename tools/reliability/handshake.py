"""Structure-aware mutations of a DTLS 1.2 ClientHello and ClientKeyExchange.

Sans-I/O: parse a flight a real client (tinydtls) wrote, change fields of
its structure, write it back.  The server's cookie (RFC 6347 4.2.1) covers
every field of the ClientHello but the cookie, so a mutated second
ClientHello would only earn a new HelloVerifyRequest.  :class:`HelloPlan`
is therefore applied to *both* ClientHellos: the server computes its cookie
over the mutated hello, and the mutated hello carrying that cookie gets past
the cookie check into the handshake proper.  ClientKeyExchange (the PSK
identity, RFC 4279) comes after the cookie check anyway.

A plan either keeps every length consistent (odd but well-formed values:
unknown suites and extensions, duplicates, missing mandatory extensions,
long session ids, odd versions) or lies in one length field.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

from coapdev.dtls_numbers import CipherSuite, ContentType, ExtensionType, HandshakeType

HANDSHAKE = ContentType.HANDSHAKE
CHANGE_CIPHER_SPEC = ContentType.CHANGE_CIPHER_SPEC
ALERT = ContentType.ALERT
CLIENT_HELLO = HandshakeType.CLIENT_HELLO
SERVER_HELLO = HandshakeType.SERVER_HELLO
HELLO_VERIFY_REQUEST = HandshakeType.HELLO_VERIFY_REQUEST
CLIENT_KEY_EXCHANGE = HandshakeType.CLIENT_KEY_EXCHANGE

#: TLS_PSK_WITH_AES_128_CCM_8, the suite tinydtls speaks with a PSK, and others.
PSK_CCM8 = CipherSuite.TLS_PSK_WITH_AES_128_CCM_8
KNOWN_SUITES = (PSK_CCM8, 0xC0AE, 0x00FF, 0x5600, 0xC0A9, 0x008C, 0x0000, 0xFFFF)
EXT_EMS = ExtensionType.EXTENDED_MASTER_SECRET
EXT_RENEGOTIATION_INFO = ExtensionType.RENEGOTIATION_INFO
#: TLS_EMPTY_RENEGOTIATION_INFO_SCSV: how tinydtls asks for secure renegotiation.
SCSV_RENEGOTIATION = CipherSuite.TLS_EMPTY_RENEGOTIATION_INFO_SCSV
KNOWN_EXTENSIONS = (0x0000, 0x000A, 0x000B, 0x000D, 0x0010, 0x0013, 0x0014, 0x0016, 0x0023)


@dataclass
class Record:
    content_type: int
    version: bytes
    epoch: int
    sequence: bytes
    fragment: bytes

    def encode(self, length: int | None = None) -> bytes:
        n = len(self.fragment) if length is None else length
        header = bytes([self.content_type]) + self.version + struct.pack(">H", self.epoch)
        return header + self.sequence + struct.pack(">H", n & 0xFFFF) + self.fragment


def records(datagram: bytes) -> list[Record]:
    """The records of a datagram (a truncated last one is dropped)."""
    out = []
    pos = 0
    while pos + 13 <= len(datagram):
        length = struct.unpack(">H", datagram[pos + 11 : pos + 13])[0]
        end = pos + 13 + length
        if end > len(datagram):
            break
        out.append(
            Record(
                datagram[pos],
                datagram[pos + 1 : pos + 3],
                struct.unpack(">H", datagram[pos + 3 : pos + 5])[0],
                datagram[pos + 5 : pos + 11],
                datagram[pos + 13 : end],
            )
        )
        pos = end
    return out


@dataclass
class Handshake:
    """A handshake message header (RFC 6347 4.2.2) and its body."""

    msg_type: int
    message_seq: int
    body: bytes
    fragment_offset: int = 0
    #: Lies about the lengths (None: the truth).
    length: int | None = None
    fragment_length: int | None = None

    @classmethod
    def parse(cls, fragment: bytes) -> Handshake | None:
        if len(fragment) < 12:
            return None
        length = int.from_bytes(fragment[1:4], "big")
        seq = struct.unpack(">H", fragment[4:6])[0]
        offset = int.from_bytes(fragment[6:9], "big")
        frag_len = int.from_bytes(fragment[9:12], "big")
        body = fragment[12 : 12 + frag_len]
        if offset != 0 or frag_len != length or len(body) != length:
            return None
        return cls(fragment[0], seq, body)

    def encode(self) -> bytes:
        length = len(self.body) if self.length is None else self.length
        frag_len = len(self.body) if self.fragment_length is None else self.fragment_length
        return (
            bytes([self.msg_type])
            + (length & 0xFFFFFF).to_bytes(3, "big")
            + struct.pack(">H", self.message_seq & 0xFFFF)
            + (self.fragment_offset & 0xFFFFFF).to_bytes(3, "big")
            + (frag_len & 0xFFFFFF).to_bytes(3, "big")
            + self.body
        )


@dataclass
class ClientHello:
    version: bytes
    random: bytes
    session_id: bytes
    cookie: bytes
    suites: list[int]
    compressions: list[int]
    extensions: list[tuple[int, bytes]]
    #: Lies about the lengths of the vectors (None: the truth).
    lies: dict[str, int] = field(default_factory=dict)
    trailing: bytes = b""

    @classmethod
    def parse(cls, body: bytes) -> ClientHello | None:
        try:
            pos = 0
            version, rnd = body[0:2], body[2:34]
            pos = 34
            sid_len = body[pos]
            session_id = body[pos + 1 : pos + 1 + sid_len]
            pos += 1 + sid_len
            cookie_len = body[pos]
            cookie = body[pos + 1 : pos + 1 + cookie_len]
            pos += 1 + cookie_len
            suites_len = struct.unpack(">H", body[pos : pos + 2])[0]
            raw = body[pos + 2 : pos + 2 + suites_len]
            suites = [struct.unpack(">H", raw[i : i + 2])[0] for i in range(0, len(raw), 2)]
            pos += 2 + suites_len
            comp_len = body[pos]
            compressions = list(body[pos + 1 : pos + 1 + comp_len])
            pos += 1 + comp_len
            extensions: list[tuple[int, bytes]] = []
            if pos < len(body):
                ext_len = struct.unpack(">H", body[pos : pos + 2])[0]
                end = pos + 2 + ext_len
                pos += 2
                while pos + 4 <= end:
                    kind, n = struct.unpack(">HH", body[pos : pos + 4])
                    extensions.append((kind, body[pos + 4 : pos + 4 + n]))
                    pos += 4 + n
        except (IndexError, struct.error):
            return None
        return cls(version, rnd, session_id, cookie, suites, compressions, extensions)

    def encode(self) -> bytes:
        lie = self.lies.get
        suites = b"".join(struct.pack(">H", s & 0xFFFF) for s in self.suites)
        exts = b"".join(struct.pack(">HH", k, len(v) & 0xFFFF) + v for k, v in self.extensions)
        return (
            self.version
            + self.random
            + bytes([lie("session_id", len(self.session_id)) & 0xFF])
            + self.session_id
            + bytes([len(self.cookie)])
            + self.cookie
            + struct.pack(">H", lie("suites", len(suites)) & 0xFFFF)
            + suites
            + bytes([lie("compressions", len(self.compressions)) & 0xFF])
            + bytes(self.compressions)
            + (struct.pack(">H", lie("extensions", len(exts)) & 0xFFFF) + exts if exts else b"")
            + self.trailing
        )


def _first_handshake(datagram: bytes, msg_type: int) -> tuple[Record, Handshake] | None:
    for record in records(datagram):
        if record.content_type == HANDSHAKE and record.epoch == 0:
            message = Handshake.parse(record.fragment)
            if message is not None and message.msg_type == msg_type:
                return record, message
    return None


# --- the ClientHello ------------------------------------------------------------------


@dataclass
class HelloPlan:
    """One set of changes to a ClientHello, applied alike to the first and the second."""

    name: str
    well_formed: bool
    seed: int

    def apply(self, datagram: bytes) -> bytes:
        found = _first_handshake(datagram, CLIENT_HELLO)
        if found is None:
            return datagram
        record, message = found
        hello = ClientHello.parse(message.body)
        if hello is None:
            return datagram
        rng = random.Random(self.seed)  # the same changes for both hellos
        HELLO_MUTATIONS[self.name](rng, hello, message, record)
        message.body = hello.encode()
        record.fragment = message.encode()
        return record.encode(record_length_lie(rng, record) if not self.well_formed else None)


def record_length_lie(rng: random.Random, record: Record) -> int | None:
    if rng.random() < 0.3:
        return len(record.fragment) + rng.choice([-1, 1, 100])
    return None


def _version(rng: random.Random, hello: ClientHello, message: Handshake, record: Record) -> None:
    hello.version = rng.choice([b"\xfe\xff", b"\x03\x03", b"\x00\x00", b"\xff\xff", b"\xfe\xfc"])


def _session_id(rng: random.Random, hello: ClientHello, message: Handshake, record: Record) -> None:
    hello.session_id = rng.randbytes(rng.choice([1, 16, 32, 33, 200]))


def _unknown_suites(
    rng: random.Random, hello: ClientHello, message: Handshake, record: Record
) -> None:
    hello.suites = [rng.randrange(65536) for _ in range(rng.randint(1, 40))]
    if rng.random() < 0.5:
        hello.suites.append(PSK_CCM8)


def _no_suites(rng: random.Random, hello: ClientHello, message: Handshake, record: Record) -> None:
    hello.suites = []


def _many_suites(
    rng: random.Random, hello: ClientHello, message: Handshake, record: Record
) -> None:
    hello.suites = [rng.choice(KNOWN_SUITES) for _ in range(rng.randint(100, 300))]


def _compressions(
    rng: random.Random, hello: ClientHello, message: Handshake, record: Record
) -> None:
    hello.compressions = rng.choice([[], [1], [1, 2, 3], [0] * 200, [255, 0]])


def _drop_mandatory(
    rng: random.Random, hello: ClientHello, message: Handshake, record: Record
) -> None:
    """tinydtls insists on extended_master_secret and secure renegotiation (pitfalls.md)."""
    choice = rng.randrange(3)
    if choice in (0, 2):
        hello.extensions = [e for e in hello.extensions if e[0] != EXT_EMS]
    if choice in (1, 2):
        hello.suites = [s for s in hello.suites if s != SCSV_RENEGOTIATION]
        hello.extensions = [e for e in hello.extensions if e[0] != EXT_RENEGOTIATION_INFO]


def _duplicate_extensions(
    rng: random.Random, hello: ClientHello, message: Handshake, record: Record
) -> None:
    if hello.extensions:
        hello.extensions += [rng.choice(hello.extensions) for _ in range(rng.randint(1, 4))]


def _unknown_extensions(
    rng: random.Random, hello: ClientHello, message: Handshake, record: Record
) -> None:
    for _ in range(rng.randint(1, 20)):
        kind = rng.choice([*KNOWN_EXTENSIONS, rng.randrange(65536)])
        hello.extensions.insert(
            rng.randrange(len(hello.extensions) + 1), (kind, rng.randbytes(rng.randint(0, 40)))
        )


def _odd_extension_values(
    rng: random.Random, hello: ClientHello, message: Handshake, record: Record
) -> None:
    hello.extensions = [
        (kind, rng.choice([b"", b"\x00", b"\x01\x00", rng.randbytes(64)]))
        for kind, _ in hello.extensions
    ]


def _many_extensions(
    rng: random.Random, hello: ClientHello, message: Handshake, record: Record
) -> None:
    hello.extensions += [(0x1000 + i, b"") for i in range(rng.randint(50, 300))]


def _trailing(rng: random.Random, hello: ClientHello, message: Handshake, record: Record) -> None:
    hello.trailing = rng.randbytes(rng.randint(1, 50))


def _length_lie(rng: random.Random, hello: ClientHello, message: Handshake, record: Record) -> None:
    vector = rng.choice(["session_id", "suites", "compressions", "extensions"])
    hello.lies[vector] = rng.choice([0, 1, 255, 65535, 3])


def _header_lie(rng: random.Random, hello: ClientHello, message: Handshake, record: Record) -> None:
    choice = rng.randrange(4)
    if choice == 0:
        message.length = rng.choice([0, 1, 2**24 - 1, 5000])
    elif choice == 1:
        message.fragment_length = rng.choice([0, 1, 2**24 - 1])
    elif choice == 2:
        message.fragment_offset = rng.choice([1, 100, 2**24 - 1])
    else:
        message.message_seq = rng.choice([1, 2, 65535])


def _record_fields(
    rng: random.Random, hello: ClientHello, message: Handshake, record: Record
) -> None:
    if rng.random() < 0.5:
        record.version = rng.choice([b"\xfe\xff", b"\x03\x03", b"\x00\x00"])
    else:
        record.epoch = rng.choice([1, 2, 65535])


HELLO_MUTATIONS = {
    "version": _version,
    "session-id": _session_id,
    "unknown-suites": _unknown_suites,
    "no-suites": _no_suites,
    "hundreds-of-suites": _many_suites,
    "compressions": _compressions,
    "without-mandatory-extensions": _drop_mandatory,
    "duplicate-extensions": _duplicate_extensions,
    "unknown-extensions": _unknown_extensions,
    "odd-extension-values": _odd_extension_values,
    "hundreds-of-extensions": _many_extensions,
    "trailing-bytes": _trailing,
    "vector-length-lie": _length_lie,
    "header-length-lie": _header_lie,
    "record-fields": _record_fields,
}
_MALFORMED_HELLO = {"vector-length-lie", "header-length-lie", "trailing-bytes"}


def hello_plan(rng: random.Random) -> HelloPlan:
    name = rng.choice(list(HELLO_MUTATIONS))
    return HelloPlan(name, name not in _MALFORMED_HELLO, rng.randrange(2**32))


# --- the ClientKeyExchange ------------------------------------------------------------


def mutate_key_exchange(
    rng: random.Random, datagram: bytes, identities: list[bytes]
) -> tuple[str, bytes]:
    """A changed ClientKeyExchange (the PSK identity and its framing), and what changed."""
    found = _first_handshake(datagram, CLIENT_KEY_EXCHANGE)
    if found is None:
        return "not-a-key-exchange", datagram
    record, message = found
    identity = message.body[2:]
    declared: int | None = None
    kind = rng.choice(
        [
            "identity-empty",
            "identity-33-bytes",
            "identity-long",
            "identity-binary",
            "identity-other-known",
            "identity-length-lie",
            "header-length-lie",
            "fragmented",
            "message-seq",
            "message-type",
            "trailing-bytes",
            "two-messages",
        ]
    )
    if kind == "identity-empty":
        identity = b""
    elif kind == "identity-33-bytes":
        identity = b"i" * 33
    elif kind == "identity-long":
        identity = rng.randbytes(rng.choice([64, 255, 1000]))
    elif kind == "identity-binary":
        identity = rng.choice([b"\x00" * 8, b"\xff\xfe" + rng.randbytes(10), b"a\nb\x1b[0m"])
    elif kind == "identity-other-known":
        identity = rng.choice(identities) if identities else identity
    elif kind == "identity-length-lie":
        declared = rng.choice([0, 1, len(identity) + 1, 65535])
    body = struct.pack(">H", (len(identity) if declared is None else declared) & 0xFFFF) + identity
    if kind == "trailing-bytes":
        body += rng.randbytes(rng.randint(1, 30))
    message.body = body
    if kind == "header-length-lie":
        message.length = rng.choice([0, len(body) + 1, 2**24 - 1])
    elif kind == "fragmented":
        message.fragment_offset = rng.choice([1, len(body) // 2 or 1])
    elif kind == "message-seq":
        message.message_seq = rng.choice([0, 1, 5, 65535])
    elif kind == "message-type":
        message.msg_type = rng.choice([CLIENT_HELLO, 11, 12, 15, 20, 255])
    fragment = message.encode()
    if kind == "two-messages":
        fragment += fragment
    record.fragment = fragment
    return kind, record.encode()


# --- reading what the server said -----------------------------------------------------


def server_said(datagrams: list[bytes]) -> set[str]:
    """What the server's datagrams hold: "verify", "server-hello", "alert", "encrypted"."""
    said = set()
    for datagram in datagrams:
        for record in records(datagram):
            if record.content_type == ALERT:
                said.add("alert")
            elif record.epoch != 0:
                said.add("encrypted")
            elif record.content_type == HANDSHAKE and record.fragment:
                said.add(
                    {HELLO_VERIFY_REQUEST: "verify", SERVER_HELLO: "server-hello"}.get(
                        record.fragment[0], "handshake"
                    )
                )
    return said
