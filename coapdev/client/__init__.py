"""Client library: onboard to a device, then talk to it with the minted identity.

    creds = await onboard("192.168.1.20", key="7QJ2-M4KX-9TZC-8RNW", name="laptop")
    async with Client(creds) as device:
        print((await device.get("/light")).value)
        await device.put("/light", {"on": True})
        async for state in device.observe("/light"):
            print(state.value)

Every failure is a :class:`~coapdev.errors.ClientError` subclass with a
one-line message: the handshake was rejected, the device did not answer (with
the address tried), or it answered 4.01/4.03 (with its reason).

The package's modules: ``address`` (where a device is), ``credentials``,
``request`` (building messages), ``response`` (codes, errors, link format),
``session`` (the :class:`Client`), ``observe``, ``failures`` (what went
wrong, in one line), ``transport`` (the DTLS plumbing, aiocoap's internals
only there), ``onboarding`` and ``locate`` (finding a device, following one
that moved).  Every name is importable from ``coapdev.client`` itself.
"""

from __future__ import annotations

import logging

from ..errors import (
    ClientError,
    DeviceTimeout,
    DeviceUnreachable,
    HandshakeFailed,
    HandshakeRejected,
    NotAuthorized,
    PayloadError,
    RequestFailed,
    UnknownDevice,
)
from .address import DeviceAddress, parse_address, resolve_address
from .credentials import Credentials
from .failures import ALERT_DECRYPT_ERROR
from .locate import Located, default_client_name, following_client, locate
from .onboarding import (
    onboard,
    onboard_at,
    onboard_request,
    onboard_tradfri,
    parse_onboard_answer,
    parse_rekey_answer,
    parse_tradfri_answer,
    rekey,
    revoke_self,
    tradfri_request,
)
from .request import METHODS, Payload, block_size_exponent, method_code
from .response import Link, Response, check_response, code_name, escape_text, parse_links
from .session import DEFAULT_TIMEOUT_S, Client

log = logging.getLogger("coapdev.client")

#: The name this had before the package split (the CLI's onboarding used it).
_onboard_at = onboard_at

__all__ = [
    "ALERT_DECRYPT_ERROR",
    "DEFAULT_TIMEOUT_S",
    "METHODS",
    "Client",
    "ClientError",
    "Credentials",
    "DeviceAddress",
    "DeviceTimeout",
    "DeviceUnreachable",
    "HandshakeFailed",
    "HandshakeRejected",
    "Link",
    "Located",
    "NotAuthorized",
    "Payload",
    "PayloadError",
    "RequestFailed",
    "Response",
    "UnknownDevice",
    "block_size_exponent",
    "check_response",
    "code_name",
    "default_client_name",
    "escape_text",
    "following_client",
    "locate",
    "method_code",
    "onboard",
    "onboard_at",
    "onboard_request",
    "onboard_tradfri",
    "parse_address",
    "parse_links",
    "parse_onboard_answer",
    "parse_rekey_answer",
    "parse_tradfri_answer",
    "rekey",
    "resolve_address",
    "revoke_self",
    "tradfri_request",
]
