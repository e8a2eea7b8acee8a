"""DTLS record sniffing: pure functions of one datagram's bytes, no state, no I/O.

The transport never decrypts anything itself; it only looks at record
headers (content type, epoch, length) and at plaintext (epoch 0) handshake
and alert records, to decide what tinydtls gets and to learn what tinydtls
did (sent a ServerHello, a fatal alert).  Every function here takes any
bytes and never raises (tests/fuzz feeds them random data).
"""

from __future__ import annotations

from collections.abc import Iterator

from ...dtls_numbers import (
    DTLS_1_2,
    RECORD_HEADER_LEN,
    AlertDescription,
    AlertLevel,
    CipherSuite,
    ContentType,
    ExtensionType,
    HandshakeType,
    alert_name,
)

# Plain ints for the per-datagram checks (an IntEnum attribute costs a lookup).
CT_CHANGE_CIPHER_SPEC = int(ContentType.CHANGE_CIPHER_SPEC)
CT_ALERT = int(ContentType.ALERT)
CT_HANDSHAKE = int(ContentType.HANDSHAKE)
CT_APPLICATION_DATA = int(ContentType.APPLICATION_DATA)
HT_CLIENT_HELLO = int(HandshakeType.CLIENT_HELLO)
HT_SERVER_HELLO = int(HandshakeType.SERVER_HELLO)
LEVEL_FATAL = int(AlertLevel.FATAL)
_APPLICATION_DATA = bytes([CT_APPLICATION_DATA])
_EPOCH_0 = b"\x00\x00"
_SCSV = int(CipherSuite.TLS_EMPTY_RENEGOTIATION_INFO_SCSV).to_bytes(2, "big")


def is_client_hello(data: bytes) -> bool:
    """A plaintext ClientHello: the only datagram that may start a session."""
    return (
        len(data) > RECORD_HEADER_LEN
        and data[0] == CT_HANDSHAKE
        and data[3:5] == _EPOCH_0
        and data[RECORD_HEADER_LEN] == HT_CLIENT_HELLO
    )


def record_spans(data: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of each record in a datagram, as its header says (end may run past it)."""
    pos = 0
    while pos + RECORD_HEADER_LEN <= len(data):
        end = pos + RECORD_HEADER_LEN + int.from_bytes(data[pos + 11 : pos + 13], "big")
        yield pos, end
        pos = end


def records(data: bytes) -> Iterator[tuple[int, int]]:
    """(content type, epoch) of each record."""
    for pos, _ in record_spans(data):
        yield data[pos], int.from_bytes(data[pos + 3 : pos + 5], "big")


def has_epoch1_handshake(data: bytes) -> bool:
    """The datagram carries an encrypted handshake record: the client's Finished."""
    return any(ct == CT_HANDSHAKE and epoch == 1 for ct, epoch in records(data))


def starts_renegotiation(data: bytes) -> bool:
    """An encrypted handshake record on an established session (a ClientHello, since
    retransmitted Finished messages never get this far)."""
    one_record = RECORD_HEADER_LEN + int.from_bytes(data[11:13], "big") >= len(data)
    if one_record and data[:1] == _APPLICATION_DATA:  # (data[:1]: a datagram may be empty)
        return False  # the usual case: one application data record
    return has_epoch1_handshake(data)


def has_change_cipher_spec(data: bytes) -> bool:
    return any(ct == CT_CHANGE_CIPHER_SPEC for ct, _ in records(data))


def is_finished_retransmit(data: bytes) -> bool:
    """A client resending its last flight (CCS, or Finished) on an established session."""
    return any(
        ct == CT_CHANGE_CIPHER_SPEC or (ct == CT_HANDSHAKE and epoch == 1)
        for ct, epoch in records(data)
    )


def sent_handshake_signal(data: bytes) -> tuple[bool, int | None]:
    """What a record tinydtls sends says about the handshake: (a ServerHello,
    the description of a fatal alert or None).  Only plaintext (epoch 0)
    handshake and alert records are looked at, never application data."""
    kind = data[0] if data else 0
    if (
        (kind == CT_HANDSHAKE or kind == CT_ALERT)
        and len(data) > RECORD_HEADER_LEN + 1
        and data[3:5] == _EPOCH_0
    ):
        if kind == CT_HANDSHAKE and data[RECORD_HEADER_LEN] == HT_SERVER_HELLO:
            return True, None
        if kind == CT_ALERT and data[RECORD_HEADER_LEN] == LEVEL_FATAL:
            return False, data[RECORD_HEADER_LEN + 1]
    return False, None


def plain_fatal_alert(description: int) -> bytes:
    """An unencrypted (epoch 0) fatal alert record, for a peer whose key did not verify."""
    record = bytes([CT_ALERT]) + DTLS_1_2 + _EPOCH_0 + (2**40).to_bytes(6, "big")
    return record + (2).to_bytes(2, "big") + bytes([LEVEL_FATAL, description])


def refusal_reason(data: bytes, alert: int) -> str:
    """Why tinydtls refused: for a ClientHello, which of the required extensions it lacked."""
    name = f"alert {alert}" if alert == AlertDescription.CLOSE_NOTIFY else alert_name(alert)
    offers = client_hello_offers(data) if is_client_hello(data) else None
    if offers is None:
        return f"handshake refused ({name})"
    lacking = [
        what
        for what, offered in zip(
            ("extended_master_secret", "renegotiation_info"), offers, strict=True
        )
        if not offered
    ]
    if not lacking:
        return f"ClientHello refused ({name})"
    return f"ClientHello without {' and '.join(lacking)} refused ({name})"


def client_hello_offers(data: bytes) -> tuple[bool, bool] | None:
    """Whether a plaintext ClientHello offers extended_master_secret and secure
    renegotiation (the extension or the SCSV); None if it cannot be parsed."""
    try:
        body = data[RECORD_HEADER_LEN + 12 :]
        pos = 2 + 32  # client_version, random
        pos += 1 + body[pos]  # session_id
        pos += 1 + body[pos]  # cookie
        suites_len = int.from_bytes(body[pos : pos + 2], "big")
        suites = body[pos + 2 : pos + 2 + suites_len]
        scsv = any(suites[i : i + 2] == _SCSV for i in range(0, len(suites) - 1, 2))
        pos += 2 + suites_len
        pos += 1 + body[pos]  # compression methods
        extensions: set[int] = set()
        if pos + 2 <= len(body):
            end = min(len(body), pos + 2 + int.from_bytes(body[pos : pos + 2], "big"))
            pos += 2
            while pos + 4 <= end:
                extensions.add(int.from_bytes(body[pos : pos + 2], "big"))
                pos += 4 + int.from_bytes(body[pos + 2 : pos + 4], "big")
        return (
            ExtensionType.EXTENDED_MASTER_SECRET in extensions,
            scsv or ExtensionType.RENEGOTIATION_INFO in extensions,
        )
    except IndexError:
        return None
