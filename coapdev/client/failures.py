"""What went wrong, in one line: transport outcomes mapped to ClientError subclasses.

A silent device, a handshake that got answers but never finished, a fatal
alert and a socket error each need a different message and exception, so a
user (and the CLI's exit status) can tell "wrong key" from "not there".
"""

from __future__ import annotations

import socket
from typing import Any

from ..errors import (
    ClientError,
    DeviceTimeout,
    DeviceUnreachable,
    HandshakeFailed,
    HandshakeRejected,
)
from .credentials import Credentials

#: TLS alert a coapdev device sends when a client's Finished does not verify.
ALERT_DECRYPT_ERROR = 51


def timeout_error(
    transport: Any, credentials: Credentials, timeout_s: float, what: str, generation: int
) -> ClientError:
    """The error for a request that got no answer in time; the session is dropped."""
    session = transport.session()
    address = credentials.address.uri_base
    transport.drop_session(generation)
    if session.exists and not session.handshake_done and session.datagrams_received:
        return HandshakeFailed(
            f"{what}: handshake failed: the device at {address} answered but did not "
            f"accept the key for identity {credentials.identity!r} "
            "(wrong key, or not this device)"
        )
    message = f"{what}: no answer from {address} within {round(timeout_s, 1):g} s"
    if not session.handshake_done:
        return DeviceUnreachable(message)  # not a single datagram came back
    return DeviceTimeout(message)


def network_error(
    transport: Any, credentials: Credentials, exc: Exception, what: str, generation: int
) -> ClientError:
    """The error for aiocoap's error ``exc`` (its cause tells which); the session is dropped."""
    cause = exc.__cause__
    address = credentials.address.uri_base
    transport.drop_session(generation)
    if isinstance(cause, ConnectionRefusedError):
        return DeviceUnreachable(f"{what}: nothing is listening at {address} (connection refused)")
    if type(cause).__name__ == "FatalDTLSError":
        return _alert_error(cause, credentials, what)
    if isinstance(cause, socket.gaierror):
        return ClientError(f"{what}: cannot resolve {credentials.address.host}: {cause}")
    if isinstance(cause, OSError):
        reason = cause.strerror or str(cause)
        return DeviceUnreachable(f"{what}: cannot reach {address}: {reason}")
    if type(cause).__name__ == "CloseNotifyReceived":
        return ClientError(f"{what}: the device closed the session")
    return ClientError(f"{what}: {exc}")


def _alert_error(cause: BaseException, credentials: Credentials, what: str) -> ClientError:
    """A fatal DTLS alert: the key did not verify, or the identity is not known there."""
    address = credentials.address.uri_base
    alert = cause.args[0] if cause.args else None
    if alert == ALERT_DECRYPT_ERROR:
        return HandshakeRejected(
            f"{what}: handshake failed: the device at {address} did not accept the key "
            f"for identity {credentials.identity!r} (wrong key, or not this device)"
        )
    return HandshakeRejected(
        f"{what}: handshake rejected by {address} (alert {alert}): identity "
        f"{credentials.identity!r} is not known there (revoked, expired, "
        "or not this device)"
    )
