"""The onboarding exchanges, native and Tradfri-style, without any I/O.

Native: the factory identity POSTs ``{"name": NAME}`` (CBOR, or JSON) to
``/onboard``; the device mints an identity and key, persists them and
answers 2.01 with ``{"id", "identity", "key", "role", "name", "device"}``.

Tradfri: the factory key under identity ``Client_identity`` POSTs JSON
``{"9090": IDENTITY}`` to ``/15011/9063``; the device answers 2.01 with JSON
``{"9091": PSK, "9029": FIRMWARE}``.  The client chose the identity; the PSK
is text, as Tradfri clients expect.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import __version__
from .const import (
    TRADFRI_FIRMWARE,
    TRADFRI_IDENTITY,
    TRADFRI_PSK,
    ContentFormat,
    Key,
    KeyFormat,
)
from .errors import BadRequest, PayloadError, UnsupportedContentFormat
from .model import ClientRecord, Credential, Origin, validate_identity, validate_name
from .payload import decode
from .store import CredentialStore

#: Onboarding payloads are tiny; anything larger is refused unread.
MAX_ONBOARD_PAYLOAD = 512


@dataclass(frozen=True, slots=True)
class OnboardRequest:
    name: str
    key_format: KeyFormat = KeyFormat.BYTES


def parse_onboard_request(payload: bytes, content_format: int | None) -> OnboardRequest:
    if len(payload) > MAX_ONBOARD_PAYLOAD:
        raise BadRequest(f"onboarding payload over {MAX_ONBOARD_PAYLOAD} bytes")
    if content_format is None:
        content_format = ContentFormat.CBOR
    if content_format not in (ContentFormat.CBOR, ContentFormat.JSON):
        raise UnsupportedContentFormat("onboarding takes CBOR (60) or JSON (50)")
    try:
        body = decode(payload, content_format)
    except PayloadError as exc:
        raise BadRequest(str(exc)) from None
    if not isinstance(body, dict):
        raise BadRequest('onboarding payload must be a map like {"name": "my-laptop"}')
    if Key.NAME not in body:
        raise BadRequest('onboarding payload lacks "name"')
    name = validate_name(body[Key.NAME])
    fmt = body.get(Key.KEY_FORMAT, KeyFormat.BYTES.value)
    try:
        key_format = KeyFormat(fmt)
    except (ValueError, TypeError):
        raise BadRequest('"key-format" must be "bytes" or "text"') from None
    return OnboardRequest(name=name, key_format=key_format)


def onboard(
    store: CredentialStore,
    request: OnboardRequest,
    *,
    now: float,
    actor: Credential | None = None,
) -> ClientRecord:
    """Mint and persist; the caller answers only after this returned.

    Who may onboard is decided by :func:`coapdev.authz.decide`; ``actor`` is
    checked once more against the state on disk as the client is minted.
    """
    return store.mint_client(
        request.name,
        now=now,
        text_key=request.key_format is KeyFormat.TEXT,
        origin=Origin.NATIVE,
        actor=actor,
    )


def onboard_response(record: ClientRecord, device_id: str) -> dict[str, Any]:
    return {
        Key.CLIENT_ID.value: record.id,
        Key.IDENTITY.value: record.identity,
        Key.PSK.value: record.key_for_wire(),
        Key.NAME.value: record.name,
        Key.ROLE.value: record.role.value,
        Key.DEVICE_ID.value: device_id,
    }


def parse_tradfri_request(payload: bytes) -> str:
    if len(payload) > MAX_ONBOARD_PAYLOAD:
        raise BadRequest(f"onboarding payload over {MAX_ONBOARD_PAYLOAD} bytes")
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadRequest('expected JSON like {"9090": "my-identity"}') from None
    if not isinstance(body, dict) or TRADFRI_IDENTITY not in body:
        raise BadRequest('expected JSON like {"9090": "my-identity"}')
    return validate_identity(body[TRADFRI_IDENTITY])


def tradfri_onboard(
    store: CredentialStore, identity: str, *, now: float, actor: Credential | None = None
) -> ClientRecord:
    return store.mint_client(
        validate_name(identity),
        now=now,
        text_key=True,
        origin=Origin.TRADFRI,
        identity=identity,
        actor=actor,
    )


def tradfri_response(record: ClientRecord) -> bytes:
    body = {TRADFRI_PSK: record.key.decode("ascii"), TRADFRI_FIRMWARE: __version__}
    return json.dumps(body).encode()
