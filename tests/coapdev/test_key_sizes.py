"""Key sizes since coapdev's own tinydtls build: longer keys minted, older ones still loaded."""

from __future__ import annotations

import json

import pytest

from coapdev import keys
from coapdev.const import FACTORY_IDENTITY, MAX_IDENTITY_BYTES, MAX_PSK_BYTES
from coapdev.errors import BadRequest
from coapdev.store import STATE_FILE, CredentialStore, validate_identity

NOW = 1_800_000_000.0
LEGACY_FACTORY_KEY = "7QJ2M4KX9TZC8RN" + keys.luhn_check_char("7QJ2M4KX9TZC8RN")


def test_minted_keys_use_the_longer_limits():
    assert MAX_PSK_BYTES == 32 and MAX_IDENTITY_BYTES == 64
    assert len(keys.mint_client_key()) == 32
    assert len(keys.mint_client_key(text=True)) == 16  # Tradfri-style text keys stay short
    assert len(keys.factory_psk(keys.mint_factory_key())) <= MAX_PSK_BYTES


def test_state_files_from_before_keys_grew_still_load(tmp_path):
    """16-byte client keys and a 16-character factory key, as older versions wrote them."""
    store = CredentialStore.open(tmp_path / "state", now=NOW)
    record = store.mint_client("old-laptop", now=NOW)
    store.compact()
    path = tmp_path / "state" / STATE_FILE
    doc = json.loads(path.read_text())
    doc["clients"][0]["key"] = (b"\x01" * 16).hex()
    doc["clients"][0].pop("key-check", None)  # older files had no checksum
    doc["factory"]["key"] = LEGACY_FACTORY_KEY
    path.write_text(json.dumps(doc))
    reopened = CredentialStore.open(tmp_path / "state")
    assert reopened.psk_for(record.identity.encode()) == b"\x01" * 16
    assert reopened.psk_for(FACTORY_IDENTITY.encode()) == LEGACY_FACTORY_KEY.encode()


def test_identities_up_to_64_bytes_are_accepted_and_longer_refused():
    assert validate_identity("i" * 64) == "i" * 64
    with pytest.raises(BadRequest, match="longer than 64"):
        validate_identity("i" * 65)
