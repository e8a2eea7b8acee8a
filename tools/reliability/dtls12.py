"""A DTLS 1.2 PSK client written from the RFCs, that sends exactly the ClientHello it is told to.

OpenSSL, GnuTLS and tinydtls clients always offer ``extended_master_secret``
(RFC 7627) and ``renegotiation_info`` (RFC 5746); several embedded and
JavaScript stacks that Tradfri client libraries use offer neither.  To test a
server against both kinds, this client can leave out either one, offer
secure renegotiation as the SCSV cipher suite instead of the extension, or
send no extensions at all, and still complete the handshake and exchange
application data.  It can also build any record (a forged plaintext alert,
say) for the session it holds.

One cipher suite: TLS_PSK_WITH_AES_128_CCM_8 (RFC 6655): TLS 1.2's PRF with
SHA-256, AES-128-CCM with an 8-byte tag, a 4-byte implicit and an 8-byte
explicit nonce.  Blocking socket, no asyncio, no retransmission beyond
resending a flight that got no answer: it is meant for loopback.  Needs the
``cryptography`` package (the ``test`` extra).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
import time
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from coapdev.dtls_numbers import (
    DTLS_1_2,
    HANDSHAKE_HEADER_LEN,
    RECORD_HEADER_LEN,
    AlertDescription,
    AlertLevel,
    CipherSuite,
    ContentType,
    ExtensionType,
    HandshakeType,
)

# The wire numbers under the short names this client uses (coapdev.dtls_numbers).
CT_CHANGE_CIPHER_SPEC = ContentType.CHANGE_CIPHER_SPEC
CT_ALERT = ContentType.ALERT
CT_HANDSHAKE = ContentType.HANDSHAKE
CT_APPLICATION_DATA = ContentType.APPLICATION_DATA

HT_CLIENT_HELLO = HandshakeType.CLIENT_HELLO
HT_SERVER_HELLO = HandshakeType.SERVER_HELLO
HT_HELLO_VERIFY_REQUEST = HandshakeType.HELLO_VERIFY_REQUEST
HT_SERVER_KEY_EXCHANGE = HandshakeType.SERVER_KEY_EXCHANGE
HT_SERVER_HELLO_DONE = HandshakeType.SERVER_HELLO_DONE
HT_CLIENT_KEY_EXCHANGE = HandshakeType.CLIENT_KEY_EXCHANGE
HT_FINISHED = HandshakeType.FINISHED

TLS_PSK_WITH_AES_128_CCM_8 = CipherSuite.TLS_PSK_WITH_AES_128_CCM_8
TLS_EMPTY_RENEGOTIATION_INFO_SCSV = CipherSuite.TLS_EMPTY_RENEGOTIATION_INFO_SCSV
EXT_EXTENDED_MASTER_SECRET = ExtensionType.EXTENDED_MASTER_SECRET
EXT_RENEGOTIATION_INFO = ExtensionType.RENEGOTIATION_INFO

ALERT_WARNING = AlertLevel.WARNING
ALERT_FATAL = AlertLevel.FATAL
ALERT_CLOSE_NOTIFY = AlertDescription.CLOSE_NOTIFY
ALERT_HANDSHAKE_FAILURE = AlertDescription.HANDSHAKE_FAILURE

KEY_LEN = 16
FIXED_IV_LEN = 4
EXPLICIT_NONCE_LEN = 8
TAG_LEN = 8


class DtlsError(Exception):
    """The handshake or a record failed."""


class AlertReceived(DtlsError):
    """The server sent an alert; ``level`` and ``description`` as on the wire."""

    def __init__(self, level: int, description: int, encrypted: bool) -> None:
        kind = "encrypted" if encrypted else "plaintext"
        super().__init__(f"{kind} alert from the server: level {level}, description {description}")
        self.level = level
        self.description = description
        self.encrypted = encrypted


@dataclass(frozen=True)
class HelloOptions:
    """What the ClientHello offers besides the cipher suite."""

    #: The extended_master_secret extension (RFC 7627).
    extended_master_secret: bool = True
    #: The renegotiation_info extension with an empty renegotiated_connection (RFC 5746, 3.4).
    renegotiation_info: bool = True
    #: TLS_EMPTY_RENEGOTIATION_INFO_SCSV in the cipher suites (RFC 5746, 3.3).
    scsv: bool = False

    def describe(self) -> str:
        parts = []
        if self.extended_master_secret:
            parts.append("EMS")
        if self.renegotiation_info:
            parts.append("renegotiation_info")
        if self.scsv:
            parts.append("SCSV")
        return "+".join(parts) or "no extensions"


def p_sha256(secret: bytes, seed: bytes, length: int) -> bytes:
    """P_SHA256 of RFC 5246, 5."""
    out = b""
    a = seed
    while len(out) < length:
        a = hmac.digest(secret, a, "sha256")
        out += hmac.digest(secret, a + seed, "sha256")
    return out[:length]


def prf(secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    return p_sha256(secret, label + seed, length)


def psk_pre_master_secret(psk: bytes) -> bytes:
    """RFC 4279, 2: uint16 N, N zero bytes, uint16 N, the PSK."""
    n = struct.pack("!H", len(psk))
    return n + bytes(len(psk)) + n + psk


def record(content_type: int, epoch: int, seq: int, fragment: bytes) -> bytes:
    """One DTLS 1.2 record (RFC 6347, 4.1)."""
    header = bytes([content_type]) + DTLS_1_2 + struct.pack("!H", epoch) + seq.to_bytes(6, "big")
    return header + struct.pack("!H", len(fragment)) + fragment


def plaintext_alert(level: int, description: int, seq: int = 0) -> bytes:
    """An unprotected (epoch 0) alert record: what anyone can forge."""
    return record(CT_ALERT, 0, seq, bytes([level, description]))


def parse_records(datagram: bytes) -> list[tuple[int, int, int, bytes]]:
    """(content type, epoch, sequence number, fragment) of each whole record."""
    out = []
    pos = 0
    while pos + RECORD_HEADER_LEN <= len(datagram):
        content_type = datagram[pos]
        epoch = int.from_bytes(datagram[pos + 3 : pos + 5], "big")
        seq = int.from_bytes(datagram[pos + 5 : pos + 11], "big")
        length = int.from_bytes(datagram[pos + 11 : pos + 13], "big")
        end = pos + RECORD_HEADER_LEN + length
        if end > len(datagram):
            break
        out.append((content_type, epoch, seq, datagram[pos + RECORD_HEADER_LEN : end]))
        pos = end
    return out


def handshake_message(msg_type: int, message_seq: int, body: bytes) -> bytes:
    """A handshake message in one fragment, as it is sent and as it is hashed (RFC 6347, 4.2.6)."""
    length = len(body).to_bytes(3, "big")
    return bytes([msg_type]) + length + struct.pack("!H", message_seq) + bytes(3) + length + body


def parse_handshake(fragment: bytes) -> tuple[int, int, bytes, bytes]:
    """(type, message_seq, body, whole message) of an unfragmented handshake message."""
    if len(fragment) < HANDSHAKE_HEADER_LEN:
        raise DtlsError("short handshake message")
    msg_type = fragment[0]
    length = int.from_bytes(fragment[1:4], "big")
    message_seq = int.from_bytes(fragment[4:6], "big")
    offset = int.from_bytes(fragment[6:9], "big")
    fragment_length = int.from_bytes(fragment[9:12], "big")
    if offset != 0 or fragment_length != length or len(fragment) != HANDSHAKE_HEADER_LEN + length:
        raise DtlsError("fragmented handshake messages are not supported")
    return msg_type, message_seq, fragment[HANDSHAKE_HEADER_LEN:], fragment


@dataclass
class _Direction:
    """Keys and sequence numbers of one direction of the connection."""

    epoch: int = 0
    seq: int = 0
    cipher: AESCCM | None = None
    salt: bytes = b""


@dataclass
class Dtls12PskClient:
    """One DTLS 1.2 session to ``server`` with a PSK; see the module docstring."""

    host: str
    port: int
    identity: bytes
    psk: bytes
    hello: HelloOptions = field(default_factory=HelloOptions)
    #: Bind the client's socket here (address, port); default: any port on loopback.
    local: tuple[str, int] | None = None
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind(self.local or ("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        self.sock.connect((self.host, self.port))
        self.client_random = struct.pack("!I", int(time.time())) + os.urandom(28)
        self.server_random = b""
        self.master_secret = b""
        #: The server echoed these extensions (so the session uses them).
        self.server_extensions: set[int] = set()
        self.connected = False
        self._write = _Direction()
        self._read = _Direction()
        self._message_seq = 0
        self._plain_seq = 0
        self._transcript = b""

    # --- public use ---------------------------------------------------------------------

    @property
    def local_address(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2]

    @property
    def uses_extended_master_secret(self) -> bool:
        return EXT_EXTENDED_MASTER_SECRET in self.server_extensions

    def handshake(self) -> None:
        """Complete a full handshake; :class:`AlertReceived` if the server refuses it."""
        deadline = time.monotonic() + self.timeout_s
        first_hello = self._client_hello(cookie=b"")
        cookie = self._await_cookie([first_hello], deadline)
        self._message_seq = 1
        hello = self._client_hello(cookie)
        self._transcript = hello
        server_flight = self._await_server_hello_done(hello, deadline)
        for message in server_flight:
            self._transcript += message
        self._derive_keys()
        flight = self._client_final_flight()
        self._await_server_finished(flight, deadline)
        self.connected = True

    def send_application_data(self, data: bytes) -> None:
        self._send_records([self._protected(CT_APPLICATION_DATA, data)])

    def send_protected(self, content_type: int, plaintext: bytes) -> None:
        """Any record under the session's keys (a renegotiating ClientHello, an alert)."""
        self._send_records([self._protected(content_type, plaintext)])

    def renegotiation_hello(self) -> bytes:
        """The ClientHello a renegotiating client would send inside the session."""
        self._message_seq += 1
        return self._client_hello(cookie=b"")

    def receive(self, timeout_s: float) -> list[tuple[int, bytes]]:
        """(content type, plaintext) of what arrives within ``timeout_s``.

        Raises :class:`AlertReceived` for an alert (after the records before it).
        """
        got: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + timeout_s
        while True:
            datagram = self._recv(deadline)
            if datagram is None:
                return got
            for content_type, epoch, seq, fragment in parse_records(datagram):
                plaintext = self._unprotect(content_type, epoch, seq, fragment)
                if plaintext is None:
                    continue
                if content_type == CT_ALERT and len(plaintext) >= 2:
                    raise AlertReceived(plaintext[0], plaintext[1], epoch > 0)
                got.append((content_type, plaintext))
            if got:
                return got

    def request(self, coap: bytes, timeout_s: float = 3.0) -> bytes:
        """Send one CoAP message and return the first application data that comes back."""
        self.send_application_data(coap)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for content_type, plaintext in self.receive(deadline - time.monotonic()):
                if content_type == CT_APPLICATION_DATA:
                    return plaintext
        raise TimeoutError(f"no answer within {timeout_s} s")

    def close_notify(self) -> None:
        """An authenticated (encrypted) close_notify, as a real client ends a session."""
        self._send_records([self._protected(CT_ALERT, bytes([ALERT_WARNING, ALERT_CLOSE_NOTIFY]))])

    def send_datagram(self, datagram: bytes) -> None:
        self.sock.send(datagram)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Dtls12PskClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- handshake steps ----------------------------------------------------------------

    def _client_hello(self, cookie: bytes) -> bytes:
        suites = [TLS_PSK_WITH_AES_128_CCM_8]
        if self.hello.scsv:
            suites.append(TLS_EMPTY_RENEGOTIATION_INFO_SCSV)
        body = DTLS_1_2 + self.client_random
        body += b"\x00"  # no session id
        body += bytes([len(cookie)]) + cookie
        body += struct.pack("!H", 2 * len(suites)) + b"".join(struct.pack("!H", s) for s in suites)
        body += b"\x01\x00"  # compression: null
        extensions = b""
        if self.hello.extended_master_secret:
            extensions += struct.pack("!HH", EXT_EXTENDED_MASTER_SECRET, 0)
        if self.hello.renegotiation_info:
            extensions += struct.pack("!HH", EXT_RENEGOTIATION_INFO, 1) + b"\x00"
        if extensions:  # none at all: the extensions field is left out (RFC 5246, 7.4.1.2)
            body += struct.pack("!H", len(extensions)) + extensions
        return handshake_message(HT_CLIENT_HELLO, self._message_seq, body)

    def _await_cookie(self, flight: list[bytes], deadline: float) -> bytes:
        records = [self._plain(CT_HANDSHAKE, message) for message in flight]
        while True:
            for message in self._exchange(records, deadline):
                msg_type, _, body, _ = parse_handshake(message)
                if msg_type == HT_HELLO_VERIFY_REQUEST:
                    cookie_len = body[2]
                    return body[3 : 3 + cookie_len]
                if msg_type == HT_SERVER_HELLO:
                    raise DtlsError("the server skipped the cookie exchange")

    def _await_server_hello_done(self, hello: bytes, deadline: float) -> list[bytes]:
        records = [self._plain(CT_HANDSHAKE, hello)]
        messages: dict[int, bytes] = {}
        while True:
            for message in self._exchange(records, deadline):
                msg_type, message_seq, body, whole = parse_handshake(message)
                if msg_type == HT_HELLO_VERIFY_REQUEST:
                    continue
                messages[message_seq] = whole
                if msg_type == HT_SERVER_HELLO:
                    self._server_hello(body)
                if msg_type == HT_SERVER_HELLO_DONE:
                    ordered = [messages[s] for s in sorted(messages)]
                    if parse_handshake(ordered[0])[0] != HT_SERVER_HELLO:
                        raise DtlsError("ServerHelloDone without ServerHello")
                    return ordered
                if msg_type not in (HT_SERVER_HELLO, HT_SERVER_KEY_EXCHANGE):
                    raise DtlsError(f"unexpected handshake message {msg_type}")
            records = []  # the rest of the flight is still on its way

    def _server_hello(self, body: bytes) -> None:
        if body[:2] != DTLS_1_2:
            raise DtlsError("the server did not choose DTLS 1.2")
        self.server_random = body[2:34]
        pos = 34
        pos += 1 + body[pos]  # session id
        suite = struct.unpack("!H", body[pos : pos + 2])[0]
        if suite != TLS_PSK_WITH_AES_128_CCM_8:
            raise DtlsError(f"the server chose cipher suite {suite:#06x}")
        pos += 3  # suite, compression
        if pos + 2 <= len(body):
            end = pos + 2 + struct.unpack("!H", body[pos : pos + 2])[0]
            pos += 2
            while pos + 4 <= end:
                ext_type, ext_len = struct.unpack("!HH", body[pos : pos + 4])
                self.server_extensions.add(ext_type)
                pos += 4 + ext_len

    def _derive_keys(self) -> None:
        identity = struct.pack("!H", len(self.identity)) + self.identity
        self._message_seq += 1
        self._client_key_exchange = handshake_message(
            HT_CLIENT_KEY_EXCHANGE, self._message_seq, identity
        )
        self._transcript += self._client_key_exchange
        pre_master = psk_pre_master_secret(self.psk)
        if self.uses_extended_master_secret:
            session_hash = hashlib.sha256(self._transcript).digest()
            self.master_secret = prf(pre_master, b"extended master secret", session_hash, 48)
        else:
            seed = self.client_random + self.server_random
            self.master_secret = prf(pre_master, b"master secret", seed, 48)
        block = prf(
            self.master_secret,
            b"key expansion",
            self.server_random + self.client_random,
            2 * KEY_LEN + 2 * FIXED_IV_LEN,
        )
        client_key, server_key = block[:KEY_LEN], block[KEY_LEN : 2 * KEY_LEN]
        client_iv = block[2 * KEY_LEN : 2 * KEY_LEN + FIXED_IV_LEN]
        server_iv = block[2 * KEY_LEN + FIXED_IV_LEN :]
        self._next_write = _Direction(1, 0, AESCCM(client_key, tag_length=TAG_LEN), client_iv)
        self._next_read = _Direction(1, 0, AESCCM(server_key, tag_length=TAG_LEN), server_iv)

    def _client_final_flight(self) -> list[bytes]:
        records = [self._plain(CT_HANDSHAKE, self._client_key_exchange)]
        records.append(self._plain(CT_CHANGE_CIPHER_SPEC, b"\x01"))
        self._write = self._next_write
        verify = prf(
            self.master_secret, b"client finished", hashlib.sha256(self._transcript).digest(), 12
        )
        self._message_seq += 1
        finished = handshake_message(HT_FINISHED, self._message_seq, verify)
        self._transcript += finished
        records.append(self._protected(CT_HANDSHAKE, finished))
        return records

    def _await_server_finished(self, flight: list[bytes], deadline: float) -> None:
        expected = prf(
            self.master_secret, b"server finished", hashlib.sha256(self._transcript).digest(), 12
        )
        while True:
            for message in self._exchange(flight, deadline):
                msg_type, _, body, _ = parse_handshake(message)
                if msg_type == HT_FINISHED:
                    if not hmac.compare_digest(body, expected):
                        raise DtlsError("the server's Finished does not verify")
                    return

    # --- records ------------------------------------------------------------------------

    def _plain(self, content_type: int, fragment: bytes) -> bytes:
        """An epoch-0 record (the handshake before ChangeCipherSpec)."""
        out = record(content_type, 0, self._plain_seq, fragment)
        self._plain_seq += 1
        return out

    def _protected(self, content_type: int, plaintext: bytes) -> bytes:
        direction = self._write
        assert direction.cipher is not None, "no keys yet"
        seq_num = struct.pack("!H", direction.epoch) + direction.seq.to_bytes(6, "big")
        aad = seq_num + bytes([content_type]) + DTLS_1_2 + struct.pack("!H", len(plaintext))
        sealed = direction.cipher.encrypt(direction.salt + seq_num, plaintext, aad)
        out = record(content_type, direction.epoch, direction.seq, seq_num + sealed)
        direction.seq += 1
        return out

    def _unprotect(self, content_type: int, epoch: int, seq: int, fragment: bytes) -> bytes | None:
        if epoch == 0:
            return fragment
        direction = self._next_read if self._read.epoch == 0 else self._read
        if epoch != direction.epoch or direction.cipher is None:
            return None
        if len(fragment) < EXPLICIT_NONCE_LEN + TAG_LEN:
            return None
        explicit, sealed = fragment[:EXPLICIT_NONCE_LEN], fragment[EXPLICIT_NONCE_LEN:]
        seq_num = struct.pack("!H", epoch) + seq.to_bytes(6, "big")
        length = len(sealed) - TAG_LEN
        aad = seq_num + bytes([content_type]) + DTLS_1_2 + struct.pack("!H", length)
        try:
            return direction.cipher.decrypt(direction.salt + explicit, sealed, aad)
        except InvalidTag:
            return None

    # --- the socket ---------------------------------------------------------------------

    def _send_records(self, records: list[bytes]) -> None:
        self.sock.send(b"".join(records))

    def _recv(self, deadline: float) -> bytes | None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        self.sock.settimeout(remaining)
        try:
            return self.sock.recv(4096)
        except (TimeoutError, BlockingIOError, ConnectionRefusedError):
            return None  # (an ICMP port unreachable: nobody is listening)

    def _exchange(self, records: list[bytes], deadline: float):
        """Send a flight and yield the handshake messages that come back; resend it once a second.

        Raises :class:`AlertReceived` for a fatal alert (or, at ``deadline``, for
        a warning alert received meanwhile: tinydtls sends close_notify before
        handshake_failure), TimeoutError at ``deadline``.
        """
        resend_at = 0.0
        warning: AlertReceived | None = None
        while True:
            now = time.monotonic()
            if now >= deadline:
                if warning is not None:
                    raise warning
                raise TimeoutError("the server did not answer the handshake in time")
            if records and now >= resend_at:
                self._send_records(records)
                resend_at = now + 1.0
            datagram = self._recv(min(deadline, resend_at if records else deadline))
            if datagram is None:
                continue
            for content_type, epoch, seq, fragment in parse_records(datagram):
                if content_type == CT_CHANGE_CIPHER_SPEC:
                    self._read = self._next_read
                    continue
                plaintext = self._unprotect(content_type, epoch, seq, fragment)
                if plaintext is None:
                    continue
                if content_type == CT_ALERT and len(plaintext) >= 2:
                    alert = AlertReceived(plaintext[0], plaintext[1], epoch > 0)
                    if plaintext[0] == ALERT_FATAL:
                        raise alert
                    warning = alert
                    deadline = min(deadline, time.monotonic() + 0.5)  # the fatal one follows
                if content_type == CT_HANDSHAKE:
                    yield plaintext
