import json

import cbor2
import pytest

from coapdev import onboarding
from coapdev.const import FACTORY_IDENTITY, ContentFormat, KeyFormat
from coapdev.errors import BadRequest, Conflict, UnsupportedContentFormat
from coapdev.store import CredentialStore, Origin

NOW = 1_800_000_000.0


@pytest.fixture
def store(tmp_path):
    s = CredentialStore.open(tmp_path / "state", now=NOW)
    s.open_onboarding(600, now=NOW)
    return s


def factory(store):
    return store.principal_for(FACTORY_IDENTITY)


def test_native_exchange_mints_persists_and_answers(store, tmp_path):
    req = onboarding.parse_onboard_request(cbor2.dumps({"name": "laptop"}), ContentFormat.CBOR)
    record = onboarding.onboard(store, req, now=NOW)
    # persisted before anything is answered
    reopened = CredentialStore.open(tmp_path / "state")
    assert reopened.psk_for(record.identity.encode()) == record.key
    body = onboarding.onboard_response(record, store.device.id)
    assert body == {
        "id": record.id,
        "identity": record.identity,
        "key": record.key,
        "name": "laptop",
        "role": "admin",
        "device": store.device.id,
    }
    assert isinstance(body["key"], bytes) and len(body["key"]) == 32


def test_text_key_can_be_asked_for_and_json_is_accepted(store):
    req = onboarding.parse_onboard_request(
        json.dumps({"name": "cli", "key-format": "text"}).encode(), ContentFormat.JSON
    )
    assert req.key_format is KeyFormat.TEXT
    record = onboarding.onboard(store, req, now=NOW)
    assert isinstance(onboarding.onboard_response(record, "D")["key"], str)


@pytest.mark.parametrize(
    "payload, fmt, error",
    [
        (b"", ContentFormat.CBOR, BadRequest),
        (b"\xff\x00garbage", ContentFormat.CBOR, BadRequest),
        (cbor2.dumps(["laptop"]), ContentFormat.CBOR, BadRequest),
        (cbor2.dumps({"nam": "x"}), ContentFormat.CBOR, BadRequest),
        (cbor2.dumps({"name": ""}), ContentFormat.CBOR, BadRequest),
        (cbor2.dumps({"name": 7}), ContentFormat.CBOR, BadRequest),
        (cbor2.dumps({"name": "x" * 65}), ContentFormat.CBOR, BadRequest),
        (cbor2.dumps({"name": "a\x00b"}), ContentFormat.CBOR, BadRequest),
        (cbor2.dumps({"name": "x", "key-format": "hex"}), ContentFormat.CBOR, BadRequest),
        (cbor2.dumps({"name": "x" * 600}), ContentFormat.CBOR, BadRequest),
        (b"name=x", ContentFormat.TEXT, UnsupportedContentFormat),
        (b"{not json", ContentFormat.JSON, BadRequest),
    ],
)
def test_bad_requests_are_refused_with_a_reason(payload, fmt, error):
    with pytest.raises(error) as info:
        onboarding.parse_onboard_request(payload, fmt)
    assert info.value.message


def test_tradfri_exchange(store):
    identity = onboarding.parse_tradfri_request(json.dumps({"9090": "home-assistant"}).encode())
    record = onboarding.tradfri_onboard(store, identity, now=NOW)
    assert record.identity == "home-assistant" and record.origin is Origin.TRADFRI
    body = json.loads(onboarding.tradfri_response(record))
    assert body["9091"] == record.key.decode("ascii") and len(body["9091"]) == 16
    assert "9029" in body
    with pytest.raises(Conflict):
        onboarding.tradfri_onboard(store, identity, now=NOW)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"[]",
        b'{"9090": 5}',
        b'{"9090": "a b"}',
        b'{"9090": "' + b"x" * 65 + b'"}',
        b"\xff",
        b'{"9091": "x"}',
    ],
)
def test_tradfri_bad_requests(payload):
    with pytest.raises(BadRequest):
        onboarding.parse_tradfri_request(payload)
