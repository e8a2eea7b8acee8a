"""The client's onboarding and rekey messages, built and parsed without a device."""

from __future__ import annotations

import json

import pytest

from coapdev.client import (
    Credentials,
    DeviceAddress,
    Located,
    onboard_request,
    parse_onboard_answer,
    parse_rekey_answer,
    parse_tradfri_answer,
    tradfri_request,
)
from coapdev.const import KeyFormat
from coapdev.errors import ClientError

HERE = DeviceAddress("127.0.0.1", 5700)
ANSWER = {
    "device": "K3V9X0Q2MA",
    "identity": "c-1234",
    "key": b"\x01" * 16,
    "id": "c1",
    "name": "laptop",
    "role": "admin",
}


def test_the_onboard_request_names_the_client_and_the_key_format():
    assert onboard_request("laptop") == {"name": "laptop"}
    assert onboard_request("laptop", text_key=True) == {"name": "laptop", "key-format": "text"}
    assert onboard_request(None)["name"]  # a default name: user@host


def test_an_onboard_answer_becomes_credentials():
    located = Located(HERE, name="Kitchen")
    got = parse_onboard_answer(ANSWER, located)
    assert (got.device_id, got.identity, got.key) == ("K3V9X0Q2MA", "c-1234", b"\x01" * 16)
    assert (got.client_id, got.name, got.role, got.device_name) == (
        "c1",
        "laptop",
        "admin",
        "Kitchen",
    )
    assert got.key_format is KeyFormat.BYTES and got.address == HERE
    text = parse_onboard_answer({**ANSWER, "key": "A" * 16}, located)
    assert text.key == b"A" * 16 and text.key_format is KeyFormat.TEXT


@pytest.mark.parametrize(
    "answer",
    [
        {k: v for k, v in ANSWER.items() if k != "identity"},
        {**ANSWER, "key": "ключ"},
        {**ANSWER, "key": 1.5},
        "not a map",
        None,
    ],
)
def test_a_malformed_onboard_answer_is_one_client_error(answer):
    with pytest.raises(ClientError, match=r"onboarding answer from coaps://127\.0\.0\.1:5700"):
        parse_onboard_answer(answer, Located(HERE))


def test_a_rekey_answer_replaces_identity_and_key_only():
    old = Credentials("K3V9X0Q2MA", HERE, "c-1234", b"\x01" * 16, name="laptop", role="user")
    new = parse_rekey_answer(old, {"identity": "c-5678", "key": b"\x02" * 16})
    assert (new.identity, new.key, new.name, new.role) == ("c-5678", b"\x02" * 16, "laptop", "user")
    assert old.identity == "c-1234"  # a copy
    with pytest.raises(ClientError, match="rekey answer is malformed"):
        parse_rekey_answer(old, {"identity": "c-5678"})


def test_the_tradfri_exchange_is_json_with_a_text_key():
    assert json.loads(tradfri_request("tradfri-app")) == {"9090": "tradfri-app"}
    got = parse_tradfri_answer({"9091": "s3cr3tKEYs3cr3tK", "9029": "1.0"}, HERE, "tradfri-app")
    assert (got.identity, got.client_id, got.name) == ("tradfri-app",) * 3
    assert got.key == b"s3cr3tKEYs3cr3tK" and got.key_format is KeyFormat.TEXT
    assert got.device_id == ""  # learnt from /device with the new key
