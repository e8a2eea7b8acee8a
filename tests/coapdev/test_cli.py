"""The CLI's argument handling and payload rules, without a device."""

from __future__ import annotations

import pytest

from coapdev.cli import parse_args
from coapdev.errors import PayloadError
from coapdev.payload import content_format_number, parse_option, parse_typed_payload


def test_positionals_and_options_mix_in_any_order():
    args = parse_args(["put", "/light", "--type", "json", '{"on": true}'])
    assert (args.uri, args.payload, args.payload_type) == ("/light", '{"on": true}', "json")
    args = parse_args(["put", "/light", "--raw", "on", "--timeout", "3"])
    assert (args.payload, args.raw, args.timeout) == ("on", True, 3.0)


def test_observe_exec_arguments_after_double_dash_go_to_the_command():
    args = parse_args(["observe", "/b", "--exec", "hook", "--count", "2", "--", "-x", "--count"])
    assert (args.exec_cmd, args.exec_args, args.count) == ("hook", ["-x", "--count"], 2)


def test_a_payload_may_follow_double_dash():
    assert parse_args(["put", "/t", "--", "-5"]).payload == "-5"


@pytest.mark.parametrize(
    "text, number",
    [("0", 0), ("json", 50), ("CBOR", 60), ("application/json", 50), ("65535", 65535)],
)
def test_content_formats_by_number_or_name(text, number):
    assert content_format_number(text) == number


@pytest.mark.parametrize("text", ["65536", "-1", "nope", ""])
def test_bad_content_formats(text):
    with pytest.raises(PayloadError):
        content_format_number(text)


def test_options_by_number_or_name():
    assert parse_option("uri-query=a=1") == (15, b"a=1")
    assert parse_option("15=b") == (15, b"b")
    assert parse_option("2048=0x0102") == (2048, b"\x01\x02")
    assert parse_option("content-format=50") == (12, b"\x32")
    assert parse_option("60=0") == (60, b"")  # Size1 0: uint zero is the empty value
    for bad in ("15", "0=x", "70000=1", "no-such-option=1", "content-format=x", "2048=0xzz"):
        with pytest.raises(PayloadError):
            parse_option(bad)


def test_the_one_typing_rule():
    assert parse_typed_payload("1") == (b"1", 0)
    assert parse_typed_payload("true") == (b"true", 0)
    assert parse_typed_payload(" [1]")[1] == 60
    assert parse_typed_payload("h'01'") == (b"\x41\x01", 60)
    assert parse_typed_payload("1", "cbor") == (b"\x01", 60)


def test_device_text_is_escaped():
    from coapdev.client import escape_text

    assert escape_text("a\x1b[2Jb\r\n\u202e") == "a\\x1b[2Jb\\x0d\\x0a\\u202e"
    assert escape_text("café ok") == "café ok"


def test_dtls_records_are_named_for_traces():
    from coapdev.client_transport import describe_dtls

    hello = bytes([22, 254, 253, 0, 0]) + bytes(6) + (1).to_bytes(2, "big") + b"\x01"
    assert describe_dtls(hello) == "ClientHello"
    assert describe_dtls(b"\x01\x02") == "2 bytes"
