import pytest

from coapdev.errors import InvalidQRPayload
from coapdev.keys import mint_factory_key
from coapdev.qr import QRPayload, parse_qr_text, terminal_qr


def test_round_trip_with_and_without_port():
    key = mint_factory_key()
    p = QRPayload("K3V9X0Q2MA", key)
    assert p.text() == f"COAPDEV:1:K3V9X0Q2MA:{key}"
    assert parse_qr_text(p.text()) == p
    q = QRPayload("K3V9X0Q2MA", key, 5700)
    assert q.text().endswith(":5700")
    assert parse_qr_text("  " + q.text().lower() + "\n") == q


def test_text_is_qr_alphanumeric():
    text = QRPayload("K3V9X0Q2MA", mint_factory_key(), 5700).text()
    assert set(text) <= set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:")


@pytest.mark.parametrize(
    "text, message",
    [
        ("http://example.com", "not a coapdev QR code"),
        ("COAPDEV:2:K3V9X0Q2MA:7QJ2M4KX9TZC8RNW", "version '2'"),
        ("COAPDEV:1:K3V9X0Q2MA", "COAPDEV:1:DEVICE:KEY"),
        ("COAPDEV:1:K3V9!:7QJ2M4KX9TZC8RNW", "device id"),
        ("COAPDEV:1:K3V9X0Q2MA:AAAAAAAAAAAAAAAB", "mistyped"),
    ],
)
def test_bad_payloads(text, message):
    with pytest.raises(InvalidQRPayload, match=message):
        parse_qr_text(text)


def test_bad_port():
    key = mint_factory_key()
    with pytest.raises(InvalidQRPayload, match="port"):
        parse_qr_text(f"COAPDEV:1:K3V9X0Q2MA:{key}:99999")


def test_terminal_rendering_has_rows():
    out = terminal_qr("COAPDEV:1:K3V9X0Q2MA:" + mint_factory_key())
    assert len(out.splitlines()) > 10
