"""Getting and giving up a minted identity: onboard, the Tradfri exchange, rekey, revoke.

Each exchange is a request built here, sent with a :class:`Client`, and an
answer parsed here; the builders and parsers do no I/O, so they are tested
without a device.  The device side is :mod:`coapdev.onboarding`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..const import (
    FACTORY_IDENTITY,
    PATH_DEVICE,
    PATH_ONBOARD,
    PATH_REKEY,
    PATH_TRADFRI_ONBOARD,
    TRADFRI_IDENTITY,
    TRADFRI_PSK,
    ContentFormat,
    Key,
    KeyFormat,
    uri_path,
)
from ..errors import (
    ClientError,
    HandshakeFailed,
    HandshakeRejected,
    NotAuthorized,
    PayloadError,
    RequestFailed,
)
from ..keys import canonical_factory_key, factory_psk
from .address import DeviceAddress, parse_address
from .credentials import Credentials
from .locate import Located, default_client_name, locate
from .session import DEFAULT_TIMEOUT_S, Client


def onboard_request(name: str | None, *, text_key: bool = False) -> dict[str, str]:
    """The body POSTed to ``/onboard``: this client's name, and the key format wanted."""
    body: dict[str, str] = {Key.NAME.value: name or default_client_name()}
    if text_key:
        body[Key.KEY_FORMAT.value] = KeyFormat.TEXT.value
    return body


def _key_bytes(key: Any) -> bytes:
    """A minted key as sent: text (ASCII) or a byte string."""
    return key.encode("ascii") if isinstance(key, str) else bytes(key)


def parse_onboard_answer(answer: Any, located: Located) -> Credentials:
    """Credentials from the device's answer to ``/onboard``; ClientError if malformed."""
    address = located.address
    try:
        minted_key = answer[Key.PSK.value]
        return Credentials(
            device_id=str(answer[Key.DEVICE_ID.value]),
            address=address,
            identity=str(answer[Key.IDENTITY.value]),
            key=_key_bytes(minted_key),
            client_id=str(answer[Key.CLIENT_ID.value]),
            name=str(answer[Key.NAME.value]),
            role=str(answer[Key.ROLE.value]),
            key_format=KeyFormat.TEXT if isinstance(minted_key, str) else KeyFormat.BYTES,
            device_name=located.name,
        )
    except (KeyError, TypeError, AttributeError, PayloadError, UnicodeError) as exc:
        raise ClientError(f"onboarding answer from {address} is malformed: {exc!r}") from None


def parse_rekey_answer(credentials: Credentials, answer: Any) -> Credentials:
    """The new credentials from the device's answer to ``/rekey``; ClientError if malformed."""
    try:
        new_key = answer[Key.PSK.value]
        return replace(
            credentials, identity=str(answer[Key.IDENTITY.value]), key=_key_bytes(new_key)
        )
    except (KeyError, TypeError, AttributeError, UnicodeError) as exc:
        raise ClientError(f"rekey answer is malformed: {exc!r}") from None


def tradfri_request(identity: str) -> bytes:
    """The JSON body POSTed to ``/15011/9063``: the identity this client chose."""
    return json.dumps({TRADFRI_IDENTITY: identity}).encode()


def parse_tradfri_answer(answer: Any, address: DeviceAddress, identity: str) -> Credentials:
    """Credentials (without the device id yet) from the Tradfri exchange's answer."""
    psk = answer[TRADFRI_PSK]
    return Credentials(
        "",
        address,
        identity,
        psk.encode("ascii"),
        client_id=identity,
        name=identity,
        key_format=KeyFormat.TEXT,
    )


async def onboard(
    address: DeviceAddress | str,
    key: str,
    name: str | None = None,
    *,
    text_key: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Credentials:
    """Present the factory key, get a minted identity and key for this client.

    ``address`` may also be the device's mDNS name or id, which is then kept
    with the credentials (``device_name``).  The key is checked locally first
    (its check character), so a typo fails before any packet is sent.  The
    factory session is closed afterwards.
    """
    canonical = canonical_factory_key(key)
    located = await locate(address) if isinstance(address, str) else Located(address)
    return await onboard_at(located, canonical, name, text_key=text_key, timeout_s=timeout_s)


async def onboard_at(
    located: Located,
    canonical_key: str,
    name: str | None,
    *,
    text_key: bool,
    timeout_s: float,
    trace: Callable[[str], None] | None = None,
) -> Credentials:
    """:func:`onboard` once the device was located and the key checked."""
    address = located.address
    factory = Credentials(
        device_id="", address=address, identity=FACTORY_IDENTITY, key=factory_psk(canonical_key)
    )
    body = onboard_request(name, text_key=text_key)
    async with Client(factory, timeout_s=timeout_s, trace=trace) as client:
        response = await client.post(
            uri_path(PATH_ONBOARD), body, content_format=ContentFormat.CBOR
        )
        answered_at = client.target
    try:
        answer = response.value
    except (KeyError, TypeError, AttributeError, PayloadError, UnicodeError) as exc:
        raise ClientError(f"onboarding answer from {address} is malformed: {exc!r}") from None
    creds = parse_onboard_answer(answer, located)
    for known in [answered_at, *located.addresses]:
        creds = creds.with_alias(known)
    return creds


async def revoke_self(
    credentials: Credentials,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    trace: Callable[[str], None] | None = None,
) -> None:
    """Revoke this client on its device (any role may revoke itself).

    The device ends the session as it revokes, so its answer may never
    arrive; then a fresh handshake being rejected confirms the revocation.
    A refusal (the last admin, 4.09) is raised as :class:`RequestFailed`.
    """
    target = credentials.client_id or credentials.identity
    try:
        async with Client(credentials, timeout_s=timeout_s, trace=trace) as client:
            await client.delete(f"/clients/{target}")
        return
    except (NotAuthorized, RequestFailed, HandshakeFailed):
        raise
    except ClientError as lost:
        answer_lost = lost
    try:
        async with Client(credentials, timeout_s=timeout_s, trace=trace) as client:
            await client.get(uri_path(PATH_DEVICE))
    except HandshakeRejected:
        return  # the identity is gone: revoked
    except ClientError:
        pass
    raise answer_lost


async def onboard_tradfri(
    address: DeviceAddress | str, key: str, identity: str, *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Credentials:
    """The Tradfri exchange (for completeness; Tradfri client code does the same)."""
    if isinstance(address, str):
        address, _ = parse_address(address)
    canonical = canonical_factory_key(key)
    factory = Credentials("", address, FACTORY_IDENTITY, factory_psk(canonical))
    async with Client(factory, timeout_s=timeout_s) as client:
        response = await client.post(
            uri_path(PATH_TRADFRI_ONBOARD),
            tradfri_request(identity),
            content_format=ContentFormat.JSON,
        )
        creds = parse_tradfri_answer(response.value, address, identity)
        async with Client(creds, timeout_s=timeout_s) as minted:
            device = (await minted.get(uri_path(PATH_DEVICE))).value
        creds.device_id = device[Key.CLIENT_ID.value]
    return creds


async def rekey(
    credentials: Credentials,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    save: Callable[[Credentials], None] | None = None,
) -> Credentials:
    """Rotate this client's key; returns the new credentials, confirmed in use.

    The device keeps the old key valid until the new one is used, and the
    new credentials are saved (``save``) before that first use, so a crash
    or lost packet at any point leaves a working key on both sides.
    """
    async with Client(credentials, timeout_s=timeout_s) as client:
        answer = (await client.post(uri_path(PATH_REKEY))).value
    new = parse_rekey_answer(credentials, answer)
    if save is not None:
        save(new)
    async with Client(new, timeout_s=timeout_s) as client:
        await client.get(uri_path(PATH_DEVICE))  # first use confirms; the old key stops working
    return new
