"""The QR payload printed on a device's label and shown by the gateway.

Format (version 1), all upper case so QR codes use their compact
alphanumeric mode::

    COAPDEV:1:<DEVICE ID>:<FACTORY KEY>[:<PORT>]

for example ``COAPDEV:1:K3V9X0Q2MA:7QJ2M4KX9TZC8RNW3HF8`` or with a port
``COAPDEV:1:K3V9X0Q2MA:7QJ2M4KX9TZC8RNW3HF8:5700``.  The key is the canonical
factory key; its check character catches a mistyped or misread key before
any traffic.  Parsers accept lower case and surrounding white space, and
refuse other versions with a clear message.
"""

from __future__ import annotations

from dataclasses import dataclass

from .const import DEFAULT_COAPS_PORT, QR_PREFIX, QR_VERSION
from .errors import InvalidKeyText, InvalidQRPayload
from .keys import ALPHABET, canonical_factory_key


@dataclass(frozen=True, slots=True)
class QRPayload:
    device_id: str
    factory_key: str  # canonical
    port: int | None = None

    def text(self) -> str:
        parts = [QR_PREFIX, str(QR_VERSION), self.device_id, self.factory_key]
        if self.port is not None and self.port != DEFAULT_COAPS_PORT:
            parts.append(str(self.port))
        return ":".join(parts)


def parse_qr_text(text: str) -> QRPayload:
    parts = text.strip().upper().split(":")
    if len(parts) < 2 or parts[0] != QR_PREFIX:
        raise InvalidQRPayload(f"not a coapdev QR code (expected text starting {QR_PREFIX}:)")
    if parts[1] != str(QR_VERSION):
        raise InvalidQRPayload(
            f"QR payload version {parts[1]!r} is not supported (this coapdev reads {QR_VERSION})"
        )
    if len(parts) not in (4, 5):
        raise InvalidQRPayload("QR payload must be COAPDEV:1:DEVICE:KEY[:PORT]")
    device_id = parts[2]
    if not device_id or any(c not in ALPHABET for c in device_id):
        raise InvalidQRPayload(f"QR payload has an invalid device id {device_id!r}")
    try:
        key = canonical_factory_key(parts[3])
    except InvalidKeyText as exc:
        raise InvalidQRPayload(f"QR payload key: {exc}") from None
    port = None
    if len(parts) == 5:
        if not parts[4].isdigit() or not 0 < int(parts[4]) < 65536:
            raise InvalidQRPayload(f"QR payload has an invalid port {parts[4]!r}")
        port = int(parts[4])
    return QRPayload(device_id=device_id, factory_key=key, port=port)


def terminal_qr(text: str) -> str:
    """The QR code as text for a terminal (two rows per line, half blocks)."""
    import io

    import qrcode

    qr = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_M)
    qr.add_data(text)
    qr.make(fit=True)
    out = io.StringIO()
    qr.print_ascii(out=out, invert=True)
    return out.getvalue()
