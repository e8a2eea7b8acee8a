import json

import cbor2
import pytest

from coapdev.const import ContentFormat
from coapdev.errors import PayloadError
from coapdev.payload import (
    decode,
    encode,
    format_for_humans,
    parse_typed_payload,
)


def test_round_trips():
    value = {"on": True, "n": [1, 2.5, None], "s": "ü"}
    for fmt in (ContentFormat.CBOR, ContentFormat.JSON):
        assert decode(encode(value, fmt), fmt) == value
    assert decode(b"hello", ContentFormat.TEXT) == "hello"
    assert decode(b"\x00\x01", None) == b"\x00\x01"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff",
        b"\x1c",
        b"\x5a\xff\xff\xff\xff",
        b"\x81" * 1000,
        b"\x9f" * 5000,
        b"\xa1\x01",
        b"\x01\x02",
        b"\xbf\x01\x02",
        b"\xc1" * 100 + b"\x01" + b"\x00",
    ],
)
def test_hostile_cbor_is_a_payload_error(data):
    with pytest.raises(PayloadError):
        decode(data, ContentFormat.CBOR)


def test_deep_json_is_refused():
    with pytest.raises(PayloadError):
        decode(b"[" * 100_000 + b"]" * 100_000, ContentFormat.JSON)
    with pytest.raises(PayloadError, match="nested deeper"):
        decode(b"[" * 40 + b"]" * 40, ContentFormat.JSON)
    assert decode(b"[" * 30 + b"]" * 30, ContentFormat.JSON)


def test_bad_utf8_text():
    with pytest.raises(PayloadError):
        decode(b"\xff\xfe", ContentFormat.TEXT)


@pytest.mark.parametrize(
    "text, expected, fmt",
    [
        ('{"on": true}', {"on": True}, ContentFormat.CBOR),
        ("{\"k\": h'0102'}", {"k": b"\x01\x02"}, ContentFormat.CBOR),
        ("[1, 2]", [1, 2], ContentFormat.CBOR),
        ("42", "42", ContentFormat.TEXT),  # words and numbers alike are text
        ("true", "true", ContentFormat.TEXT),
        ("on", "on", ContentFormat.TEXT),
        ("hello world", "hello world", ContentFormat.TEXT),
    ],
)
def test_typed_payloads(text, expected, fmt):
    data, got_fmt = parse_typed_payload(text)
    assert got_fmt == fmt
    assert decode(data, got_fmt) == expected


@pytest.mark.parametrize("text", ["{on", "[1,", '"unterminated', "h'0g'"])
def test_structured_looking_garbage_is_an_error_not_text(text):
    with pytest.raises(PayloadError, match="not JSON or CBOR diagnostic"):
        parse_typed_payload(text)


def test_explicit_types():
    assert parse_typed_payload("{x", "text") == (b"{x", ContentFormat.TEXT)
    assert parse_typed_payload('{"a":1}', "json") == (b'{"a":1}', ContentFormat.JSON)
    with pytest.raises(PayloadError):
        parse_typed_payload("{x", "json")


def test_pretty_output():
    assert json.loads(format_for_humans(cbor2.dumps({"on": True}), ContentFormat.CBOR)) == {
        "on": True
    }
    assert "h'0102'" in format_for_humans(cbor2.dumps({"k": b"\x01\x02"}), ContentFormat.CBOR)
    assert format_for_humans(b"\x00\xff", None) == "00 ff"
