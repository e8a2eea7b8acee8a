"""The one exception hierarchy of coapdev.

Server code raises :class:`RequestRefused` subclasses; the aiocoap edge turns
them into CoAP response codes with a short diagnostic payload.  The model and
the credential store raise :class:`StoreError` subclasses (domain errors), each
of which names its refusal once, in the table of domain errors below.  Client code
raises :class:`ClientError` subclasses; the CLI prints ``str(error)`` as one
line and exits non-zero.  Nothing here imports aiocoap, so the sans-I/O core
and the CLI's start-up stay light.
"""

from __future__ import annotations

from pathlib import Path


class CoapdevError(Exception):
    """Root of every error coapdev raises on purpose."""


# --- Refusals of a request (server side), each with its CoAP code -------------------


class RequestRefused(CoapdevError):
    """A request the device will not carry out; ``code`` is the CoAP code as 'c.dd'.

    ``retry_after_s``, if given, goes out as the Max-Age option: when the
    client may try again (RFC 8516 for 4.29; likewise for 5.03).
    """

    code = "5.00"

    def __init__(self, message: str = "", *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class BadRequest(RequestRefused):
    code = "4.00"


class Unauthorized(RequestRefused):
    code = "4.01"


class Forbidden(RequestRefused):
    code = "4.03"


class NotFound(RequestRefused):
    code = "4.04"


class MethodNotAllowed(RequestRefused):
    code = "4.05"


class NotAcceptable(RequestRefused):
    code = "4.06"


class Conflict(RequestRefused):
    code = "4.09"


class PayloadTooLarge(RequestRefused):
    code = "4.13"


class UnsupportedContentFormat(RequestRefused):
    code = "4.15"


class TooManyRequests(RequestRefused):
    code = "4.29"


class InternalError(RequestRefused):
    code = "5.00"


class BadGateway(RequestRefused):
    """What the gateway relays to (a persistent handler) failed to answer properly."""

    code = "5.02"


class ServiceUnavailable(RequestRefused):
    code = "5.03"


class GatewayTimeout(RequestRefused):
    code = "5.04"


# --- Domain errors: what the model and the credential store refuse ------------------
#
# coapdev.model and coapdev.store raise these and nothing else of this module's
# refusals: they know nothing of CoAP.  The second base of each is its status
# hint (h11's ``error_status_hint``), the refusal it is at the CoAP edge: this
# table is the one place a domain error gets its CoAP code, and the edge
# (coapdev.server.resources.refusal_message) renders it like any refusal.


class StoreError(CoapdevError):
    """The model or the store will not do what was asked; nothing was changed.

    Every subclass also names the refusal it is at the CoAP edge (its second base).
    """


class InvalidValue(StoreError, BadRequest):
    """A client name, identity or device id breaks the model's rules."""


class NoSuchClient(StoreError, NotFound):
    """No client goes by the id (or id, identity or name) given."""


class NoPendingRekey(StoreError, NotFound):
    """An identity confirms a key rotation that is not pending."""


class NameTaken(StoreError, Conflict):
    """A name or identity is taken in the device's one namespace (see CredentialStore.taken)."""


class AmbiguousName(StoreError, Conflict):
    """A reference names several clients (a state file edited by hand)."""


class LastAdmin(StoreError, Conflict):
    """The change would leave the device without an admin."""


class TooManyClients(StoreError, TooManyRequests):
    """The device holds its maximum number of clients."""


class StaleCredential(StoreError, Unauthorized):
    """The key a session was opened with no longer opens this device
    (revoked, rotated away, factory reset): the session is closed too."""


class StateWriteError(StoreError, ServiceUnavailable):
    """A change could not be made durable (full, read-only or failing storage).

    Nothing was changed: memory holds what was acknowledged before.
    """

    @classmethod
    def from_os_error(cls, directory: object, exc: OSError) -> StateWriteError:
        import errno

        reasons = {
            errno.ENOSPC: "state directory full",
            errno.EDQUOT: "state directory full",
            errno.EROFS: "state directory read-only",
            errno.EACCES: "state directory not writable",
            errno.EPERM: "state directory not writable",
            errno.EIO: "state directory I/O error",
        }
        error = cls(reasons.get(exc.errno or 0, "state directory cannot be written"))
        error.detail = f"{directory}: {exc.strerror or exc}"
        return error

    detail: str = ""


# --- Local state and configuration --------------------------------------------------


class StateError(CoapdevError):
    """The device's state directory cannot be used."""


class CorruptStateFile(StateError):
    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class InvalidKeyText(CoapdevError):
    """A factory key typed or scanned by a person does not check out."""


class InvalidQRPayload(CoapdevError):
    """Text or image does not hold a coapdev QR payload."""


class ConfigError(CoapdevError):
    """A configuration file is invalid; the message names file and key."""

    def __init__(self, path: Path | str, key: str, problem: str) -> None:
        where = f"{path}: {key}" if key else str(path)
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.key = key
        self.problem = problem


class PayloadError(CoapdevError):
    """A payload could not be encoded or decoded (bad JSON, CBOR or notation)."""


class DtlsBuildError(CoapdevError):
    """The DTLSSocket loaded is not coapdev's patched build (see tools/build-dtls)."""


# --- Client side --------------------------------------------------------------------


class ClientError(CoapdevError):
    """Talking to a device failed."""


class HandshakeFailed(ClientError):
    """The DTLS handshake was rejected or never completed."""


class HandshakeRejected(HandshakeFailed):
    """The device refused the handshake outright with a fatal alert (unknown
    identity or wrong key): trying again with the same credentials is futile."""


class DeviceTimeout(ClientError):
    """The device did not answer in time."""


class DeviceUnreachable(DeviceTimeout):
    """Nothing answered at the device's address at all: not one datagram of the
    handshake came back, nothing listens there, or there is no route to it."""


class NotAuthorized(ClientError):
    """The device answered 4.01 or 4.03."""


class RequestFailed(ClientError):
    """The device answered with an error code other than 4.01/4.03."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code} {message}".rstrip())
        self.code = code
        self.diagnostic = message


class UnknownDevice(ClientError):
    """No credentials or address are known for the device named."""
