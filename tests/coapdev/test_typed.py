"""Typed resources: the link attributes a device publishes and what a client reads back."""

from __future__ import annotations

import math

import pytest
from aiocoap.util.linkformat import Link, LinkFormat

from coapdev.const import ResourceKind
from coapdev.errors import PayloadError
from coapdev.typed import (
    MAX_ATTRIBUTE_CHARS,
    MAX_TEXT_STATE_CHARS,
    MAX_TYPED_RESOURCES,
    TypedResource,
    add_link_attributes,
    parse_typed_resources,
    sensor_value,
    switch_state,
)


def listing(*links: tuple[str, dict]) -> str:
    return str(LinkFormat([Link(path, **attrs) for path, attrs in links]))


def test_round_trip_through_link_format():
    attrs = add_link_attributes(
        {"rt": "coapdev.script", "ct": "50", "obs": None, "title": "Kitchen"},
        ResourceKind.SENSOR,
        unit="µg/m³",
        device_class="pm25",
        value_key="pm2.5",
    )
    assert attrs["rt"] == "coapdev.script coapdev.sensor" and attrs["if"] == "core.s"
    (parsed,) = parse_typed_resources(listing(("/air", attrs)))
    assert parsed == TypedResource(
        "/air", ResourceKind.SENSOR, "Kitchen", "µg/m³", "pm25", "pm2.5", observable=True
    )


def test_the_kind_type_is_added_once():
    attrs = add_link_attributes({"rt": "coapdev.light"}, ResourceKind.LIGHT)
    assert attrs == {"rt": "coapdev.light", "if": "core.a"}


def test_untyped_duplicate_and_odd_links_are_left_out():
    text = listing(
        ("/device", {"rt": "coapdev.device"}),
        ("/a", {"rt": "coapdev.script coapdev.dimmer"}),  # not a kind this client knows
        ("/b", {"rt": "other coapdev.button", "title": "Doorbell\x07\n"}),
        ("/b", {"rt": "coapdev.switch"}),  # the same path again: the first one counts
        ("relative", {"rt": "coapdev.switch"}),
        ("/c", {"rt": "coapdev.switch", "title": "x" * 500}),
    )
    parsed = parse_typed_resources(text)
    assert [(r.path, r.kind) for r in parsed] == [
        ("/b", ResourceKind.BUTTON),
        ("/c", ResourceKind.SWITCH),
    ]
    assert parsed[0].title == "Doorbell" and len(parsed[1].title) == MAX_ATTRIBUTE_CHARS


def test_a_device_listing_thousands_is_cut_off():
    text = listing(*((f"/s{i}", {"rt": "coapdev.sensor"}) for i in range(MAX_TYPED_RESOURCES + 50)))
    assert len(parse_typed_resources(text)) == MAX_TYPED_RESOURCES


def test_malformed_link_format_is_a_payload_error():
    with pytest.raises(PayloadError):
        parse_typed_resources('</a>;rt="unterminated')


@pytest.mark.parametrize(
    "value, key, expected",
    [
        ({"on": True}, "", True),
        ({"on": False, "power": 3}, "", False),
        ({"relay": 1}, "relay", True),
        ({"other": True}, "", None),
        (True, "", True),
        (0, "", False),
        (2, "", None),
        (" ON\n", "", True),
        ("false", "", False),
        (b"1\n", "", True),
        (b"\xff", "", None),
        ("toggle", "", None),  # a command, not a state
        (None, "", None),
        ([True], "", None),
    ],
)
def test_switch_state(value, key, expected):
    assert switch_state(value, key) is expected


@pytest.mark.parametrize(
    "value, key, expected",
    [
        ({"value": 21.5}, "", 21.5),
        ({"celsius": 47.2, "sensor": "cpu"}, "celsius", 47.2),
        ({"celsius": None}, "celsius", None),
        ({"celsius": 1}, "", None),
        (12, "", 12),
        (True, "", 1),
        ("47.2\n", "", 47.2),
        ("  -3 ", "", -3),
        (b"1e3", "", 1000.0),
        ("nan", "", None),
        (float("inf"), "", None),
        ("1" * 5000, "", None),  # too long for an int, infinite as a float
        ("", "", None),
        ("sunny", "", "sunny"),
        ("w" * 1000, "", "w" * MAX_TEXT_STATE_CHARS),
        ({"value": [1, 2]}, "", None),
    ],
)
def test_sensor_value(value, key, expected):
    got = sensor_value(value, key)
    assert got == expected and type(got) is type(expected)
    assert not (isinstance(got, float) and not math.isfinite(got))
