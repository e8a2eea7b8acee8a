"""DTLS 1.2 wire numbers (RFC 5246, RFC 6347) and tinydtls's event codes, in one place.

The server's record sniffers (:mod:`coapdev.server.dtls.records`), the
client's ``-v`` traces and the test tools' DTLS client import these; none of
them spells a content type or an alert number itself.  Plain ``IntEnum``
members compare and pack as the integers they are; hot paths bind them to
module-level ints once.  No imports beyond the standard library, so the CLI
can use it without loading the server.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

#: DTLSPlaintext header: type (1), version (2), epoch (2), sequence (6), length (2).
RECORD_HEADER_LEN: Final = 13
#: Handshake header: type (1), length (3), message_seq (2), fragment offset and length (3 + 3).
HANDSHAKE_HEADER_LEN: Final = 12
#: ProtocolVersion of DTLS 1.2 on the wire.
DTLS_1_2: Final = b"\xfe\xfd"


class ContentType(IntEnum):
    """Record content types (RFC 5246, 6.2.1)."""

    CHANGE_CIPHER_SPEC = 20
    ALERT = 21
    HANDSHAKE = 22
    APPLICATION_DATA = 23


class HandshakeType(IntEnum):
    """Handshake message types (RFC 5246, 7.4; RFC 6347, 4.2.2)."""

    CLIENT_HELLO = 1
    SERVER_HELLO = 2
    HELLO_VERIFY_REQUEST = 3
    SERVER_KEY_EXCHANGE = 12
    SERVER_HELLO_DONE = 14
    CLIENT_KEY_EXCHANGE = 16
    FINISHED = 20


class AlertLevel(IntEnum):
    """Alert levels (RFC 5246, 7.2); tinydtls reports its own events at level 0."""

    EVENT = 0  # tinydtls: not an alert, an event (see TINYDTLS_EVENT_CONNECTED)
    WARNING = 1
    FATAL = 2


class AlertDescription(IntEnum):
    """The alerts tinydtls sends or coapdev handles (RFC 5246, 7.2)."""

    CLOSE_NOTIFY = 0
    UNEXPECTED_MESSAGE = 10
    BAD_RECORD_MAC = 20
    HANDSHAKE_FAILURE = 40
    ILLEGAL_PARAMETER = 47
    DECODE_ERROR = 50
    DECRYPT_ERROR = 51
    PROTOCOL_VERSION = 70
    INSUFFICIENT_SECURITY = 71
    INTERNAL_ERROR = 80


class ExtensionType(IntEnum):
    """The ClientHello extensions the handshake policy looks at."""

    EXTENDED_MASTER_SECRET = 0x0017  # RFC 7627
    RENEGOTIATION_INFO = 0xFF01  # RFC 5746


class CipherSuite(IntEnum):
    TLS_PSK_WITH_AES_128_CCM_8 = 0xC0A8  # RFC 6655
    TLS_EMPTY_RENEGOTIATION_INFO_SCSV = 0x00FF  # RFC 5746, 3.3


#: tinydtls's event for a finished handshake (``DTLS_EVENT_CONNECTED``, dtls.h).
TINYDTLS_EVENT_CONNECTED: Final = 0x01DE


def alert_name(description: int) -> str:
    """``handshake_failure`` for 40; ``alert N`` for one not listed above."""
    try:
        return AlertDescription(description).name.lower()
    except ValueError:
        return f"alert {description}"
